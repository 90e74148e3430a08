"""sageserve.Client: blocking calls of every sageserve.v1 service, with numpy or torch tensors.

Mirrors the C++ sageserve::Client (client/include/sageserve/client/client.h): same request
building, same channel settings; failures raise the SageServeError subclass of their code.
"""
from __future__ import annotations

import copy
import weakref
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Union

import grpc

from sageserve import codec, errors, wire
from sageserve.options import ClientOptions, TlsOptions, make_channel
from sageserve.request import AttendResult, Packed, attend_request, pack, recipe_name
from sageserve.session import Session, SessionCalls, SessionOptions, StepResult, session_metadata
from sageserve.transport import Placement, Transport, region_unknown
from sageserve.v1 import attention_service_pb2 as pb
from sageserve.v1 import attention_service_pb2_grpc as pb_grpc
from sageserve.v1 import registry_pb2 as reg
from sageserve.v1 import registry_pb2_grpc as reg_grpc
from sageserve.v1 import session_pb2_grpc as sess_grpc
from sageserve.v1 import shared_memory_pb2 as shm
from sageserve.v1 import shared_memory_pb2_grpc as shm_grpc

HEALTH_METHOD = "/grpc.health.v1.Health/Check"
ATTEND_METHOD = "/sageserve.v1.AttentionService/Attend"
LOAD_METADATA_KEY = "sageserve-load"  # trailing metadata: the server's requests in flight
HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _health_request(service: str) -> bytes:
    # grpc.health.v1.HealthCheckRequest{service = 1}, encoded here: generating grpc/health/v1 would
    # shadow grpcio's own `grpc` package.
    raw = service.encode()
    out = bytearray([0x0A])
    n = len(raw)
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out + raw)


def _health_status(data: bytes) -> str:
    # HealthCheckResponse{status = 1 (enum, varint)}; absent means 0 (UNKNOWN).
    if len(data) >= 2 and data[0] == 0x08:
        return HEALTH_STATUS.get(data[1], "UNKNOWN")
    return "UNKNOWN"


class AttendCall:
    """One Attend in preparation: the request, where its tensors went, and how to read O back.

    Shared by the blocking and the asyncio clients.
    """

    def __init__(self, transport: Transport, q: Any, k: Any, v: Any, *, layout: Optional[str] = None,
                 cu_seqlens_q: Optional[Sequence[int]] = None, cu_seqlens_k: Optional[Sequence[int]] = None,
                 causal: bool = False, scale: Optional[float] = None, return_lse: bool = False,
                 recipe: Union[str, int, None] = None, output_dtype: Union[str, int, None] = None,
                 model: Optional[str] = None, layer: Optional[int] = None, timestep: Optional[int] = None,
                 request_id: Optional[str] = None, transport_mode: Optional[str] = None,
                 input_dtype: Union[str, int, None] = None, defer_bytes: bool = False) -> None:
        self.like = q
        self.packed: Packed = pack(q, k, v, layout, cu_seqlens_q, cu_seqlens_k, input_dtype)
        p = self.packed
        self.request = attend_request(p, causal=causal, scale=scale, return_lse=return_lse, recipe=recipe,
                                      output_dtype=output_dtype, model=model, layer=layer, timestep=timestep,
                                      request_id=request_id)
        out_dtype = self.request.output_dtype or p.dtype
        total_q, hq, d = p.q_shape
        outputs = [("o", total_q * hq * d * codec.itemsize(out_dtype))]
        if return_lse:
            outputs.append(("lse", total_q * hq * 4))
        r = self.request

        def set_output(key: str, region: str, offset: int, nbytes: int) -> None:
            ref = r.o_output if key == "o" else r.lse_output
            ref.region, ref.offset, ref.byte_size = region, offset, nbytes

        self.placement: Placement = transport.place(
            [("q", p.q, r.q, p.q_shape, p.dtype), ("k", p.k, r.k, p.k_shape, p.dtype),
             ("v", p.v, r.v, p.k_shape, p.dtype)],
            outputs, set_output, output_same_dtype=out_dtype == p.dtype, mode=transport_mode,
            defer_bytes=defer_bytes)

    def serialized(self) -> bytes:
        """The request's bytes; deferred tensors are joined in with one copy (sageserve.wire)."""
        fields = {"q": 2, "k": 3, "v": 4}  # AttendRequest's tensor field numbers
        return wire.serialize(self.request, [(fields[key], dtype, shape, data)
                                             for key, dtype, shape, data in self.placement.deferred])

    def result(self, response: pb.AttendResponse) -> AttendResult:
        try:
            o = self.packed.unpack_o(self.placement.read("o", response.o, self.like))
            lse = None
            if self.request.return_lse:
                lse = self.packed.unpack_lse(self.placement.read("lse", response.lse, self.like))
            kind = self.placement.kind
        finally:
            self.placement.release()
        return AttendResult(o, lse, recipe_name(response.recipe), response.timings, response.request_id, kind)

    def abandon(self) -> None:
        self.placement.release()


class Client:
    """A blocking client. `Client("host:port", token=..., tls=TlsOptions(...))`.

    Thread-safe: calls from many threads share one channel (HTTP/2 connection).
    """

    def __init__(self, target: Optional[str] = None, *, options: Optional[ClientOptions] = None,
                 tls: Optional[TlsOptions] = None, token: Optional[str] = None,
                 timeout_s: Optional[float] = None, transport: Optional[str] = None) -> None:
        o = copy.copy(options) if options else ClientOptions()  # the caller's stays as it was
        if target is not None:
            o.target = target
        if tls is not None:
            o.tls = tls
        if token is not None:
            o.token = token
        if timeout_s is not None:
            o.timeout_s = timeout_s
        if transport is not None:
            o.transport = transport
        self.options = o
        # Called with the load the server reports on each answer (sageserve.Cluster sets it).
        self.on_load: Optional[Callable[[int], None]] = None
        token_value = o.resolved_token()
        self._metadata: Tuple[Tuple[str, str], ...] = (
            (("authorization", f"Bearer {token_value}"),) if token_value else ())
        self.channel = make_channel(o)
        self._attention = pb_grpc.AttentionServiceStub(self.channel)
        self._registry = reg_grpc.RegistryServiceStub(self.channel)
        self._shm = shm_grpc.SharedMemoryServiceStub(self.channel)
        self._sessions = sess_grpc.SessionServiceStub(self.channel)
        self._health = self.channel.unary_unary(HEALTH_METHOD, request_serializer=lambda b: b,
                                                response_deserializer=lambda b: b)
        # Attend with requests serialized by AttendCall.serialized (tensor bytes copied once).
        self._attend_raw = self.channel.unary_unary(ATTEND_METHOD, request_serializer=lambda b: b,
                                                    response_deserializer=pb.AttendResponse.FromString)
        self._info: Optional[pb.GetServerInfoResponse] = None
        self.transport = Transport(
            o.transport, o.is_same_host(), self._cached_info,
            lambda name, key, size: self.register_system_shared_memory(name, key, 0, size),
            lambda name, handle, dev, size: self.register_cuda_shared_memory(name, handle, dev, size),
            self._unregister_region, o.shared_memory_key_prefix, o.max_regions)
        # Regions of a client never closed are unregistered and freed at exit, so neither the
        # server's mapping nor the POSIX object outlives the program.
        self._release_regions = weakref.finalize(self, Transport.close, self.transport)

    # -- plumbing ---------------------------------------------------------------------------------
    def _call(self, method: Any, request: Any, timeout: Optional[float] = None, session: Optional[str] = None) -> Any:
        # session: the id a session call is about, in metadata for a proxy that routes on it.
        t = timeout if timeout is not None else self.options.timeout_s
        metadata = self._metadata + session_metadata(session)
        if self.on_load is None:
            try:
                return method(request, timeout=t, metadata=metadata)
            except grpc.RpcError as e:
                raise errors.from_rpc_error(e) from None
        # Watched by a Cluster: the load the server reports with every answer (errors included).
        try:
            response, call = method.with_call(request, timeout=t, metadata=metadata)
        except grpc.RpcError as e:
            self._report_load(e)
            raise errors.from_rpc_error(e) from None
        self._report_load(call)
        return response

    def _report_load(self, call: Any) -> None:
        try:
            trailers = call.trailing_metadata() or ()
        except Exception:  # a call that never reached the server has none
            return
        for key, value in trailers:
            if key == LOAD_METADATA_KEY:
                try:
                    load = int(value)
                except ValueError:
                    return
                self.on_load(load)  # type: ignore[misc]  (set: _call reads trailers only then)
                return

    def _unregister_region(self, name: str) -> None:
        # Short deadline: this also runs at exit, where a gone server must not hold the program.
        self._call(self._shm.UnregisterSharedMemory, shm.UnregisterSharedMemoryRequest(name=name), timeout=5)

    def _cached_info(self) -> pb.GetServerInfoResponse:
        if self._info is None:
            self._info = self.info()
        return self._info

    def close(self) -> None:
        """Unregisters and frees the client's shared-memory regions and closes the channel."""
        try:
            self._release_regions()
        finally:
            self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- AttentionService ---------------------------------------------------------------------------
    def attend(self, q: Any, k: Any, v: Any, *, layout: Optional[str] = None,
               cu_seqlens_q: Optional[Sequence[int]] = None, cu_seqlens_k: Optional[Sequence[int]] = None,
               causal: bool = False, scale: Optional[float] = None, return_lse: bool = False,
               recipe: Union[str, int, None] = None, output_dtype: Union[str, int, None] = None,
               model: Optional[str] = None, layer: Optional[int] = None, timestep: Optional[int] = None,
               request_id: Optional[str] = None, transport: Optional[str] = None,
               input_dtype: Union[str, int, None] = None, timeout: Optional[float] = None) -> AttendResult:
        """Attention of q over k/v on the server; O (and LSE) come back in q's layout and kind.

        causal: bottom-right aligned (FlashAttention's). recipe: "int4_qk_fp8_pv",
        "int8_qk_fp8_pv", "int8_qk_fp16_pv", "unquantized", or None for the server's (or, with
        model/layer/timestep, the precision registry's) choice. transport overrides the client's.
        input_dtype="bf16" takes numpy uint16 arrays as bfloat16 bits (numpy has no bfloat16).
        """
        kwargs = dict(layout=layout, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, causal=causal,
                      scale=scale, return_lse=return_lse, recipe=recipe, output_dtype=output_dtype, model=model,
                      layer=layer, timestep=timestep, request_id=request_id, transport_mode=transport,
                      input_dtype=input_dtype)
        for attempt in (0, 1):
            call = AttendCall(self.transport, q, k, v, defer_bytes=True, **kwargs)
            try:
                response = self._call(self._attend_raw, call.serialized(), timeout)
            except errors.SageServeError as e:
                shared = call.placement.kind != "bytes"
                call.abandon()
                # The server lost our regions (a restart): register anew and send once more.
                if attempt == 0 and shared and region_unknown(e):
                    self.transport.forget()
                    continue
                raise
            except BaseException:
                call.abandon()
                raise
            return call.result(response)
        raise AssertionError("unreachable")

    def attend_request(self, request: pb.AttendRequest, timeout: Optional[float] = None) -> pb.AttendResponse:
        """A prepared AttendRequest as is (the C++ Client::Attend)."""
        return self._call(self._attention.Attend, request, timeout)

    def info(self) -> pb.GetServerInfoResponse:
        return self._call(self._attention.GetServerInfo, pb.GetServerInfoRequest())

    def selftest(self, recipes: Iterable[Union[str, int]] = ()) -> pb.SelfTestResponse:
        from sageserve.request import parse_recipe

        return self._call(self._attention.SelfTest, pb.SelfTestRequest(recipes=[parse_recipe(r) for r in recipes]))

    def health(self, service: str = "") -> str:
        """grpc.health.v1 Check: "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN" or "UNKNOWN"."""
        return _health_status(self._call(self._health, _health_request(service)))

    # -- SharedMemoryService ----------------------------------------------------------------------
    def register_system_shared_memory(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self._call(self._shm.RegisterSystemSharedMemory, shm.RegisterSystemSharedMemoryRequest(
            name=name, key=key, offset=offset, byte_size=byte_size))

    def register_cuda_shared_memory(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        self._call(self._shm.RegisterCudaSharedMemory, shm.RegisterCudaSharedMemoryRequest(
            name=name, raw_handle=raw_handle, device_id=device_id, byte_size=byte_size))

    def unregister_shared_memory(self, name: str = "") -> List[str]:
        """"" unregisters every region of the caller's. Returns the names unregistered."""
        r = self._call(self._shm.UnregisterSharedMemory, shm.UnregisterSharedMemoryRequest(name=name))
        return list(r.names)

    def shared_memory_status(self, name: str = "") -> shm.GetSharedMemoryStatusResponse:
        return self._call(self._shm.GetSharedMemoryStatus, shm.GetSharedMemoryStatusRequest(name=name))

    # -- RegistryService ----------------------------------------------------------------------------
    def register_model(self, spec: reg.ModelSpec, replace: bool = False) -> reg.ModelInfo:
        return self._call(self._registry.RegisterModel, reg.RegisterModelRequest(spec=spec, replace=replace)).model

    def list_models(self) -> List[reg.ModelInfo]:
        return list(self._call(self._registry.ListModels, reg.ListModelsRequest()).models)

    def get_model(self, name: str) -> reg.ModelInfo:
        return self._call(self._registry.GetModel, reg.GetModelRequest(name=name)).model

    def delete_model(self, name: str) -> None:
        self._call(self._registry.DeleteModel, reg.DeleteModelRequest(name=name))

    def get_plan(self, model: str) -> reg.Plan:
        return self._call(self._registry.GetPlan, reg.GetPlanRequest(model=model)).plan

    def set_plan(self, model: str, plan: reg.Plan, expected_version: Optional[int] = None) -> reg.Plan:
        req = reg.SetPlanRequest(model=model, plan=plan)
        if expected_version is not None:
            req.expected_version = expected_version
        return self._call(self._registry.SetPlan, req).plan

    def calibrate(self, model: str, samples: Iterable[reg.CalibrationSample], *, dry_run: bool = False,
                  candidates: Iterable[Union[str, int]] = (), accuracy_target: Optional[float] = None,
                  kv_storages: Iterable[str] = (), timeout: Optional[float] = None) -> reg.CalibrateResponse:
        """Streams `samples` (see calibration_sample) to RegistryService/Calibrate, the header first.

        kv_storages: the session KV storages scored per layer (models without timesteps), by
        SessionOptions name ("int4_k_fp8_v", ...); empty: every one the server runs."""
        from sageserve.request import parse_recipe
        from sageserve.session import parse_kv_storage

        header = reg.CalibrateRequest(model=model, dry_run=dry_run, candidates=[parse_recipe(c) for c in candidates],
                                      kv_storage_candidates=[parse_kv_storage(n, "kv_storages") for n in kv_storages])
        if accuracy_target is not None:
            header.accuracy_target = accuracy_target

        def messages() -> Iterable[reg.CalibrateRequest]:
            first = True
            for sample in samples:
                req = header if first else reg.CalibrateRequest()
                req.sample.CopyFrom(sample)
                first = False
                yield req
            if first:
                yield header

        return self._call(self._registry.Calibrate, messages(), timeout)

    # -- SessionService -----------------------------------------------------------------------------
    @property
    def sessions(self) -> SessionCalls:
        """The SessionService calls (create, attend a batch, get, list, fork, truncate, close)."""
        return SessionCalls(self._sessions, self._call, self.transport)

    def create_session(self, options: Optional[SessionOptions] = None, **kwargs: Any) -> Session:
        """A new server-resident KV session; kwargs are SessionOptions fields."""
        return self.sessions.create(options or SessionOptions(**kwargs))

    def attend_sessions(self, layer: int, steps: Sequence[Tuple[Session, Any, Any, Optional[Any]]], *,
                        return_lse: bool = False, recipe: Union[str, int, None] = None,
                        timeout: Optional[float] = None, packed: bool = False) -> List[StepResult]:
        """One AttendSession call for a batch: each (session, k, v, q or None) appends and attends.
        packed=True sends the batch's tensors as one k, v and q (AttendSessionRequest.packed)."""
        return self.sessions.attend(layer, steps, return_lse=return_lse, recipe=recipe, timeout=timeout,
                                    packed=packed)


def calibration_sample(layer: int, q: Any, k: Any, v: Any, *, timestep: Optional[int] = None,
                       cu_seqlens_q: Optional[Sequence[int]] = None, cu_seqlens_k: Optional[Sequence[int]] = None,
                       causal: bool = False, scale: Optional[float] = None) -> reg.CalibrationSample:
    """A CalibrationSample of packed [tokens, heads, head_dim] Q/K/V (bytes in the message)."""
    p = pack(q, k, v, "thd", cu_seqlens_q, cu_seqlens_k)
    s = reg.CalibrationSample(layer=layer, mask=pb.MASK_MODE_CAUSAL if causal else pb.MASK_MODE_NONE)
    if timestep is not None:
        s.timestep = timestep
    if scale is not None:
        s.softmax_scale = scale
    codec.set_tensor(s.q, p.q, p.dtype, p.q_shape)
    codec.set_tensor(s.k, p.k, p.dtype, p.k_shape)
    codec.set_tensor(s.v, p.v, p.dtype, p.k_shape)
    if p.cu_q is not None:
        s.cu_seqlens_q.extend(p.cu_q)
    if p.cu_k is not None:
        s.cu_seqlens_k.extend(p.cu_k)
    return s
