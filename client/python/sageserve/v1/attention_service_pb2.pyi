from google.protobuf import any_pb2 as _any_pb2
from sageserve.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor
MASK_MODE_CAUSAL: MaskMode
MASK_MODE_NONE: MaskMode
MASK_MODE_UNSPECIFIED: MaskMode

class AccessControlInfo(_message.Message):
    __slots__ = ["tokens_required", "warning"]
    TOKENS_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    tokens_required: bool
    warning: str
    def __init__(self, tokens_required: bool = ..., warning: _Optional[str] = ...) -> None: ...

class AttendRequest(_message.Message):
    __slots__ = ["cu_seqlens_k", "cu_seqlens_q", "k", "layer_key", "lse_output", "mask", "o_output", "output_dtype", "q", "recipe", "request_id", "return_lse", "softmax_scale", "v"]
    CU_SEQLENS_K_FIELD_NUMBER: _ClassVar[int]
    CU_SEQLENS_Q_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    LAYER_KEY_FIELD_NUMBER: _ClassVar[int]
    LSE_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DTYPE_FIELD_NUMBER: _ClassVar[int]
    O_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    Q_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RETURN_LSE_FIELD_NUMBER: _ClassVar[int]
    SOFTMAX_SCALE_FIELD_NUMBER: _ClassVar[int]
    V_FIELD_NUMBER: _ClassVar[int]
    cu_seqlens_k: _containers.RepeatedScalarFieldContainer[int]
    cu_seqlens_q: _containers.RepeatedScalarFieldContainer[int]
    k: _tensor_pb2.Tensor
    layer_key: LayerKey
    lse_output: _tensor_pb2.SharedMemoryRef
    mask: MaskMode
    o_output: _tensor_pb2.SharedMemoryRef
    output_dtype: _tensor_pb2.DType
    q: _tensor_pb2.Tensor
    recipe: _tensor_pb2.Recipe
    request_id: str
    return_lse: bool
    softmax_scale: float
    v: _tensor_pb2.Tensor
    def __init__(self, request_id: _Optional[str] = ..., q: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., k: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., v: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., cu_seqlens_q: _Optional[_Iterable[int]] = ..., cu_seqlens_k: _Optional[_Iterable[int]] = ..., mask: _Optional[_Union[MaskMode, str]] = ..., softmax_scale: _Optional[float] = ..., return_lse: bool = ..., output_dtype: _Optional[_Union[_tensor_pb2.DType, str]] = ..., layer_key: _Optional[_Union[LayerKey, _Mapping]] = ..., recipe: _Optional[_Union[_tensor_pb2.Recipe, str]] = ..., o_output: _Optional[_Union[_tensor_pb2.SharedMemoryRef, _Mapping]] = ..., lse_output: _Optional[_Union[_tensor_pb2.SharedMemoryRef, _Mapping]] = ...) -> None: ...

class AttendResponse(_message.Message):
    __slots__ = ["lse", "o", "recipe", "request_id", "status", "timings"]
    LSE_FIELD_NUMBER: _ClassVar[int]
    O_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    lse: _tensor_pb2.Tensor
    o: _tensor_pb2.Tensor
    recipe: _tensor_pb2.Recipe
    request_id: str
    status: RequestStatus
    timings: Timings
    def __init__(self, request_id: _Optional[str] = ..., o: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., lse: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., recipe: _Optional[_Union[_tensor_pb2.Recipe, str]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., status: _Optional[_Union[RequestStatus, _Mapping]] = ...) -> None: ...

class DeviceInfo(_message.Message):
    __slots__ = ["architecture", "memory_bytes", "name"]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    architecture: str
    memory_bytes: int
    name: str
    def __init__(self, name: _Optional[str] = ..., architecture: _Optional[str] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class GetServerInfoResponse(_message.Message):
    __slots__ = ["access_control", "backend", "default_recipe", "devices", "head_dims", "input_dtypes", "instance", "kv_storages", "limits", "load", "recipes", "shared_memory", "version"]
    ACCESS_CONTROL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_RECIPE_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIMS_FIELD_NUMBER: _ClassVar[int]
    INPUT_DTYPES_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    KV_STORAGES_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    RECIPES_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    access_control: AccessControlInfo
    backend: str
    default_recipe: _tensor_pb2.Recipe
    devices: _containers.RepeatedCompositeFieldContainer[DeviceInfo]
    head_dims: _containers.RepeatedScalarFieldContainer[int]
    input_dtypes: _containers.RepeatedScalarFieldContainer[_tensor_pb2.DType]
    instance: str
    kv_storages: _containers.RepeatedScalarFieldContainer[_tensor_pb2.KvStorage]
    limits: ServerLimits
    load: int
    recipes: _containers.RepeatedScalarFieldContainer[_tensor_pb2.Recipe]
    shared_memory: SharedMemoryInfo
    version: str
    def __init__(self, version: _Optional[str] = ..., backend: _Optional[str] = ..., devices: _Optional[_Iterable[_Union[DeviceInfo, _Mapping]]] = ..., head_dims: _Optional[_Iterable[int]] = ..., recipes: _Optional[_Iterable[_Union[_tensor_pb2.Recipe, str]]] = ..., default_recipe: _Optional[_Union[_tensor_pb2.Recipe, str]] = ..., input_dtypes: _Optional[_Iterable[_Union[_tensor_pb2.DType, str]]] = ..., limits: _Optional[_Union[ServerLimits, _Mapping]] = ..., shared_memory: _Optional[_Union[SharedMemoryInfo, _Mapping]] = ..., access_control: _Optional[_Union[AccessControlInfo, _Mapping]] = ..., kv_storages: _Optional[_Iterable[_Union[_tensor_pb2.KvStorage, str]]] = ..., instance: _Optional[str] = ..., load: _Optional[int] = ...) -> None: ...

class LayerKey(_message.Message):
    __slots__ = ["layer", "model", "timestep"]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIMESTEP_FIELD_NUMBER: _ClassVar[int]
    layer: int
    model: str
    timestep: int
    def __init__(self, model: _Optional[str] = ..., layer: _Optional[int] = ..., timestep: _Optional[int] = ...) -> None: ...

class RecipeAccuracy(_message.Message):
    __slots__ = ["compute_us", "cosine_similarity", "error", "max_abs_error", "passed", "recipe", "relative_l1", "rmse"]
    COMPUTE_US_FIELD_NUMBER: _ClassVar[int]
    COSINE_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_ERROR_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_L1_FIELD_NUMBER: _ClassVar[int]
    RMSE_FIELD_NUMBER: _ClassVar[int]
    compute_us: int
    cosine_similarity: float
    error: str
    max_abs_error: float
    passed: bool
    recipe: _tensor_pb2.Recipe
    relative_l1: float
    rmse: float
    def __init__(self, recipe: _Optional[_Union[_tensor_pb2.Recipe, str]] = ..., cosine_similarity: _Optional[float] = ..., relative_l1: _Optional[float] = ..., rmse: _Optional[float] = ..., max_abs_error: _Optional[float] = ..., compute_us: _Optional[int] = ..., passed: bool = ..., error: _Optional[str] = ...) -> None: ...

class RequestStatus(_message.Message):
    __slots__ = ["code", "details", "message"]
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    details: _containers.RepeatedCompositeFieldContainer[_any_pb2.Any]
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., details: _Optional[_Iterable[_Union[_any_pb2.Any, _Mapping]]] = ...) -> None: ...

class SelfTestRequest(_message.Message):
    __slots__ = ["recipes"]
    RECIPES_FIELD_NUMBER: _ClassVar[int]
    recipes: _containers.RepeatedScalarFieldContainer[_tensor_pb2.Recipe]
    def __init__(self, recipes: _Optional[_Iterable[_Union[_tensor_pb2.Recipe, str]]] = ...) -> None: ...

class SelfTestResponse(_message.Message):
    __slots__ = ["backend", "passed", "problem", "results", "total_us"]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_US_FIELD_NUMBER: _ClassVar[int]
    backend: str
    passed: bool
    problem: str
    results: _containers.RepeatedCompositeFieldContainer[RecipeAccuracy]
    total_us: int
    def __init__(self, passed: bool = ..., problem: _Optional[str] = ..., backend: _Optional[str] = ..., results: _Optional[_Iterable[_Union[RecipeAccuracy, _Mapping]]] = ..., total_us: _Optional[int] = ...) -> None: ...

class ServerLimits(_message.Message):
    __slots__ = ["max_message_bytes", "max_request_tokens", "queue_capacity", "worker_threads"]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_TOKENS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    WORKER_THREADS_FIELD_NUMBER: _ClassVar[int]
    max_message_bytes: int
    max_request_tokens: int
    queue_capacity: int
    worker_threads: int
    def __init__(self, max_message_bytes: _Optional[int] = ..., max_request_tokens: _Optional[int] = ..., queue_capacity: _Optional[int] = ..., worker_threads: _Optional[int] = ...) -> None: ...

class SharedMemoryInfo(_message.Message):
    __slots__ = ["cuda", "enabled", "max_regions"]
    CUDA_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    MAX_REGIONS_FIELD_NUMBER: _ClassVar[int]
    cuda: bool
    enabled: bool
    max_regions: int
    def __init__(self, enabled: bool = ..., max_regions: _Optional[int] = ..., cuda: bool = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ["compute_us", "device_us", "kernel_us", "prepare_us", "queued_us", "total_us"]
    COMPUTE_US_FIELD_NUMBER: _ClassVar[int]
    DEVICE_US_FIELD_NUMBER: _ClassVar[int]
    KERNEL_US_FIELD_NUMBER: _ClassVar[int]
    PREPARE_US_FIELD_NUMBER: _ClassVar[int]
    QUEUED_US_FIELD_NUMBER: _ClassVar[int]
    TOTAL_US_FIELD_NUMBER: _ClassVar[int]
    compute_us: int
    device_us: int
    kernel_us: int
    prepare_us: int
    queued_us: int
    total_us: int
    def __init__(self, queued_us: _Optional[int] = ..., compute_us: _Optional[int] = ..., total_us: _Optional[int] = ..., kernel_us: _Optional[int] = ..., device_us: _Optional[int] = ..., prepare_us: _Optional[int] = ...) -> None: ...

class MaskMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []
