"""gRPC status codes as exception classes.

One table (`EXCEPTIONS`) maps every non-OK code to a class. The exception carries the server's
message, which names the offending field (`q.shape[2]`, `steps[0].position`, ...), and the
google.rpc details the server attaches (docs/API.md, "Status codes").
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple

import grpc

_DETAILS_KEY = "grpc-status-details-bin"
_BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


class SageServeError(Exception):
    """A call the server (or gRPC) refused. `code` is a grpc.StatusCode."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, details: Sequence[Tuple[str, bytes]] = (),
                 code: Optional[grpc.StatusCode] = None) -> None:
        super().__init__(message)
        self.message = message
        # (type_url, serialized message) of each google.rpc detail, as the C++ client keeps them.
        self.details: Tuple[Tuple[str, bytes], ...] = tuple(details)
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    @property
    def field(self) -> Optional[str]:
        """The request field a google.rpc.BadRequest detail names (e.g. `q.shape[2]`), if any."""
        for url, value in self.details:
            if url == _BAD_REQUEST:
                for violation in _fields(value, 1):
                    for name in _fields(violation, 1):
                        return name.decode("utf-8", "replace")
        return None

    @property
    def retry_delay_s(self) -> Optional[float]:
        """The delay a google.rpc.RetryInfo detail asks for (a full queue), if any."""
        for url, value in self.details:
            if url == _RETRY_INFO:
                for delay in _fields(value, 1):  # google.protobuf.Duration
                    seconds = _varints(delay, 1)
                    nanos = _varints(delay, 2)
                    return (seconds[0] if seconds else 0) + (nanos[0] if nanos else 0) / 1e9
        return None


class CancelledError(SageServeError):
    code = grpc.StatusCode.CANCELLED


class UnknownError(SageServeError):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgumentError(SageServeError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceededError(SageServeError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFoundError(SageServeError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(SageServeError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDeniedError(SageServeError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhaustedError(SageServeError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPreconditionError(SageServeError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class AbortedError(SageServeError):
    code = grpc.StatusCode.ABORTED


class OutOfRangeError(SageServeError):
    code = grpc.StatusCode.OUT_OF_RANGE


class UnimplementedError(SageServeError):
    code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(SageServeError):
    code = grpc.StatusCode.INTERNAL


class UnavailableError(SageServeError):
    code = grpc.StatusCode.UNAVAILABLE


class SessionOwnerGoneError(UnavailableError):
    """The server holding a session cannot be reached (it died, was drained away, or is not one of
    the cluster's replicas): the session's KV cache is lost with it; create a new session
    elsewhere and prefill again. `session_ids` names the sessions of the failed call."""

    def __init__(self, message: str, session_ids: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.session_ids: Tuple[str, ...] = tuple(session_ids)


class DataLossError(SageServeError):
    code = grpc.StatusCode.DATA_LOSS


class UnauthenticatedError(SageServeError):
    code = grpc.StatusCode.UNAUTHENTICATED


# The one mapping from status code to exception class.
EXCEPTIONS = {cls.code: cls for cls in (
    CancelledError, UnknownError, InvalidArgumentError, DeadlineExceededError, NotFoundError,
    AlreadyExistsError, PermissionDeniedError, ResourceExhaustedError, FailedPreconditionError,
    AbortedError, OutOfRangeError, UnimplementedError, InternalError, UnavailableError,
    DataLossError, UnauthenticatedError)}

_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def error_for(code: grpc.StatusCode, message: str,
              details: Sequence[Tuple[str, bytes]] = ()) -> SageServeError:
    """The exception of `code` (UnknownError for a code outside the table)."""
    cls = EXCEPTIONS.get(code, UnknownError)
    return cls(message, details, code=code if cls is UnknownError else None)


def from_rpc_error(error: grpc.RpcError) -> SageServeError:
    """A failed call (sync or grpc.aio) as its SageServeError, details included."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    details: list = []
    try:
        metadata = error.trailing_metadata() or ()
    except Exception:  # a call that never reached the server has none
        metadata = ()
    for key, value in metadata:
        if key == _DETAILS_KEY and isinstance(value, bytes):
            details = _any_list(value)
    return error_for(code, message or "", details)


def from_request_status(status) -> SageServeError:
    """A stream request's RequestStatus (google.rpc.Status layout) as its SageServeError."""
    code = _BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
    return error_for(code, status.message, [(d.type_url, d.value) for d in status.details])


def _any_list(status_bytes: bytes) -> list:
    """google.rpc.Status.details (field 3, repeated Any{type_url=1, value=2}) from its bytes."""
    out = []
    for any_bytes in _fields(status_bytes, 3):
        urls = _fields(any_bytes, 1)
        values = _fields(any_bytes, 2)
        out.append((urls[0].decode("utf-8", "replace") if urls else "", values[0] if values else b""))
    return out


# A few lines of protobuf wire decoding: the google.rpc messages are compiled into the server only
# (docs/API.md), and a second copy here could clash with a program's own googleapis package.
def _read_varint(buf: bytes, i: int) -> Tuple[int, int]:
    value, shift = 0, 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _scan(buf: bytes) -> Iterable[Tuple[int, int, object]]:
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire == 2:
            n, i = _read_varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            return
        yield number, wire, value


def _fields(buf: bytes, number: int) -> list:
    try:
        return [v for n, w, v in _scan(buf) if n == number and w == 2]
    except IndexError:  # malformed details: the code and message stand
        return []


def _varints(buf: bytes, number: int) -> list:
    try:
        return [v for n, w, v in _scan(buf) if n == number and w == 0]
    except IndexError:
        return []
