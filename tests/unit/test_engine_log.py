"""Finding the line that explains a child's failure in SGLang's log."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rollout_shims.engine_log import CONFIG_ENV, EngineLog, crashed_children, last_error_line

TRACEBACK = """[2026-11-29 17:34:01 Process-1] Scheduler hit an exception: Traceback (most recent call last):
  File "/x/sglang/srt/managers/scheduler.py", line 2628, in run_scheduler_process
    scheduler.event_loop_normal()
  File "/x/sglang/srt/managers/scheduler_update_weights_mixin.py", line 104, in resume_memory_occupation
    self.offload_tags.remove(tag)
KeyError: 'weights'
"""


def test_the_exception_line_of_a_traceback_wins() -> None:
    noise = "[2026-11-29 17:28:25 Process-1] The following error message 'operation scheduled' can be ignored.\n"
    assert last_error_line(noise + TRACEBACK + "[2026-11-29 17:34:02 Process-1] Cache flushed successfully!\n") == \
        "KeyError: 'weights'"
    assert last_error_line("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n") == \
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"


def test_without_an_exception_line_only_a_real_error_line_counts() -> None:
    assert last_error_line("loading weights\nerror: no space left on device\ndone\n") == "error: no space left on device"
    ignored = "[x] The following error message 'operation scheduled before its operands' can be ignored.\n"
    assert last_error_line(ignored) == ""
    assert last_error_line("") == ""


def test_the_config_goes_to_sglang_only_and_is_removed_again(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    log = EngineLog("info")
    log.install()
    config = json.loads(Path(os.environ[CONFIG_ENV]).read_text())
    assert set(config["loggers"]) == {"sglang"} and config["disable_existing_loggers"] is False
    assert "root" not in config  # the trainer's own logging is left alone
    log.uninstall()
    assert CONFIG_ENV not in os.environ
    log.path.write_text(TRACEBACK)
    assert log.last_error() == "KeyError: 'weights'"
    log.close()
    assert not log.dir.exists()


def test_the_watchdogs_crash_lines_give_each_childs_exit_status() -> None:
    text = ("[2026-12-03 14:04:36 MainProcess] Subprocess scheduler_0 (pid=13739) crashed with exit code -9. "
            "Triggering SIGQUIT for cleanup...\n"
            "[2026-12-03 14:04:37 MainProcess] Subprocess detokenizer (pid=13741) crashed with exit code 1. "
            "Triggering SIGQUIT for cleanup...\n"
            "[2026-12-03 14:04:38 Process-1] Scheduler (pid=13739) crashed\n")
    assert crashed_children(text) == {13739: -9, 13741: 1}
    assert crashed_children(TRACEBACK) == {}
