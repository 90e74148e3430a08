# Fails when client/python's committed stubs differ from the build's fresh generation (or when
# there is none: grpc_python_plugin missing), or when the package holds a stub the protos no
# longer make. Refresh with `cmake --build <dir> --target python_stubs_update`.
cmake_minimum_required(VERSION 3.25)
if(NOT PLUGIN OR NOT EXISTS "${PLUGIN}")
  message(FATAL_ERROR "grpc_python_plugin not found (Debian: protobuf-compiler-grpc); cannot check the stubs")
endif()
set(drift)
foreach(rel ${STUBS})
  if(NOT EXISTS ${GENERATED_DIR}/${rel})
    message(FATAL_ERROR "${GENERATED_DIR}/${rel} missing: build the python_stubs target first")
  endif()
  execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files ${GENERATED_DIR}/${rel} ${COMMITTED_DIR}/${rel}
                  RESULT_VARIABLE differs)
  if(differs)
    list(APPEND drift ${rel})
  endif()
endforeach()
file(GLOB_RECURSE committed RELATIVE ${COMMITTED_DIR} ${COMMITTED_DIR}/sageserve/*_pb2.py
     ${COMMITTED_DIR}/sageserve/*_pb2.pyi ${COMMITTED_DIR}/sageserve/*_pb2_grpc.py)
foreach(rel ${committed})
  if(NOT rel IN_LIST STUBS)
    list(APPEND drift "${rel} (no longer generated)")
  endif()
endforeach()
if(drift)
  list(JOIN drift "\n  " text)
  message(FATAL_ERROR "the committed Python stubs differ from proto/:\n  ${text}\n"
                      "run: cmake --build <build dir> --target python_stubs_update")
endif()
list(LENGTH STUBS n)
message(STATUS "the ${n} committed Python stubs match proto/")
