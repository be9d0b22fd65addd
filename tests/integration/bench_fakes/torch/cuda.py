"""``torch.cuda`` of the stand-in: one fake 140 GiB device; the fake engines book what they hold."""

from __future__ import annotations

TOTAL = 140 * 1024**3
_used = [0]


def is_available() -> bool:
    return True


def is_initialized() -> bool:
    """False: nothing of the stand-in keeps CUDA state (the shims put no CUDA generator back here)."""
    return False


def synchronize(device: object = None) -> None:
    return None


def get_device_name(device: object = None) -> str:
    return "Fake GPU (CPU dry run)"


def mem_get_info(device: object = None) -> tuple[int, int]:
    return TOTAL - _used[0], TOTAL


def empty_cache() -> None:
    return None


def ipc_collect() -> None:
    return None


def current_device() -> int:
    return 0


class _Stream:
    def synchronize(self) -> None:
        return None


def current_stream(device: object = None) -> _Stream:
    return _Stream()


def book(nbytes: int) -> None:
    """For the fake engines: memory taken (positive) or given back (negative)."""
    _used[0] = max(0, _used[0] + int(nbytes))
