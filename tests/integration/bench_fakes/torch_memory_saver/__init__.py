"""Stand-in for torch_memory_saver 0.0.9 (the symbols the SGLang shims check for offload)."""

import contextlib
from collections.abc import Iterator

from torch_memory_saver.entrypoint import TorchMemorySaver

torch_memory_saver = TorchMemorySaver()


@contextlib.contextmanager
def configure_subprocess() -> Iterator[None]:
    """The real one sets ``LD_PRELOAD`` to its hook library around ``proc.start()``; the stand-in has no
    library to preload (its SGLang starts no process), so it leaves the environment alone."""
    yield
