"""sageserve: a Python client of the sageserve attention server (docs/PYTHON.md).

    import sageserve
    with sageserve.Client("127.0.0.1:50051") as client:
        r = client.attend(q, k, v, causal=True)      # numpy or torch, [T, H, D] or [B, H, S, D]
        r.o, r.lse, r.recipe, r.timings

Torch integration: sageserve.torch (imported on demand; torch stays optional).
"""
from sageserve.client import AttendCall, Client, calibration_sample
from sageserve.errors import (EXCEPTIONS, AbortedError, AlreadyExistsError, CancelledError, DataLossError,
                              DeadlineExceededError, FailedPreconditionError, InternalError, InvalidArgumentError,
                              NotFoundError, OutOfRangeError, PermissionDeniedError, ResourceExhaustedError,
                              SageServeError, SessionOwnerGoneError, UnauthenticatedError, UnavailableError,
                              UnimplementedError, UnknownError)
from sageserve.options import ClientOptions, TlsOptions
from sageserve.request import AttendResult
from sageserve.session import Session, SessionOptions, StepResult

__version__ = "0.1.0"

__all__ = [
    "AttendCall", "AttendResult", "Client", "ClientOptions", "Session", "SessionOptions", "StepResult",
    "TlsOptions", "calibration_sample", "EXCEPTIONS", "SageServeError", "AbortedError", "AlreadyExistsError",
    "CancelledError", "DataLossError", "DeadlineExceededError", "FailedPreconditionError", "InternalError",
    "InvalidArgumentError", "NotFoundError", "OutOfRangeError", "PermissionDeniedError",
    "ResourceExhaustedError", "UnauthenticatedError", "UnavailableError", "UnimplementedError", "UnknownError",
    "SessionOwnerGoneError", "Cluster",
]


def __getattr__(name: str):
    # The asyncio client on first use: grpc.aio costs an import most blocking users never need.
    if name == "Cluster":
        from sageserve.cluster import Cluster

        return Cluster
    if name in ("AsyncClient", "AttendStream", "AttendSessionStream"):
        from sageserve import aio

        return getattr(aio, name)
    raise AttributeError(f"module 'sageserve' has no attribute {name!r}")
