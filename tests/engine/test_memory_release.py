"""Where this release keeps no host copy of released weights, its scheduler unmaps them right after
queuing copies out of them (rollout_shims/shims/sglang_pause.py): the shim registers a loader with
the release and runs it in each scheduler before the first offload, and from then on the pause SGLang's
adapter calls waits for the device first. Checked through this release's own SGLang and
torch_memory_saver, no GPU touched: the field it is registered in, the import SGLang's loader dispatch
does (``dynamic_import``), and the order of the device's synchronisation and the pause."""

from __future__ import annotations

import pytest

from rollout_shims.shims.sglang_pause import PAUSE_LOADER


def test_after_the_shims_loader_every_pause_of_this_release_waits_for_the_device(detection, shim,
                                                                                 monkeypatch) -> None:
    if detection.engine != "sglang":
        pytest.skip("SGLang-only: vLLM's sleep is another code path")
    if shim.OFFLOAD_KEEPS_WEIGHTS:
        pytest.skip("this band keeps a host copy of the weights, a blocking copy that waits for the device "
                    "before the unmap (enable_weights_cpu_backup)")
    from sglang.srt.server_args import ServerArgs

    if "custom_weight_loader" not in shim.server_args_fields(ServerArgs):
        pytest.skip(f"SGLang {detection.release} has no custom_weight_loader hook (0.4.8+): the shim cannot run "
                    "code in its scheduler, and its offload keeps the race (docs/shims.md)")
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
