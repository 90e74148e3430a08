from sageserve.v1 import attention_service_pb2 as _attention_service_pb2
from sageserve.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AttendSessionRequest(_message.Message):
    __slots__ = ["lse_output", "o_output", "packed", "recipe", "request_id", "return_lse", "steps"]
    LSE_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    O_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RETURN_LSE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    lse_output: _tensor_pb2.SharedMemoryRef
    o_output: _tensor_pb2.SharedMemoryRef
    packed: PackedSteps
    recipe: _tensor_pb2.Recipe
    request_id: str
    return_lse: bool
    steps: _containers.RepeatedCompositeFieldContainer[SessionStep]
    def __init__(self, request_id: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[SessionStep, _Mapping]]] = ..., recipe: _Optional[_Union[_tensor_pb2.Recipe, str]] = ..., return_lse: bool = ..., o_output: _Optional[_Union[_tensor_pb2.SharedMemoryRef, _Mapping]] = ..., lse_output: _Optional[_Union[_tensor_pb2.SharedMemoryRef, _Mapping]] = ..., packed: _Optional[_Union[PackedSteps, _Mapping]] = ...) -> None: ...

class AttendSessionResponse(_message.Message):
    __slots__ = ["lse", "o", "recipe", "request_id", "results", "status", "timings"]
    LSE_FIELD_NUMBER: _ClassVar[int]
    O_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    lse: _tensor_pb2.Tensor
    o: _tensor_pb2.Tensor
    recipe: _tensor_pb2.Recipe
    request_id: str
    results: _containers.RepeatedCompositeFieldContainer[SessionStepResult]
    status: _attention_service_pb2.RequestStatus
    timings: _attention_service_pb2.Timings
    def __init__(self, request_id: _Optional[str] = ..., results: _Optional[_Iterable[_Union[SessionStepResult, _Mapping]]] = ..., recipe: _Optional[_Union[_tensor_pb2.Recipe, str]] = ..., timings: _Optional[_Union[_attention_service_pb2.Timings, _Mapping]] = ..., status: _Optional[_Union[_attention_service_pb2.RequestStatus, _Mapping]] = ..., o: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., lse: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ["session_id"]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ["dtype", "head_dim", "heads_kv", "heads_q", "kv_storage", "layer_kv_storages", "layers", "max_tokens", "model", "reserve_tokens"]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    HEADS_KV_FIELD_NUMBER: _ClassVar[int]
    HEADS_Q_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
    KV_STORAGE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    LAYER_KV_STORAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RESERVE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    dtype: _tensor_pb2.DType
    head_dim: int
    heads_kv: int
    heads_q: int
    kv_storage: _tensor_pb2.KvStorage
    layer_kv_storages: _containers.RepeatedScalarFieldContainer[_tensor_pb2.KvStorage]
    layers: int
    max_tokens: int
    model: str
    reserve_tokens: int
    def __init__(self, model: _Optional[str] = ..., layers: _Optional[int] = ..., heads_q: _Optional[int] = ..., heads_kv: _Optional[int] = ..., head_dim: _Optional[int] = ..., dtype: _Optional[_Union[_tensor_pb2.DType, str]] = ..., kv_storage: _Optional[_Union[_tensor_pb2.KvStorage, str]] = ..., max_tokens: _Optional[int] = ..., reserve_tokens: _Optional[int] = ..., layer_kv_storages: _Optional[_Iterable[_Union[_tensor_pb2.KvStorage, str]]] = ...) -> None: ...

class CreateSessionResponse(_message.Message):
    __slots__ = ["info", "session_id"]
    INFO_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    info: SessionInfo
    session_id: str
    def __init__(self, session_id: _Optional[str] = ..., info: _Optional[_Union[SessionInfo, _Mapping]] = ...) -> None: ...

class ForkSessionRequest(_message.Message):
    __slots__ = ["length", "session_id"]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    length: int
    session_id: str
    def __init__(self, session_id: _Optional[str] = ..., length: _Optional[int] = ...) -> None: ...

class ForkSessionResponse(_message.Message):
    __slots__ = ["info", "session_id"]
    INFO_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    info: SessionInfo
    session_id: str
    def __init__(self, session_id: _Optional[str] = ..., info: _Optional[_Union[SessionInfo, _Mapping]] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ["session_id"]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class GetSessionResponse(_message.Message):
    __slots__ = ["info"]
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: SessionInfo
    def __init__(self, info: _Optional[_Union[SessionInfo, _Mapping]] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ["pages_free", "pages_total", "sessions"]
    PAGES_FREE_FIELD_NUMBER: _ClassVar[int]
    PAGES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    pages_free: int
    pages_total: int
    sessions: _containers.RepeatedCompositeFieldContainer[SessionInfo]
    def __init__(self, sessions: _Optional[_Iterable[_Union[SessionInfo, _Mapping]]] = ..., pages_free: _Optional[int] = ..., pages_total: _Optional[int] = ...) -> None: ...

class PackedSteps(_message.Message):
    __slots__ = ["k", "n_new", "n_q", "q", "v"]
    K_FIELD_NUMBER: _ClassVar[int]
    N_NEW_FIELD_NUMBER: _ClassVar[int]
    N_Q_FIELD_NUMBER: _ClassVar[int]
    Q_FIELD_NUMBER: _ClassVar[int]
    V_FIELD_NUMBER: _ClassVar[int]
    k: _tensor_pb2.Tensor
    n_new: _containers.RepeatedScalarFieldContainer[int]
    n_q: _containers.RepeatedScalarFieldContainer[int]
    q: _tensor_pb2.Tensor
    v: _tensor_pb2.Tensor
    def __init__(self, k: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., v: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., q: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., n_new: _Optional[_Iterable[int]] = ..., n_q: _Optional[_Iterable[int]] = ...) -> None: ...

class SessionInfo(_message.Message):
    __slots__ = ["dtype", "expires_in_ms", "head_dim", "heads_kv", "heads_q", "idle_ms", "kv_storage", "layer_kv_storages", "layer_lengths", "layer_page_tokens", "layers", "max_tokens", "model", "page_tokens", "pages", "session_id"]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_MS_FIELD_NUMBER: _ClassVar[int]
    HEADS_KV_FIELD_NUMBER: _ClassVar[int]
    HEADS_Q_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
    IDLE_MS_FIELD_NUMBER: _ClassVar[int]
    KV_STORAGE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    LAYER_KV_STORAGES_FIELD_NUMBER: _ClassVar[int]
    LAYER_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    LAYER_PAGE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    dtype: _tensor_pb2.DType
    expires_in_ms: int
    head_dim: int
    heads_kv: int
    heads_q: int
    idle_ms: int
    kv_storage: _tensor_pb2.KvStorage
    layer_kv_storages: _containers.RepeatedScalarFieldContainer[_tensor_pb2.KvStorage]
    layer_lengths: _containers.RepeatedScalarFieldContainer[int]
    layer_page_tokens: _containers.RepeatedScalarFieldContainer[int]
    layers: int
    max_tokens: int
    model: str
    page_tokens: int
    pages: int
    session_id: str
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[str] = ..., layers: _Optional[int] = ..., heads_q: _Optional[int] = ..., heads_kv: _Optional[int] = ..., head_dim: _Optional[int] = ..., dtype: _Optional[_Union[_tensor_pb2.DType, str]] = ..., kv_storage: _Optional[_Union[_tensor_pb2.KvStorage, str]] = ..., max_tokens: _Optional[int] = ..., layer_lengths: _Optional[_Iterable[int]] = ..., pages: _Optional[int] = ..., page_tokens: _Optional[int] = ..., idle_ms: _Optional[int] = ..., expires_in_ms: _Optional[int] = ..., layer_kv_storages: _Optional[_Iterable[_Union[_tensor_pb2.KvStorage, str]]] = ..., layer_page_tokens: _Optional[_Iterable[int]] = ...) -> None: ...

class SessionStep(_message.Message):
    __slots__ = ["k", "layer", "position", "q", "session_id", "step_id", "v"]
    K_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    Q_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    V_FIELD_NUMBER: _ClassVar[int]
    k: _tensor_pb2.Tensor
    layer: int
    position: int
    q: _tensor_pb2.Tensor
    session_id: str
    step_id: int
    v: _tensor_pb2.Tensor
    def __init__(self, session_id: _Optional[str] = ..., layer: _Optional[int] = ..., position: _Optional[int] = ..., step_id: _Optional[int] = ..., k: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., v: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., q: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class SessionStepResult(_message.Message):
    __slots__ = ["length", "lse", "o", "session_id"]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    LSE_FIELD_NUMBER: _ClassVar[int]
    O_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    length: int
    lse: _tensor_pb2.Tensor
    o: _tensor_pb2.Tensor
    session_id: str
    def __init__(self, session_id: _Optional[str] = ..., o: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., lse: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., length: _Optional[int] = ...) -> None: ...

class TruncateSessionRequest(_message.Message):
    __slots__ = ["length", "session_id"]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    length: int
    session_id: str
    def __init__(self, session_id: _Optional[str] = ..., length: _Optional[int] = ...) -> None: ...

class TruncateSessionResponse(_message.Message):
    __slots__ = ["info"]
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: SessionInfo
    def __init__(self, info: _Optional[_Union[SessionInfo, _Mapping]] = ...) -> None: ...
