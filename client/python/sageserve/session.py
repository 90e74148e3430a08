"""Server-resident KV sessions (sageserve.v1.SessionService), like the C++ sageserve::Session.

A Session tracks each layer's length and the next step id: a step is sent at the layer's length
with a fresh id, and committed (length from the answer, id advanced) only when it succeeds, so a
step retried after a lost answer is appended once. Not thread-safe: one decode loop owns a session.
docs/API.md, "Sessions".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

from sageserve import codec, errors
from sageserve.request import next_request_id, parse_recipe
from sageserve.transport import Placement, Transport
from sageserve.v1 import session_pb2 as sp
from sageserve.v1 import tensor_pb2 as tp

KV_STORAGE = {"16bit": tp.KV_STORAGE_16BIT, "int8_k_fp8_v": tp.KV_STORAGE_INT8_K_FP8_V,
              "int4_k_fp8_v": tp.KV_STORAGE_INT4_K_FP8_V}


# Request metadata naming the session a call is about (AttendSession: its first step's), so a gRPC
# proxy in front of several replicas can route it to the replica the id names (docs/DEPLOY.md, "A
# gRPC proxy in front"). The server does not read it.
SESSION_METADATA_KEY = "sageserve-session"


def session_metadata(session_id: Optional[str]) -> Tuple[Tuple[str, str], ...]:
    """The (key, value) pair naming `session_id`, or none for an id gRPC could not send (empty, not
    printable ASCII: no server makes such an id, and its NOT_FOUND is the better answer)."""
    if not session_id or not all(" " <= c <= "~" for c in session_id):
        return ()
    return ((SESSION_METADATA_KEY, session_id),)


def parse_kv_storage(name: str, field: str = "kv_storage") -> int:
    """The KvStorage of a name of KV_STORAGE; ValueError naming `field` otherwise."""
    if name not in KV_STORAGE:
        raise ValueError(f"{field} must be one of {list(KV_STORAGE)}, got {name!r}")
    return KV_STORAGE[name]


@dataclass
class SessionOptions:
    layers: int = 1
    heads_q: int = 1
    heads_kv: int = 1
    head_dim: int = 128
    dtype: str = "fp16"  # or "bf16": of every Q, K, V sent and O returned
    # Every layer's storage: "16bit", "int8_k_fp8_v" (half the bytes), "int4_k_fp8_v" (~2.4x fewer;
    # docs/NUMERICS.md). None: the model's registry plan picks per layer (16-bit without a model).
    kv_storage: Optional[str] = None
    max_tokens: int = 0  # required: appends past it are OUT_OF_RANGE
    reserve_tokens: int = 0
    model: str = ""  # optional: the registry's per-layer recipes and KV storages
    layer_kv_storages: Optional[Sequence[str]] = None  # one per layer, instead of kv_storage

    def request(self) -> sp.CreateSessionRequest:
        if self.kv_storage is not None and self.layer_kv_storages is not None:
            raise ValueError("set kv_storage or layer_kv_storages, not both")
        return sp.CreateSessionRequest(
            model=self.model, layers=self.layers, heads_q=self.heads_q, heads_kv=self.heads_kv,
            head_dim=self.head_dim, dtype=codec.parse_dtype(self.dtype),
            kv_storage=parse_kv_storage(self.kv_storage) if self.kv_storage is not None else tp.KV_STORAGE_UNSPECIFIED,
            layer_kv_storages=[parse_kv_storage(n, "layer_kv_storages") for n in (self.layer_kv_storages or [])],
            max_tokens=self.max_tokens, reserve_tokens=self.reserve_tokens)


@dataclass
class StepResult:
    """One step's answer: O ([n_q, Hq, D], like q) and LSE (fp32 [n_q, Hq]) or None for a bulk
    import, and the layer's length after the step."""

    o: Optional[Any]
    lse: Optional[Any]
    length: int
    session_id: str


class Session:
    """One session: `step` appends and attends; `fork`, `truncate`, `close` as their RPCs."""

    def __init__(self, calls: "SessionCalls", session_id: str, options: SessionOptions,
                 lengths: Sequence[int]) -> None:
        self._calls = calls
        self.id = session_id
        self.options = options
        self.lengths: List[int] = list(lengths)
        self.next_step_id = 1

    def length(self, layer: int) -> int:
        return self.lengths[layer]

    def make_step(self, layer: int, k: Any, v: Any, q: Optional[Any] = None, *, fill: bool = True) -> sp.SessionStep:
        """The next step of `layer`: k/v [n_new, Hkv, D] (n_new may be 0), q [n_q, Hq, D] or None.

        fill=False checks the tensors but leaves them out (the caller places them: shared memory).
        """
        dtype = codec.parse_dtype(self.options.dtype)
        step = sp.SessionStep(session_id=self.id, layer=layer, step_id=self.next_step_id,
                              position=self.lengths[layer] if 0 <= layer < len(self.lengths) else 0)
        for name, x in (("k", k), ("v", v), ("q", q)):
            if x is None:
                continue
            if len(x.shape) != 3:
                raise ValueError(f"{name}: a step takes [tokens, heads, head_dim], got shape {tuple(x.shape)}")
            if x.shape[0] > 0 and codec.wire_dtype(x, name, dtype) != dtype:
                raise TypeError(f"{name}: dtype {x.dtype} is not the session's {self.options.dtype}")
            if fill:
                codec.set_tensor(getattr(step, name), x, dtype, x.shape)
        return step

    def commit(self, layer: int, result: sp.SessionStepResult, advance_id: bool = True) -> None:
        """Records a step's success (its layer's new length); call after a successful AttendSession.

        advance_id=False: the id was taken when the step was sent (streams, where several layers'
        steps of one session are in flight at once and each needs its own id).
        """
        if 0 <= layer < len(self.lengths):
            self.lengths[layer] = int(result.length)
        if advance_id:
            self.next_step_id += 1

    def step(self, layer: int, k: Any, v: Any, q: Optional[Any] = None, *, return_lse: bool = False,
             recipe: Union[str, int, None] = None, retries: int = 2) -> StepResult:
        """make_step, AttendSession and commit; UNAVAILABLE and DEADLINE_EXCEEDED are retried up to
        `retries` times with the same position and step id (the server appends at most once)."""
        return self._calls.attend(layer, [(self, k, v, q)], return_lse=return_lse, recipe=recipe,
                                  retries=retries)[0]

    def fork(self, length: Optional[int] = None) -> "Session":
        """A new session sharing this one's first `length` tokens (default all), copy on write."""
        r = self._calls.fork(self.id, length)
        return Session(self._calls, r.session_id, self.options, r.info.layer_lengths)

    def truncate(self, length: int) -> None:
        info = self._calls.truncate(self.id, length)
        self.lengths = list(info.layer_lengths)

    def close(self) -> None:
        self._calls.close(self.id)

    def info(self) -> sp.SessionInfo:
        return self._calls.get(self.id)


def _step_result(r: sp.SessionStepResult, like: Optional[Any], return_lse: bool,
                 placement: Optional[Placement] = None) -> StepResult:
    placement = placement or Placement()
    o = placement.read_ref(r.o, like) if r.HasField("o") and len(r.o.shape) else None
    lse = placement.read_ref(r.lse, like) if return_lse and r.HasField("lse") and len(r.lse.shape) else None
    return StepResult(o, lse, int(r.length), r.session_id)


Steps = Sequence[Tuple[Session, Any, Any, Optional[Any]]]


def _concat(parts: List[Any]) -> Any:
    if codec.is_torch(parts[0]):
        import torch

        return torch.cat(parts, dim=0)
    import numpy as np

    return np.concatenate(parts, axis=0)


class SessionCall:
    """One AttendSession request for a batch of steps of one layer, its tensors placed by the
    client's transport (bytes, or a system shared-memory region with O/LSE written back there).
    CUDA tensors go as bytes here: a CUDA q has rules of its own (docs/API.md, "Sessions").

    packed=True sends the packed form (AttendSessionRequest.packed): every step's k, v and q
    concatenated into one tensor each, and one O for the call, split here per step. Same answers,
    fewer messages to build and parse for a batch of many sessions.
    """

    def __init__(self, transport: Optional[Transport], layer: int, steps: Steps, *, return_lse: bool,
                 recipe: Union[str, int, None], prefix: str, take_ids: bool = False, packed: bool = False) -> None:
        self.layer = layer
        self.steps = steps
        self.return_lse = return_lse
        self.packed = packed
        self.request = sp.AttendSessionRequest(request_id=next_request_id(prefix), return_lse=return_lse,
                                               recipe=parse_recipe(recipe))
        if not steps:
            raise ValueError("a session call needs at least one step")
        inputs = []
        options = steps[0][0].options
        q_rows, heads_q, head_dim = 0, options.heads_q, options.head_dim
        dtype = codec.parse_dtype(options.dtype)
        self.n_q: List[int] = []
        for session, k, v, q in steps:
            msg = self.request.steps.add()
            msg.CopyFrom(session.make_step(layer, k, v, q, fill=transport is None and not packed))
            if take_ids:
                session.next_step_id += 1
            if packed:
                # The step carries session, layer, position and id only; its tensors go in `packed`.
                msg.ClearField("k")
                msg.ClearField("v")
                msg.ClearField("q")
                self.request.packed.n_new.append(int(k.shape[0]))
                self.request.packed.n_q.append(int(q.shape[0]) if q is not None else 0)
            else:
                for x, t in ((k, msg.k), (v, msg.v), (q, msg.q)):
                    if x is not None and transport is not None:
                        inputs.append(("t", x, t, tuple(x.shape), dtype))
            self.n_q.append(int(q.shape[0]) if q is not None else 0)
            q_rows += self.n_q[-1]
        if packed:
            p = self.request.packed
            qs = [q for _, _, _, q in steps if q is not None and q.shape[0] > 0]
            packed_inputs = [("k", _concat([k for _, k, _, _ in steps])), ("v", _concat([v for _, _, v, _ in steps]))]
            if qs:
                packed_inputs.append(("q", _concat(qs)))
            for key, x in packed_inputs:
                inputs.append((key, x, getattr(p, key), tuple(x.shape), dtype))
        self.placement = Placement()
        if transport is None:
            for _, x, t, shape, dt in inputs:  # only the packed tensors are left to fill here
                codec.set_tensor(t, x, dt, shape)
            return
        outputs = []
        if q_rows:  # O (and LSE) of every step with q, back to back in step order
            outputs.append(("o", q_rows * heads_q * head_dim * 2))
            if return_lse:
                outputs.append(("lse", q_rows * heads_q * 4))
        req = self.request

        def set_output(key: str, region: str, offset: int, nbytes: int) -> None:
            ref = req.o_output if key == "o" else req.lse_output
            ref.region, ref.offset, ref.byte_size = region, offset, nbytes

        mode = "bytes" if any(codec.is_cuda(x) for _, x, _, _, _ in inputs) else None
        self.placement = transport.place(inputs, outputs, set_output, mode=mode)

    def results(self, response: sp.AttendSessionResponse, advance_ids: bool = True) -> List[StepResult]:
        """Commits every step and reads its answer; releases the region."""
        try:
            if len(response.results) != len(self.steps):
                raise errors.InternalError(
                    f"AttendSession: {len(response.results)} results for {len(self.steps)} steps")
            if self.packed:
                return self._packed_results(response, advance_ids)
            out = []
            for (session, _, _, q), r in zip(self.steps, response.results):
                session.commit(self.layer, r, advance_id=advance_ids)
                out.append(_step_result(r, q, self.return_lse, self.placement))
            return out
        finally:
            self.placement.release()

    def _packed_results(self, response: sp.AttendSessionResponse, advance_ids: bool) -> List[StepResult]:
        # One O (and LSE) for the call, rows in step order: each step takes its n_q of them.
        like = next((q for _, _, _, q in self.steps if q is not None), None)
        o = self.placement.read_ref(response.o, like) if sum(self.n_q) else None
        lse = self.placement.read_ref(response.lse, like) if self.return_lse and sum(self.n_q) else None
        out, row = [], 0
        for (session, _, _, q), r, n in zip(self.steps, response.results, self.n_q):
            session.commit(self.layer, r, advance_id=advance_ids)
            take = slice(row, row + n)
            out.append(StepResult(o[take] if n else None, lse[take] if n and lse is not None else None,
                                  int(r.length), session.id))
            row += n
        return out

    def abandon(self) -> None:
        self.placement.release()


class SessionCalls:
    """SessionService's RPCs on a client's channel (blocking, under its timeout)."""

    def __init__(self, stub: Any, call: Callable[..., Any], transport: Optional[Transport] = None) -> None:
        self._stub = stub
        self._call = call
        self._transport = transport

    def create(self, options: SessionOptions) -> Session:
        r = self._call(self._stub.CreateSession, options.request())
        return Session(self, r.session_id, options, [0] * options.layers)

    def attend_request(self, request: sp.AttendSessionRequest, timeout: Optional[float] = None) -> sp.AttendSessionResponse:
        # Through a proxy, the first step's session picks the replica: one call's sessions share one.
        first = request.steps[0].session_id if request.steps else None
        return self._call(self._stub.AttendSession, request, timeout, session=first)

    def attend(self, layer: int, steps: Steps, *, return_lse: bool = False, recipe: Union[str, int, None] = None,
               timeout: Optional[float] = None, retries: int = 0, packed: bool = False) -> List[StepResult]:
        """One call for a decode batch's `layer`: each (session, k, v, q or None) in one launch.

        UNAVAILABLE and DEADLINE_EXCEEDED are sent again up to `retries` times, with the same
        positions and step ids (the server appends each step at most once). packed: the packed
        form (SessionCall)."""
        call = SessionCall(self._transport, layer, steps, return_lse=return_lse, recipe=recipe, prefix="sessions",
                           packed=packed)
        try:
            for attempt in range(retries + 1):
                try:
                    response = self.attend_request(call.request, timeout)
                    break
                except errors.UnavailableError as e:
                    if attempt == retries:
                        raise _owner_gone(e, [st.session_id for st in call.request.steps]) from None
                except errors.DeadlineExceededError:
                    if attempt == retries:
                        raise
        except BaseException:
            call.abandon()
            raise
        return call.results(response)

    def _on_owner(self, session_id: str, method: Any, request: Any) -> Any:
        try:
            return self._call(method, request, session=session_id)
        except errors.UnavailableError as e:
            raise _owner_gone(e, [session_id]) from None

    def get(self, session_id: str) -> sp.SessionInfo:
        return self._on_owner(session_id, self._stub.GetSession, sp.GetSessionRequest(session_id=session_id)).info

    def list(self) -> sp.ListSessionsResponse:
        return self._call(self._stub.ListSessions, sp.ListSessionsRequest())

    def fork(self, session_id: str, length: Optional[int] = None) -> sp.ForkSessionResponse:
        req = sp.ForkSessionRequest(session_id=session_id)
        if length is not None:
            req.length = length
        return self._on_owner(session_id, self._stub.ForkSession, req)

    def truncate(self, session_id: str, length: int) -> sp.SessionInfo:
        return self._on_owner(session_id, self._stub.TruncateSession,
                              sp.TruncateSessionRequest(session_id=session_id, length=length)).info

    def close(self, session_id: str) -> None:
        self._on_owner(session_id, self._stub.CloseSession, sp.CloseSessionRequest(session_id=session_id))


def _owner_gone(e: errors.UnavailableError, session_ids: Sequence[str]) -> errors.SessionOwnerGoneError:
    """A session call the server holding the sessions did not answer (UNAVAILABLE): their caches
    went with it (a server that is up but draining answers the same way)."""
    ids = sorted(set(session_ids))
    return errors.SessionOwnerGoneError(
        f"the server holding session(s) {', '.join(ids)} cannot be reached or is shutting down; their KV "
        f"caches are lost with it: create new sessions and prefill again ({e.message})", ids)


__all__ = ["KV_STORAGE", "SESSION_METADATA_KEY", "parse_kv_storage", "session_metadata", "Session", "SessionCall", "SessionCalls", "SessionOptions", "StepResult"]
