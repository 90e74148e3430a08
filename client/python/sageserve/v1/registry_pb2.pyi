from sageserve.v1 import attention_service_pb2 as _attention_service_pb2
from sageserve.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor
PLAN_SOURCE_CALIBRATED: PlanSource
PLAN_SOURCE_DEFAULT: PlanSource
PLAN_SOURCE_MANUAL: PlanSource
PLAN_SOURCE_UNSPECIFIED: PlanSource
PV_ACCUMULATION_FP22_ONLY: PvAccumulation
PV_ACCUMULATION_TWO_LEVEL: PvAccumulation
PV_ACCUMULATION_UNSPECIFIED: PvAccumulation
PV_TYPE_F16: PvType
PV_TYPE_FP8_E4M3: PvType
PV_TYPE_UNSPECIFIED: PvType
QK_SMOOTHING_K: QkSmoothing
QK_SMOOTHING_NONE: QkSmoothing
QK_SMOOTHING_QK: QkSmoothing
QK_SMOOTHING_UNSPECIFIED: QkSmoothing
QK_TYPE_F16: QkType
QK_TYPE_INT4: QkType
QK_TYPE_INT8: QkType
QK_TYPE_UNSPECIFIED: QkType
QUANT_GRANULARITY_PER_BLOCK: QuantGranularity
QUANT_GRANULARITY_PER_THREAD: QuantGranularity
QUANT_GRANULARITY_PER_WARP: QuantGranularity
QUANT_GRANULARITY_UNSPECIFIED: QuantGranularity
V_SMOOTHING_MEAN: VSmoothing
V_SMOOTHING_NONE: VSmoothing
V_SMOOTHING_UNSPECIFIED: VSmoothing

class CalibrateRequest(_message.Message):
    __slots__ = ["accuracy_target", "candidates", "dry_run", "kv_storage_candidates", "model", "sample"]
    ACCURACY_TARGET_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    KV_STORAGE_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    accuracy_target: float
    candidates: _containers.RepeatedScalarFieldContainer[_tensor_pb2.Recipe]
    dry_run: bool
    kv_storage_candidates: _containers.RepeatedScalarFieldContainer[_tensor_pb2.KvStorage]
    model: str
    sample: CalibrationSample
    def __init__(self, model: _Optional[str] = ..., dry_run: bool = ..., candidates: _Optional[_Iterable[_Union[_tensor_pb2.Recipe, str]]] = ..., accuracy_target: _Optional[float] = ..., sample: _Optional[_Union[CalibrationSample, _Mapping]] = ..., kv_storage_candidates: _Optional[_Iterable[_Union[_tensor_pb2.KvStorage, str]]] = ...) -> None: ...

class CalibrateResponse(_message.Message):
    __slots__ = ["accuracy_target", "cells", "cost_order", "elapsed_us", "hardware", "kv_layers", "model", "plan", "report", "sample_count", "stored"]
    ACCURACY_TARGET_FIELD_NUMBER: _ClassVar[int]
    CELLS_FIELD_NUMBER: _ClassVar[int]
    COST_ORDER_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_US_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    KV_LAYERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    accuracy_target: float
    cells: _containers.RepeatedCompositeFieldContainer[CellReport]
    cost_order: _containers.RepeatedScalarFieldContainer[_tensor_pb2.Recipe]
    elapsed_us: int
    hardware: HardwareDescription
    kv_layers: _containers.RepeatedCompositeFieldContainer[LayerKvStorageReport]
    model: str
    plan: Plan
    report: str
    sample_count: int
    stored: bool
    def __init__(self, model: _Optional[str] = ..., stored: bool = ..., accuracy_target: _Optional[float] = ..., hardware: _Optional[_Union[HardwareDescription, _Mapping]] = ..., cost_order: _Optional[_Iterable[_Union[_tensor_pb2.Recipe, str]]] = ..., cells: _Optional[_Iterable[_Union[CellReport, _Mapping]]] = ..., plan: _Optional[_Union[Plan, _Mapping]] = ..., sample_count: _Optional[int] = ..., elapsed_us: _Optional[int] = ..., report: _Optional[str] = ..., kv_layers: _Optional[_Iterable[_Union[LayerKvStorageReport, _Mapping]]] = ...) -> None: ...

class CalibrationSample(_message.Message):
    __slots__ = ["cu_seqlens_k", "cu_seqlens_q", "k", "layer", "mask", "q", "softmax_scale", "timestep", "v"]
    CU_SEQLENS_K_FIELD_NUMBER: _ClassVar[int]
    CU_SEQLENS_Q_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    Q_FIELD_NUMBER: _ClassVar[int]
    SOFTMAX_SCALE_FIELD_NUMBER: _ClassVar[int]
    TIMESTEP_FIELD_NUMBER: _ClassVar[int]
    V_FIELD_NUMBER: _ClassVar[int]
    cu_seqlens_k: _containers.RepeatedScalarFieldContainer[int]
    cu_seqlens_q: _containers.RepeatedScalarFieldContainer[int]
    k: _tensor_pb2.Tensor
    layer: int
    mask: _attention_service_pb2.MaskMode
    q: _tensor_pb2.Tensor
    softmax_scale: float
    timestep: int
    v: _tensor_pb2.Tensor
    def __init__(self, layer: _Optional[int] = ..., timestep: _Optional[int] = ..., q: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., k: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., v: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., cu_seqlens_q: _Optional[_Iterable[int]] = ..., cu_seqlens_k: _Optional[_Iterable[int]] = ..., mask: _Optional[_Union[_attention_service_pb2.MaskMode, str]] = ..., softmax_scale: _Optional[float] = ...) -> None: ...

class CellReport(_message.Message):
    __slots__ = ["chosen", "layer", "met_target", "reason", "samples", "scores", "timestep"]
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    MET_TARGET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    TIMESTEP_FIELD_NUMBER: _ClassVar[int]
    chosen: _tensor_pb2.Recipe
    layer: int
    met_target: bool
    reason: str
    samples: int
    scores: _containers.RepeatedCompositeFieldContainer[RecipeScore]
    timestep: int
    def __init__(self, layer: _Optional[int] = ..., timestep: _Optional[int] = ..., samples: _Optional[int] = ..., scores: _Optional[_Iterable[_Union[RecipeScore, _Mapping]]] = ..., chosen: _Optional[_Union[_tensor_pb2.Recipe, str]] = ..., met_target: bool = ..., reason: _Optional[str] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ["name"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteModelResponse(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ["name"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ["model"]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...

class GetPlanRequest(_message.Message):
    __slots__ = ["model"]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class GetPlanResponse(_message.Message):
    __slots__ = ["plan"]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    plan: Plan
    def __init__(self, plan: _Optional[_Union[Plan, _Mapping]] = ...) -> None: ...

class HardwareDescription(_message.Message):
    __slots__ = ["architecture", "backend", "device"]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    architecture: str
    backend: str
    device: str
    def __init__(self, backend: _Optional[str] = ..., device: _Optional[str] = ..., architecture: _Optional[str] = ...) -> None: ...

class IndexRange(_message.Message):
    __slots__ = ["first", "last"]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    first: int
    last: int
    def __init__(self, first: _Optional[int] = ..., last: _Optional[int] = ...) -> None: ...

class KvStorageEntry(_message.Message):
    __slots__ = ["kv_storage", "layers"]
    KV_STORAGE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    kv_storage: _tensor_pb2.KvStorage
    layers: IndexRange
    def __init__(self, layers: _Optional[_Union[IndexRange, _Mapping]] = ..., kv_storage: _Optional[_Union[_tensor_pb2.KvStorage, str]] = ...) -> None: ...

class KvStorageScore(_message.Message):
    __slots__ = ["error", "kv_storage", "max_relative_l1", "mean_decode_score", "mean_prefill_score", "meets_target", "min_decode_score", "min_prefill_score", "relative_bytes", "samples"]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    KV_STORAGE_FIELD_NUMBER: _ClassVar[int]
    MAX_RELATIVE_L1_FIELD_NUMBER: _ClassVar[int]
    MEAN_DECODE_SCORE_FIELD_NUMBER: _ClassVar[int]
    MEAN_PREFILL_SCORE_FIELD_NUMBER: _ClassVar[int]
    MEETS_TARGET_FIELD_NUMBER: _ClassVar[int]
    MIN_DECODE_SCORE_FIELD_NUMBER: _ClassVar[int]
    MIN_PREFILL_SCORE_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    error: str
    kv_storage: _tensor_pb2.KvStorage
    max_relative_l1: float
    mean_decode_score: float
    mean_prefill_score: float
    meets_target: bool
    min_decode_score: float
    min_prefill_score: float
    relative_bytes: float
    samples: int
    def __init__(self, kv_storage: _Optional[_Union[_tensor_pb2.KvStorage, str]] = ..., relative_bytes: _Optional[float] = ..., samples: _Optional[int] = ..., mean_decode_score: _Optional[float] = ..., min_decode_score: _Optional[float] = ..., mean_prefill_score: _Optional[float] = ..., min_prefill_score: _Optional[float] = ..., max_relative_l1: _Optional[float] = ..., meets_target: bool = ..., error: _Optional[str] = ...) -> None: ...

class LayerKvStorageReport(_message.Message):
    __slots__ = ["chosen", "layer", "met_target", "reason", "samples", "scores"]
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    MET_TARGET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    chosen: _tensor_pb2.KvStorage
    layer: int
    met_target: bool
    reason: str
    samples: int
    scores: _containers.RepeatedCompositeFieldContainer[KvStorageScore]
    def __init__(self, layer: _Optional[int] = ..., samples: _Optional[int] = ..., scores: _Optional[_Iterable[_Union[KvStorageScore, _Mapping]]] = ..., chosen: _Optional[_Union[_tensor_pb2.KvStorage, str]] = ..., met_target: bool = ..., reason: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ["models"]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ["created_at", "plan", "spec", "updated_at"]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    created_at: str
    plan: Plan
    spec: ModelSpec
    updated_at: str
    def __init__(self, spec: _Optional[_Union[ModelSpec, _Mapping]] = ..., plan: _Optional[_Union[Plan, _Mapping]] = ..., created_at: _Optional[str] = ..., updated_at: _Optional[str] = ...) -> None: ...

class ModelSpec(_message.Message):
    __slots__ = ["accuracy_target", "head_dim", "kv_heads", "name", "num_layers", "num_timesteps", "q_heads"]
    ACCURACY_TARGET_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
    KV_HEADS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_TIMESTEPS_FIELD_NUMBER: _ClassVar[int]
    Q_HEADS_FIELD_NUMBER: _ClassVar[int]
    accuracy_target: float
    head_dim: int
    kv_heads: int
    name: str
    num_layers: int
    num_timesteps: int
    q_heads: int
    def __init__(self, name: _Optional[str] = ..., num_layers: _Optional[int] = ..., q_heads: _Optional[int] = ..., kv_heads: _Optional[int] = ..., head_dim: _Optional[int] = ..., num_timesteps: _Optional[int] = ..., accuracy_target: _Optional[float] = ...) -> None: ...

class Plan(_message.Message):
    __slots__ = ["accuracy_target", "calibrated_on", "created_at", "default_recipe", "entries", "kv_storages", "sample_count", "source", "version"]
    ACCURACY_TARGET_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_ON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_RECIPE_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    KV_STORAGES_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    accuracy_target: float
    calibrated_on: HardwareDescription
    created_at: str
    default_recipe: _tensor_pb2.Recipe
    entries: _containers.RepeatedCompositeFieldContainer[PlanEntry]
    kv_storages: _containers.RepeatedCompositeFieldContainer[KvStorageEntry]
    sample_count: int
    source: PlanSource
    version: int
    def __init__(self, entries: _Optional[_Iterable[_Union[PlanEntry, _Mapping]]] = ..., source: _Optional[_Union[PlanSource, str]] = ..., calibrated_on: _Optional[_Union[HardwareDescription, _Mapping]] = ..., accuracy_target: _Optional[float] = ..., version: _Optional[int] = ..., created_at: _Optional[str] = ..., sample_count: _Optional[int] = ..., default_recipe: _Optional[_Union[_tensor_pb2.Recipe, str]] = ..., kv_storages: _Optional[_Iterable[_Union[KvStorageEntry, _Mapping]]] = ...) -> None: ...

class PlanEntry(_message.Message):
    __slots__ = ["config", "layers", "recipe", "timesteps"]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    TIMESTEPS_FIELD_NUMBER: _ClassVar[int]
    config: RecipeConfig
    layers: IndexRange
    recipe: _tensor_pb2.Recipe
    timesteps: IndexRange
    def __init__(self, layers: _Optional[_Union[IndexRange, _Mapping]] = ..., timesteps: _Optional[_Union[IndexRange, _Mapping]] = ..., recipe: _Optional[_Union[_tensor_pb2.Recipe, str]] = ..., config: _Optional[_Union[RecipeConfig, _Mapping]] = ...) -> None: ...

class RecipeConfig(_message.Message):
    __slots__ = ["accumulation", "granularity", "pv", "qk", "qk_smoothing", "v_smoothing"]
    ACCUMULATION_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    PV_FIELD_NUMBER: _ClassVar[int]
    QK_FIELD_NUMBER: _ClassVar[int]
    QK_SMOOTHING_FIELD_NUMBER: _ClassVar[int]
    V_SMOOTHING_FIELD_NUMBER: _ClassVar[int]
    accumulation: PvAccumulation
    granularity: QuantGranularity
    pv: PvType
    qk: QkType
    qk_smoothing: QkSmoothing
    v_smoothing: VSmoothing
    def __init__(self, qk: _Optional[_Union[QkType, str]] = ..., granularity: _Optional[_Union[QuantGranularity, str]] = ..., qk_smoothing: _Optional[_Union[QkSmoothing, str]] = ..., pv: _Optional[_Union[PvType, str]] = ..., v_smoothing: _Optional[_Union[VSmoothing, str]] = ..., accumulation: _Optional[_Union[PvAccumulation, str]] = ...) -> None: ...

class RecipeScore(_message.Message):
    __slots__ = ["error", "max_relative_l1", "mean_compute_us", "mean_cosine", "mean_relative_l1", "mean_score", "meets_target", "min_score", "recipe", "relative_cost", "samples", "std_score"]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MAX_RELATIVE_L1_FIELD_NUMBER: _ClassVar[int]
    MEAN_COMPUTE_US_FIELD_NUMBER: _ClassVar[int]
    MEAN_COSINE_FIELD_NUMBER: _ClassVar[int]
    MEAN_RELATIVE_L1_FIELD_NUMBER: _ClassVar[int]
    MEAN_SCORE_FIELD_NUMBER: _ClassVar[int]
    MEETS_TARGET_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_COST_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    STD_SCORE_FIELD_NUMBER: _ClassVar[int]
    error: str
    max_relative_l1: float
    mean_compute_us: float
    mean_cosine: float
    mean_relative_l1: float
    mean_score: float
    meets_target: bool
    min_score: float
    recipe: _tensor_pb2.Recipe
    relative_cost: float
    samples: int
    std_score: float
    def __init__(self, recipe: _Optional[_Union[_tensor_pb2.Recipe, str]] = ..., relative_cost: _Optional[float] = ..., samples: _Optional[int] = ..., mean_score: _Optional[float] = ..., min_score: _Optional[float] = ..., std_score: _Optional[float] = ..., mean_cosine: _Optional[float] = ..., mean_relative_l1: _Optional[float] = ..., max_relative_l1: _Optional[float] = ..., mean_compute_us: _Optional[float] = ..., meets_target: bool = ..., error: _Optional[str] = ...) -> None: ...

class RegisterModelRequest(_message.Message):
    __slots__ = ["replace", "spec"]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    replace: bool
    spec: ModelSpec
    def __init__(self, spec: _Optional[_Union[ModelSpec, _Mapping]] = ..., replace: bool = ...) -> None: ...

class RegisterModelResponse(_message.Message):
    __slots__ = ["model"]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...

class SetPlanRequest(_message.Message):
    __slots__ = ["expected_version", "model", "plan"]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    expected_version: int
    model: str
    plan: Plan
    def __init__(self, model: _Optional[str] = ..., plan: _Optional[_Union[Plan, _Mapping]] = ..., expected_version: _Optional[int] = ...) -> None: ...

class SetPlanResponse(_message.Message):
    __slots__ = ["plan"]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    plan: Plan
    def __init__(self, plan: _Optional[_Union[Plan, _Mapping]] = ...) -> None: ...

class QkType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class PvType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class QuantGranularity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class QkSmoothing(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class VSmoothing(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class PvAccumulation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class PlanSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []
