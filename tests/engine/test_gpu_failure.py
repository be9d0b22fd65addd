"""An engine process dies: the caller gets an exception naming the engine and what happened, stays
alive, and the engine's own processes are gone.

Each case runs in a subprocess: before the shim handled it, SGLang answered a failing child by
SIGKILLing its caller, which here would take pytest (and its JUnit file) with it. The subprocess
prints one ``RESULT {json}`` line; the assertions run here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from gpu_share import LOCKING_PRELUDE, engine_config

pytestmark = pytest.mark.gpu

SCRIPT = LOCKING_PRELUDE + r"""
import os, signal, time
import psutil
from rollout_shims import SamplingParams, create_engine
from rollout_shims.errors import EngineFailedError

cfg, case = json.loads(sys.argv[1]), sys.argv[2]
greedy = SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True)
with SHARE.starting():
    eng = create_engine(cfg)
SHARE.hold_until_exit()  # what the engine holds is freed by the failure and at exit: never during a start
eng.generate([[5, 6, 7]], greedy)
owned = list(eng._owned.pids)
names = {pid: psutil.Process(pid).name() for pid in owned}
if case == "kill-scheduler":   # no word from the child: out of memory, a driver fault, kill -9
    victim = next(pid for pid, name in names.items() if name.startswith("sglang::scheduler"))
    os.kill(victim, signal.SIGKILL)
elif case == "child-error":    # the scheduler hits an exception (resume without a release)
    pass
start = time.monotonic()
result = {"case": case, "names": sorted(names.values())}
try:
    if case == "child-error":
        eng._call("resume_memory_occupation")   # past the shim's state check: it would not allow this
        eng.generate([[5, 6, 7]], greedy)
    else:
        eng.generate([[5, 6, 7]], greedy)
    result["raised"] = None
except EngineFailedError as exc:
    result.update(raised=type(exc).__name__, message=str(exc), process=exc.process, how=exc.how,
                  last_error=exc.last_error)
except Exception as exc:
    result.update(raised=type(exc).__name__, message=str(exc)[:500])
result["seconds"] = round(time.monotonic() - start, 2)
time.sleep(1)
result["alive"] = [pid for pid in owned if psutil.pid_exists(pid)
                   and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
try:
    eng.generate([[5, 6, 7]], greedy)
    result["second_call"] = "answered"
except EngineFailedError:
    result["second_call"] = "EngineFailedError"
eng.shutdown()
print("RESULT " + json.dumps(result), flush=True)
"""


@pytest.mark.parametrize("case", ["kill-scheduler", "child-error"])
def test_engine_process_failure_raises_and_spares_the_caller(model_dir: Path, backend: str, mode: str,
                                                            case: str) -> None:
    if backend != "sglang":
        pytest.skip("vLLM runs its engine in the caller's process here (TP=1): there is no engine child to fail")
    cfg = engine_config(model_dir, backend, mode, max_running_requests=8)
    run = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(cfg), case], capture_output=True, text=True,
                         timeout=240, env=dict(os.environ), check=False)
    print(run.stderr[-3000:])
    lines = [line[7:] for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, f"the caller died (exit {run.returncode}):\n{run.stderr[-3000:]}"
    result = json.loads(lines[0])
    print(f"[failure] {case}: {result}")
    assert result["raised"] == "EngineFailedError", result
    assert "sglang" in result["message"] and result["process"], result
    assert result["alive"] == [], f"engine processes left running: {result}"
    assert result["second_call"] == "EngineFailedError"
    if case == "kill-scheduler":  # the watch thread names the process that ended
        assert result["process"].startswith("scheduler"), result
    else:  # the child logged its exception (its last line is in the message), or died in C code (exit 1)
        assert result["last_error"] or "exited with code 1" in result["how"], result
