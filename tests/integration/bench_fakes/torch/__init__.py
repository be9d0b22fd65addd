"""Stand-in for torch in the benchmark's CPU dry run (see ../README.md): shapes, no data, no GPU."""

from __future__ import annotations

import math
from typing import Any

from torch import _C as _C
from torch import cuda, version

__version__ = "0.0.0+fake"
__all__ = ["Tensor", "bfloat16", "cuda", "device", "float32", "get_rng_state", "initial_seed", "manual_seed",
           "set_rng_state", "version"]


class dtype:
    def __init__(self, name: str, itemsize: int) -> None:
        self.name, self.itemsize = name, itemsize

    def __repr__(self) -> str:
        return f"torch.{self.name}"


bfloat16 = dtype("bfloat16", 2)
float32 = dtype("float32", 4)
_default_device = ["cpu"]


_seed = [67280421310721]  # torch's default


def manual_seed(seed: int) -> None:
    if not isinstance(seed, int):
        raise TypeError(f"manual_seed expected an int, got {type(seed).__name__}")
    _seed[0] = seed


def initial_seed() -> int:
    return _seed[0]


def get_rng_state() -> tuple[int]:
    """The CPU generator's state (the real one is a uint8 tensor; here its seed)."""
    return (_seed[0],)


def set_rng_state(new_state: tuple[int]) -> None:
    _seed[0] = new_state[0]


class device:
    """``torch.device("cuda")``, also as the context that makes new tensors there."""

    def __init__(self, type: str, index: int | None = None) -> None:
        if type.split(":")[0] not in ("cpu", "cuda"):
            raise RuntimeError(f"Expected one of cpu, cuda device type at start of device string: {type}")
        self.type, self.index = type.split(":")[0], index

    def __enter__(self) -> device:
        _default_device.append(self.type)
        return self

    def __exit__(self, *exc: object) -> None:
        _default_device.pop()


class Tensor:
    def __init__(self, shape: tuple[int, ...], dtype_: dtype = float32, device_: str | None = None,
                 pinned: bool = False) -> None:
        self.shape, self.dtype, self.pinned = tuple(shape), dtype_, pinned
        self.device = device(device_ or _default_device[-1])

    def numel(self) -> int:
        return math.prod(self.shape)

    def element_size(self) -> int:
        return self.dtype.itemsize

    def detach(self) -> Tensor:
        return Tensor(self.shape, self.dtype, self.device.type)

    def to(self, *args: Any, **kwargs: Any) -> Tensor:
        new_dtype, new_device = kwargs.pop("dtype", self.dtype), kwargs.pop("device", self.device.type)
        kwargs.pop("non_blocking", None), kwargs.pop("copy", None)  # a fake copy is never asynchronous
        if kwargs:
            raise TypeError(f"to() got unexpected keyword arguments {sorted(kwargs)}")
        for arg in args:
            if isinstance(arg, dtype):
                new_dtype = arg
            elif isinstance(arg, (str, device)):
                new_device = arg if isinstance(arg, str) else arg.type
            else:
                raise TypeError(f"to() received an invalid combination of arguments: {arg!r}")
        return Tensor(self.shape, new_dtype, new_device)

    def pin_memory(self) -> Tensor:
        if self.device.type != "cpu":
            raise RuntimeError(f"cannot pin '{self.device.type}' memory: only dense CPU tensors can be pinned")
        return Tensor(self.shape, self.dtype, "cpu", pinned=True)

    def is_pinned(self) -> bool:
        return self.pinned
