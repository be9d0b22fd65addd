from vllm.config.compilation import CompilationConfig

__all__ = ["CompilationConfig"]
