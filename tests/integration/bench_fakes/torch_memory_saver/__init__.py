"""Stand-in for torch_memory_saver 0.0.9 (the symbols the SGLang shims check for offload)."""

from torch_memory_saver.entrypoint import TorchMemorySaver

torch_memory_saver = TorchMemorySaver()


def configure_subprocess() -> None:
    return None
