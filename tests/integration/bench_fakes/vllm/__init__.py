"""Stand-in for vLLM 0.33 in the benchmark's CPU dry run (see ../README.md)."""

from vllm.entrypoints.llm import LLM
from vllm.sampling_params import SamplingParams

__version__ = "0.33.0"
__all__ = ["LLM", "SamplingParams"]
