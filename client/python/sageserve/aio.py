"""asyncio: AsyncClient (grpc.aio) and streams that keep many requests in flight.

`AttendStream` (AttentionService/AttendStream) and `AttendSessionStream`
(SessionService/AttendSessionStream) send each request as soon as it is made and resolve its
future when its answer arrives (answers come in completion order, matched by request_id); a bad
request fails alone. A model's layers can so pipeline: many `await stream.step(...)` gathered.
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Dict, List, Optional, Sequence, Tuple, Union

import grpc
import grpc.aio

from sageserve import errors
from sageserve.client import ATTEND_METHOD, HEALTH_METHOD, AttendCall, Client, _health_request, _health_status
from sageserve.options import ClientOptions, TlsOptions, make_aio_channel
from sageserve.request import AttendResult, next_request_id, parse_recipe
from sageserve.session import Session, SessionCall, SessionOptions, StepResult, session_metadata
from sageserve.transport import region_unknown
from sageserve.v1 import attention_service_pb2 as pb
from sageserve.v1 import attention_service_pb2_grpc as pb_grpc
from sageserve.v1 import session_pb2_grpc as sess_grpc


class _Stream:
    """One bidirectional stream: requests queued to the writer, answers routed to futures."""

    def __init__(self, method: Any, metadata: Any, timeout: Optional[float]) -> None:
        self._queue: asyncio.Queue = asyncio.Queue()
        self._pending: Dict[str, asyncio.Future] = {}
        self._closed = False
        self._call = method(self._requests(), metadata=metadata, timeout=timeout)
        self._reader = asyncio.ensure_future(self._read())

    async def _requests(self) -> AsyncIterator[Any]:
        while True:
            request = await self._queue.get()
            if request is None:  # half-close
                return
            yield request

    async def _read(self) -> None:
        failure: Optional[errors.SageServeError] = None
        try:
            async for response in self._call:
                future = self._pending.pop(response.request_id, None)
                if future is None or future.done():
                    continue  # an answer to no request of ours (a message the server could not read)
                if response.status.code != 0:
                    future.set_exception(errors.from_request_status(response.status))
                else:
                    future.set_result(response)
        except grpc.RpcError as e:
            failure = errors.from_rpc_error(e)
        except asyncio.CancelledError:
            failure = errors.CancelledError("the stream was cancelled")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(failure or errors.UnavailableError("the stream ended before the answer"))
        self._pending.clear()

    def submit(self, request: Any) -> asyncio.Future:
        """Queues `request` (its request_id unique among those in flight); the answer's future."""
        if self._closed or self._reader.done():
            raise errors.FailedPreconditionError("the stream is closed")
        if not request.request_id or request.request_id in self._pending:
            raise ValueError(f"request_id {request.request_id!r}: must be set and unique among requests in flight")
        future = asyncio.get_running_loop().create_future()
        self._pending[request.request_id] = future
        self._queue.put_nowait(request)
        return future

    def in_flight(self) -> int:
        return len(self._pending)

    async def close(self) -> None:
        """Half-closes and waits for every outstanding answer."""
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(None)
        await self._reader

    def cancel(self) -> None:
        """Ends the stream now; outstanding requests fail with CancelledError."""
        self._closed = True
        self._call.cancel()

    async def __aenter__(self) -> "_Stream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


class AttendStream(_Stream):
    """Many Attend requests in flight on one AttendStream."""

    def __init__(self, client: "AsyncClient", timeout: Optional[float] = None) -> None:
        self._client = client
        super().__init__(client._attention.AttendStream, client._metadata, timeout)

    async def attend(self, q: Any, k: Any, v: Any, **kwargs: Any) -> AttendResult:
        """As Client.attend; many may be awaited at once (asyncio.gather)."""
        kwargs.setdefault("request_id", next_request_id("stream"))
        kwargs.pop("timeout", None)  # a stream has one deadline: attend_stream(timeout)
        transport = kwargs.pop("transport", None)
        call = AttendCall(self._client.transport, q, k, v, transport_mode=transport, **kwargs)
        try:
            response = await self.submit(call.request)
        except BaseException:
            call.abandon()
            raise
        return call.result(response)


class AttendSessionStream(_Stream):
    """AttendSession calls on one stream: a decode stack's layers in flight together.

    A step takes its session's step id when sent, so steps of several layers of one session may be
    in flight at once; one layer's steps must be sent in order (each starts at the length the
    previous left).

    `session` (a Session or its id), when given, is named in the stream's metadata
    (`sageserve-session`) so that a proxy routing on it opens the stream on that session's replica;
    every session the stream then carries must live there (docs/DEPLOY.md, "A gRPC proxy in front").
    """

    def __init__(self, client: "AsyncClient", timeout: Optional[float] = None,
                 session: Union[Session, str, None] = None) -> None:
        self._transport = client.transport
        session_id = session.id if isinstance(session, Session) else session
        super().__init__(client._sessions.AttendSessionStream, client._metadata + session_metadata(session_id),
                         timeout)

    async def attend(self, layer: int, steps: Sequence[Tuple[Session, Any, Any, Optional[Any]]], *,
                     return_lse: bool = False, recipe: Union[str, int, None] = None,
                     packed: bool = False) -> List[StepResult]:
        call = SessionCall(self._transport, layer, steps, return_lse=return_lse, recipe=recipe, prefix="sstream",
                           take_ids=True, packed=packed)
        try:
            response = await self.submit(call.request)
        except BaseException:
            call.abandon()
            raise
        return call.results(response, advance_ids=False)

    async def step(self, session: Session, layer: int, k: Any, v: Any, q: Optional[Any] = None, *,
                   return_lse: bool = False, recipe: Union[str, int, None] = None) -> StepResult:
        return (await self.attend(layer, [(session, k, v, q)], return_lse=return_lse, recipe=recipe))[0]


class AsyncClient:
    """grpc.aio client: `await client.attend(...)`, streams, sessions. Use inside one event loop.

    Shared-memory registration and the server-info lookup the transport needs go through a
    blocking Client of the same options: rare calls (once per region), not worth a second pool.
    """

    def __init__(self, target: Optional[str] = None, *, options: Optional[ClientOptions] = None,
                 tls: Optional[TlsOptions] = None, token: Optional[str] = None,
                 timeout_s: Optional[float] = None, transport: Optional[str] = None) -> None:
        self._control = Client(target, options=options, tls=tls, token=token, timeout_s=timeout_s,
                               transport=transport)
        self.options = self._control.options
        self._metadata = self._control._metadata
        self.transport = self._control.transport
        self.channel = make_aio_channel(self.options)
        self._attention = pb_grpc.AttentionServiceStub(self.channel)
        self._sessions = sess_grpc.SessionServiceStub(self.channel)
        self._health = self.channel.unary_unary(HEALTH_METHOD, request_serializer=lambda b: b,
                                                response_deserializer=lambda b: b)
        self._attend_raw = self.channel.unary_unary(ATTEND_METHOD, request_serializer=lambda b: b,
                                                    response_deserializer=pb.AttendResponse.FromString)

    async def _call(self, method: Any, request: Any, timeout: Optional[float] = None) -> Any:
        try:
            return await method(request, timeout=timeout if timeout is not None else self.options.timeout_s,
                                metadata=self._metadata)
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e) from None

    async def attend(self, q: Any, k: Any, v: Any, *, timeout: Optional[float] = None, **kwargs: Any) -> AttendResult:
        """As Client.attend."""
        transport = kwargs.pop("transport", None)
        for attempt in (0, 1):
            call = AttendCall(self.transport, q, k, v, transport_mode=transport, defer_bytes=True, **kwargs)
            try:
                response = await self._call(self._attend_raw, call.serialized(), timeout)
            except errors.SageServeError as e:
                shared = call.placement.kind != "bytes"
                call.abandon()
                if attempt == 0 and shared and region_unknown(e):  # the server restarted: register anew
                    self.transport.forget()
                    continue
                raise
            except BaseException:
                call.abandon()
                raise
            return call.result(response)
        raise AssertionError("unreachable")

    async def info(self) -> pb.GetServerInfoResponse:
        return await self._call(self._attention.GetServerInfo, pb.GetServerInfoRequest())

    async def selftest(self, recipes: Sequence[Union[str, int]] = ()) -> pb.SelfTestResponse:
        return await self._call(self._attention.SelfTest, pb.SelfTestRequest(recipes=[parse_recipe(r) for r in recipes]))

    async def health(self, service: str = "") -> str:
        return _health_status(await self._call(self._health, _health_request(service)))

    def attend_stream(self, timeout: Optional[float] = None) -> AttendStream:
        return AttendStream(self, timeout)

    def session_stream(self, timeout: Optional[float] = None, *,
                       session: Union[Session, str, None] = None) -> AttendSessionStream:
        return AttendSessionStream(self, timeout, session)

    async def create_session(self, options: Optional[SessionOptions] = None, **kwargs: Any) -> Session:
        o = options or SessionOptions(**kwargs)
        r = await self._call(self._sessions.CreateSession, o.request())
        # The handle's own fork/truncate/close calls are blocking ones on the control client.
        return Session(self._control.sessions, r.session_id, o, [0] * o.layers)

    async def close(self) -> None:
        await self.channel.close()
        self._control.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
