from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor
DTYPE_BF16: DType
DTYPE_FP16: DType
DTYPE_FP32: DType
DTYPE_UNSPECIFIED: DType
KV_STORAGE_16BIT: KvStorage
KV_STORAGE_INT4_K_FP8_V: KvStorage
KV_STORAGE_INT8_K_FP8_V: KvStorage
KV_STORAGE_UNSPECIFIED: KvStorage
RECIPE_INT4_QK_FP8_PV: Recipe
RECIPE_INT8_QK_FP16_PV: Recipe
RECIPE_INT8_QK_FP8_PV: Recipe
RECIPE_UNQUANTIZED: Recipe
RECIPE_UNSPECIFIED: Recipe

class SharedMemoryRef(_message.Message):
    __slots__ = ["byte_size", "offset", "region"]
    BYTE_SIZE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    byte_size: int
    offset: int
    region: str
    def __init__(self, region: _Optional[str] = ..., offset: _Optional[int] = ..., byte_size: _Optional[int] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ["data", "dtype", "shape", "shared_memory"]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    shared_memory: SharedMemoryRef
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., shared_memory: _Optional[_Union[SharedMemoryRef, _Mapping]] = ...) -> None: ...

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class Recipe(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class KvStorage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []
