"""Generated protobuf and gRPC stubs of sageserve.v1 (proto/sageserve/v1); do not edit the *_pb2*
files: client/python/CMakeLists.txt makes them, python.StubsMatchProto checks the copy."""
