"""Where this release keeps no host copy of released weights, its scheduler unmaps them right after
queuing copies out of them (rollout_shims/shims/sglang_pause.py): the shim registers a loader with
the release and runs it in each scheduler before the first offload, and from then on the pause SGLang's
adapter calls waits for the device first. Checked through this release's own SGLang and
torch_memory_saver, no GPU touched: the field it is registered in, the import SGLang's loader dispatch
does (``dynamic_import``), and the order of the device's synchronisation and the pause."""

from __future__ import annotations

import sys

import pytest

from rollout_shims.shims.sglang_pause import PAUSE_LOADER, run_scheduler_waiting_before_pause


def test_after_the_shims_loader_every_pause_of_this_release_waits_for_the_device(detection, shim,
                                                                                 monkeypatch) -> None:
    if detection.engine != "sglang":
        pytest.skip("SGLang-only: vLLM's sleep is another code path")
    if shim.OFFLOAD_KEEPS_WEIGHTS:
        pytest.skip("this band keeps a host copy of the weights, a blocking copy that waits for the device "
                    "before the unmap (enable_weights_cpu_backup)")
    from sglang.srt.server_args import ServerArgs

    if "custom_weight_loader" not in shim.server_args_fields(ServerArgs):
        pytest.skip(f"SGLang {detection.release} has no custom_weight_loader hook (0.4.8+): the schedulers' "
                    "process target waits instead (the next test)")
    assert PAUSE_LOADER in shim.custom_loaders()
    import torch
    import torch_memory_saver
    from sglang.srt.torch_memory_saver_adapter import TorchMemorySaverAdapter
    from sglang.srt.utils import dynamic_import

    events: list[str] = []
    saver = type(torch_memory_saver.torch_memory_saver)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args, **kwargs: events.append("synchronize"))
    monkeypatch.setattr(saver, "pause", lambda self, tag=None: events.append(f"pause {tag}"))  # no GPU to unmap
    dynamic_import(PAUSE_LOADER)(None, [])  # what model_runner.update_weights_from_tensor runs for it
    adapter = TorchMemorySaverAdapter.create(enable=True)
    adapter.pause("weights")
    assert events == ["synchronize", "pause weights"]


def test_the_suites_busy_loader_is_registered_and_imported_where_the_scheduler_imports_it(detection, shim) -> None:
    """test_gpu.py's offload test queues work in the scheduler through a loader of its own
    (engine_busy.py): the engine it starts must allow that loader, and SGLang's dispatch must find it."""
    if detection.engine != "sglang":
        pytest.skip("SGLang-only: vLLM's engine runs in the suite's process, where the work is queued directly")
    from engine_busy import SPIN_LOADER, spin, spin_allowed
    from sglang.srt.server_args import ServerArgs

    if "custom_weight_loader" not in shim.server_args_fields(ServerArgs):
        pytest.skip(f"SGLang {detection.release} has no custom_weight_loader hook (0.4.8+): the offload test skips")
    from sglang.srt.utils import dynamic_import

    shims_own = shim.custom_loaders()
    with spin_allowed("sglang"):
        assert shim.custom_loaders() == [*shims_own, SPIN_LOADER]
    assert SPIN_LOADER not in shim.custom_loaders()  # users' engines never get it
    assert dynamic_import(SPIN_LOADER) is spin


def test_without_the_hook_the_schedulers_start_through_the_shims_target(detection, shim, monkeypatch) -> None:
    """0.4.5.post3 - 0.4.7.post1 have no ``custom_weight_loader``: while the engine starts, the shim swaps the
    schedulers' process target in the release's engine module. Checked against this release's own engine
    module (its launch must read that name when it starts a scheduler) and torch_memory_saver."""
    if detection.engine != "sglang":
        pytest.skip("SGLang-only: vLLM's sleep is another code path")
    from sglang.srt.server_args import ServerArgs

    if "custom_weight_loader" in shim.server_args_fields(ServerArgs) or shim.OFFLOAD_KEEPS_WEIGHTS:
        pytest.skip(f"SGLang {detection.release} runs the shim's loader hook instead (0.4.8+) or keeps a host copy")
    import inspect

    import torch
    import torch_memory_saver

    try:
        from sglang.srt.entrypoints import engine as engine_module
    except Exception as exc:  # e.g. 0.4.7.post1's quantization layers import vLLM's ops without CUDA
        pytest.skip(f"sglang.srt.entrypoints.engine does not import here ({type(exc).__name__}: {exc}); the GPU run checks it")
    launch = inspect.getsource(engine_module)
    assert "target=run_scheduler_process" in launch, "the launch no longer reads the module's name"
    original = engine_module.run_scheduler_process
    eng = shim.__new__(shim)
    with eng._start_patch(engine_module):
        assert engine_module.run_scheduler_process is run_scheduler_waiting_before_pause
    assert engine_module.run_scheduler_process is original
    events: list[str] = []
    saver = torch_memory_saver.TorchMemorySaver
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args, **kwargs: events.append("synchronize"))
    monkeypatch.setattr(saver, "pause", lambda self: events.append("pause"))  # no GPU to unmap
    scheduler = type(sys)("sglang.srt.managers.scheduler")  # the real one needs a GPU to import on some releases
    scheduler.run_scheduler_process = lambda *args: events.append(f"scheduler {args}")
    monkeypatch.setitem(sys.modules, "sglang.srt.managers.scheduler", scheduler)
    run_scheduler_waiting_before_pause("server_args", "port_args")
    from sglang.srt.torch_memory_saver_adapter import TorchMemorySaverAdapter

    TorchMemorySaverAdapter.create(enable=True).pause()
    assert events == ["scheduler ('server_args', 'port_args')", "synchronize", "pause"]
