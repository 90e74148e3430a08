from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor
SHARED_MEMORY_KIND_CUDA: SharedMemoryKind
SHARED_MEMORY_KIND_SYSTEM: SharedMemoryKind
SHARED_MEMORY_KIND_UNSPECIFIED: SharedMemoryKind

class GetSharedMemoryStatusRequest(_message.Message):
    __slots__ = ["name"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetSharedMemoryStatusResponse(_message.Message):
    __slots__ = ["regions"]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    regions: _containers.RepeatedCompositeFieldContainer[SharedMemoryRegionStatus]
    def __init__(self, regions: _Optional[_Iterable[_Union[SharedMemoryRegionStatus, _Mapping]]] = ...) -> None: ...

class RegisterCudaSharedMemoryRequest(_message.Message):
    __slots__ = ["byte_size", "device_id", "name", "raw_handle"]
    BYTE_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RAW_HANDLE_FIELD_NUMBER: _ClassVar[int]
    byte_size: int
    device_id: int
    name: str
    raw_handle: bytes
    def __init__(self, name: _Optional[str] = ..., raw_handle: _Optional[bytes] = ..., device_id: _Optional[int] = ..., byte_size: _Optional[int] = ...) -> None: ...

class RegisterSharedMemoryResponse(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class RegisterSystemSharedMemoryRequest(_message.Message):
    __slots__ = ["byte_size", "key", "name", "offset"]
    BYTE_SIZE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    byte_size: int
    key: str
    name: str
    offset: int
    def __init__(self, name: _Optional[str] = ..., key: _Optional[str] = ..., offset: _Optional[int] = ..., byte_size: _Optional[int] = ...) -> None: ...

class SharedMemoryRegionStatus(_message.Message):
    __slots__ = ["byte_size", "device_id", "key", "kind", "name", "offset", "pinned", "requests"]
    BYTE_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    byte_size: int
    device_id: int
    key: str
    kind: SharedMemoryKind
    name: str
    offset: int
    pinned: bool
    requests: int
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[SharedMemoryKind, str]] = ..., key: _Optional[str] = ..., offset: _Optional[int] = ..., device_id: _Optional[int] = ..., byte_size: _Optional[int] = ..., pinned: bool = ..., requests: _Optional[int] = ...) -> None: ...

class UnregisterSharedMemoryRequest(_message.Message):
    __slots__ = ["name"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UnregisterSharedMemoryResponse(_message.Message):
    __slots__ = ["names"]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class SharedMemoryKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []
