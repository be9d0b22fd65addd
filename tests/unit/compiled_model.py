"""A model compiled the way vLLM's ``TorchCompileWrapperWithCustomDispatcher`` compiles one on torch 2.9
(vllm/compilation/wrapper.py in 0.11.2 and 0.12.0): ``torch.compile(self.forward, backend=VllmBackend(config))``
with every guard dropped, and the wrapper's bound ``bytecode_hook`` registered with Dynamo. The backend
keeps the config (vLLM's holds the KV cache through ``static_forward_context``) and the graph's example
inputs (vLLM's ``VllmSerializableFunction`` keeps them: the weights). In a module of its own so that
the compiled function's ``__compiled_fn`` global lives where vLLM's does, in the model's module."""

from __future__ import annotations

import torch


class Backend:
    def __init__(self, config: object) -> None:
        self.config = config

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        kept = {"graph": gm, "example_inputs": example_inputs}
        return lambda *args: kept["graph"](*args)


class Model(torch.nn.Module):
    def __init__(self, config: object) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)
        self._compiled = torch.compile(self.forward, fullgraph=True, dynamic=False, backend=Backend(config),
                                       options={"guard_filter_fn": lambda guards: [False for _ in guards]})
        torch._dynamo.convert_frame.register_bytecode_hook(self.bytecode_hook)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * 2

    def original_code_object(self) -> object:
        return self.__class__.forward.__code__

    def bytecode_hook(self, old_code: object, new_code: object) -> None:
        return None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._compiled(x)


class OldModel(Model):
    """vLLM 0.9.2's form (vllm/compilation/wrapper.py:56): ``original_code_object`` is an attribute that
    holds the code object, not a method."""

    def __init__(self, config: object) -> None:
        super().__init__(config)
        self.original_code_object = self.__class__.forward.__code__


def callers_function(x: torch.Tensor) -> torch.Tensor:
    """A function of the caller's in the model's module, compiled by the caller."""
    return x + 1


KEPT_CODE: list = []
"""Stands for what kept vLLM's transformed code alive after shutdown on the H200 (2026-12-04, vLLM
0.11.2-0.13.0 on torch 2.9.0; not identified: vLLM's wrapper keeps it as ``_compiled_bytecode``). Torch
deletes the ``__compiled_fn`` global only when that code dies."""


class KeptCodeModel(Model):
    def bytecode_hook(self, old_code: object, new_code: object) -> None:
        if old_code is self.original_code_object():
            KEPT_CODE.append(new_code)
