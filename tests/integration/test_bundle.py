"""A bundle of a tiny real lock (requests 2.31.0 and its dependencies, from PyPI) travels as parts and
comes back, on the receiving side's code (rollout_matrix.gpu), as exactly the lock's wheels; a lock-
exact venv is built from it. Corruption in transfer and a lock that changed are refused."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from rollout_matrix.bundles.bundle import MANIFEST, Manifest, make_bundle, member_digest
from rollout_matrix.errors import UserError
from rollout_matrix.gpu import install, pipeline, store
from rollout_matrix.locks.lockfile import read_lock
from rollout_matrix.locks.locking import lock_entry
from rollout_matrix.matrix.load import load_matrix
from rollout_matrix.matrix.model import Matrix


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory, pypi: None, tiny_engine_matrix) -> Matrix:
    root = tmp_path_factory.mktemp("repo")
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    (root / "matrix.yaml").write_text(tiny_engine_matrix(python))
    matrix = load_matrix(root / "matrix.yaml")
    result = lock_entry(matrix.get("tiny-2.31.0"), python, root / "docker" / "locks")
    assert result.ok, result.error
    return matrix


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tiny_bundle(locked: Matrix, tmp_path: Path, receive: bool = True) -> Path:
    """The tiny entry bundled in 2 MiB parts of wheels as published (``tmp_path/bundle``), and received
    into the machine's store unless ``receive`` is False."""
    entry = locked.get("tiny-2.31.0")
    out = tmp_path / "bundle"
    make_bundle(locked, [entry], entry.python, out, part_mib=2, payload="wheel", cache=tmp_path / "cache",
                progress=lambda line: None)
    if receive:
        store.receive(sorted(out.iterdir()))
    return out


def run_gpuenv(checkout: Path, machine: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m rollout_matrix.gpuenv ARGS`` in ``checkout``, with ``machine`` as its state folder."""
    return subprocess.run([sys.executable, "-m", "rollout_matrix.gpuenv", *args], cwd=checkout,
                          env={**os.environ, "ROLLOUT_MATRIX_GPU_ROOT": str(machine)},
                          capture_output=True, text=True, timeout=180)


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, locked: Matrix) -> Path:
    """The receiving side's state folder, and its checkout (the one holding the lock)."""
    monkeypatch.setattr(store, "ROOT", tmp_path / "machine")
    monkeypatch.setattr(store, "CHECKOUT", locked.path.parent)
    return tmp_path / "machine"


def test_wheel_parts_reassemble_to_exactly_the_locks_wheels(tmp_path: Path, locked: Matrix, machine: Path) -> None:
    entry = locked.get("tiny-2.31.0")
    out = tmp_path / "bundle"
    manifest = make_bundle(locked, [entry], entry.python, out, part_mib=2, payload="wheel",
                           cache=tmp_path / "cache", progress=lambda line: None)
    parts = sorted(out.iterdir())
    assert parts[0].name == "part-000" and (parts[0] / MANIFEST).is_file()
    assert all(sum(f.stat().st_size for f in p.iterdir()) <= 2 << 20 for p in parts[1:])
    store.receive(parts)
    assert not [f for p in parts[1:] for f in p.iterdir()]  # chunks moved into the store, not copied (gpu/disk.py)

    lock = read_lock(locked.path.parent / manifest.entries[entry.name].lock)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    records = manifest.entries[entry.name].files
    assert {r.name for r in records} == set(lock.versions)
    for record in records:
        wheel = install.reassemble(record, manifest.payload, wheels)
        assert f"sha256:{sha256(wheel)}" in lock.hashes[record.name], record.wheel  # the lock's own bytes
        assert lock.versions[record.name] == record.version


def test_zstd_parts_carry_the_same_files_and_make_a_lock_exact_venv(tmp_path: Path, locked: Matrix,
                                                                     machine: Path) -> None:
    entry = locked.get("tiny-2.31.0")
    cache = tmp_path / "cache"
    manifest = make_bundle(locked, [entry], entry.python, tmp_path / "bundle", part_mib=7, payload="zstd",
                           cache=cache, progress=lambda line: None)
    store.receive(sorted((tmp_path / "bundle").iterdir()))
    original = {p.name: p for p in (cache / "files").rglob("*.whl")}
    out = tmp_path / "wheels"
    out.mkdir()
    for record in manifest.entries[entry.name].files:
        wheel = install.reassemble(record, "zstd", out)
        with zipfile.ZipFile(wheel) as got, zipfile.ZipFile(original[record.wheel]) as want:
            assert member_digest(got) == member_digest(want)
            assert {i.filename: i.external_attr for i in got.infolist()} == \
                {i.filename: i.external_attr for i in want.infolist()}  # modes (executable bits) kept
    env = install.install(entry.name, jobs=2)
    assert (env / ".lock-exact").is_file()
    assert install.install(entry.name) == env  # a second call finds it ready


def test_a_corrupted_chunk_and_a_changed_lock_are_refused(tmp_path: Path, locked: Matrix, machine: Path) -> None:
    entry = locked.get("tiny-2.31.0")
    out = tmp_path / "bundle"
    manifest = make_bundle(locked, [entry], entry.python, out, part_mib=2, payload="wheel",
                           cache=tmp_path / "cache", progress=lambda line: None)
    part = next(p for p in sorted(out.iterdir()) if p.name != "part-000")
    chunk = next(part.iterdir())
    broken = tmp_path / "broken" / part.name
    shutil.copytree(part, broken)
    data = bytearray((broken / chunk.name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / chunk.name).write_bytes(bytes(data))
    with pytest.raises(UserError, match="does not match its name"):
        store.receive([broken])

    store.receive(sorted(out.iterdir()))
    lock_file = locked.path.parent / manifest.entries[entry.name].lock
    saved = lock_file.read_text()
    try:
        lock_file.write_text(saved.replace("# Install with:", "# Installed with:"))  # still a valid lock
        with pytest.raises(UserError, match="differs from the lock the bundle was made from"):
            install.install(entry.name)
    finally:
        lock_file.write_text(saved)


def test_a_second_bundle_skips_the_chunks_the_first_one_shipped(tmp_path: Path, locked: Matrix) -> None:
    entry = locked.get("tiny-2.31.0")
    first = make_bundle(locked, [entry], entry.python, tmp_path / "one", part_mib=2, payload="wheel",
                        cache=tmp_path / "cache", progress=lambda line: None)
    second = make_bundle(locked, [entry], entry.python, tmp_path / "two", part_mib=2, payload="wheel",
                         cache=tmp_path / "cache", skip_from=[tmp_path / "one"], progress=lambda line: None)
    assert set(second.chunks) == set(first.chunks)
    assert [p["chunks"] for p in second.parts] == [[]]  # only part-000, the manifest: nothing to ship again
    assert Manifest.from_json((tmp_path / "two" / "part-000" / MANIFEST).read_text()).entries.keys() == {entry.name}


STAMP_SCRIPT = ("import json, os, sys, time\nt0 = time.time(); time.sleep(float(sys.argv[1]))\n"
                "open(os.path.join(os.environ['ROLLOUT_MATRIX_RESULTS'], sys.argv[2]), 'w').write("
                "json.dumps([t0, time.time()]))\nsys.exit(int(sys.argv[3]))\n")
"""``stamp.py SECONDS NAME CODE``: sleeps, writes its start and end time to NAME, exits CODE."""


def test_pipeline_runs_steps_side_by_side_and_fails_when_one_fails(tmp_path: Path, locked: Matrix,
                                                                   machine: Path) -> None:
    """``pipeline --parallel 2`` on the receiving side's code: two steps overlap in time, a failing
    step makes the pipeline exit 1 (with the others still run), and a misspelt entry is refused at
    once instead of waiting for chunks that never come."""
    import json

    entry = locked.get("tiny-2.31.0")
    tiny_bundle(locked, tmp_path)
    checkout = locked.path.parent
    (checkout / "stamp.py").write_text(STAMP_SCRIPT)
    steps = [f"{entry.name}=stamp.py 3 a.json 0", f"{entry.name}=stamp.py 3 b.json 0", f"{entry.name}=stamp.py 0 c.json 7"]
    code = pipeline.pipeline(steps, pipeline.Plan(parallel=2, wait=5), [])
    results = machine / "results" / entry.name
    (a0, a1), (b0, b1) = (json.loads((results / n).read_text()) for n in ("a.json", "b.json"))
    assert a0 < b1 and b0 < a1, "the two 3-second steps did not overlap"
    assert (results / "c.json").is_file() and code == 1  # the third ran, and its exit 7 fails the pipeline
    with pytest.raises(UserError, match=r"not in matrix\.yaml: tiny-2\.31"):
        pipeline.pipeline(["tiny-2.31"], pipeline.Plan(wait=600), [])
    assert pipeline.pipeline([f"{entry.name}=stamp.py 0 d.json 0"], pipeline.Plan(), []) == 0


def test_steps_beyond_the_places_prepare_and_wait_without_using_the_gpu(
        tmp_path: Path, locked: Matrix, machine: Path, capsys: pytest.CaptureFixture) -> None:
    """``--parallel 2 --ahead 1``: three steps start together, two scripts run at once and never three;
    the third is ready (venv built) while both places are taken and says so, then runs once one frees."""
    import json

    entry = locked.get("tiny-2.31.0")
    tiny_bundle(locked, tmp_path)
    (locked.path.parent / "stamp.py").write_text(STAMP_SCRIPT)
    steps = [f"{entry.name}=stamp.py 2 {name}.json 0" for name in ("a", "b", "c")]
    assert pipeline.pipeline(steps, pipeline.Plan(parallel=2, ahead=1, wait=5), []) == 0
    results = machine / "results" / entry.name
    spans = [json.loads((results / f"{name}.json").read_text()) for name in ("a", "b", "c")]
    for t, _ in spans:
        assert sum(1 for s0, s1 in spans if s0 <= t < s1) <= 2, f"three steps used the GPU at once: {spans}"
    said = capsys.readouterr().out
    assert f"{entry.name}: ready, waiting for a place on the GPU (all 2 taken)" in said
    assert "1 more may prepare meanwhile" in said


def test_a_suite_stopped_before_it_gets_a_place_runs_no_mode(
        tmp_path: Path, locked: Matrix, machine: Path, capsys: pytest.CaptureFixture) -> None:
    """A `gpuenv stop` that comes while a suite builds its venv and every place is taken: the suite gives
    up its wait and starts no mode, which would use the GPU without a place."""
    from rollout_matrix.gpu import places, stop, suite

    entry = locked.get("tiny-2.31.0")
    tiny_bundle(locked, tmp_path)
    board = places.Places(1)
    with board.held("another-entry"):
        stop._flag().parent.mkdir(parents=True, exist_ok=True)
        stop._flag().touch()  # before the suite starts: what a stop during its venv build leaves
        suite.run_suite(entry.name, [], places=board)
    said = capsys.readouterr().out
    assert f"{entry.name}: graphs not run: the batch was stopped while it waited for a place" in said
    text = (machine / "results" / entry.name / "pytest.log").read_text()
    assert places.LOG_HEADER in text and suite.MODES_ENV not in text, text


def test_a_suite_keeps_what_a_script_of_its_entry_wrote_and_drops_an_earlier_suites_files(
        tmp_path: Path, locked: Matrix, machine: Path) -> None:
    """A benchmark step may end before its entry's suite starts (its place came first): the suite then
    clears an earlier suite's files, not the benchmark's ``bench.json`` and ``scripts.log``. And a
    mode's JUnit left by an earlier run is not merged into this run's junit.xml when the mode writes
    none this time (here the tiny venv has no pytest: each mode's process exits 1 and writes nothing)."""
    import json

    from rollout_matrix.gpu import suite

    entry = locked.get("tiny-2.31.0")
    tiny_bundle(locked, tmp_path)
    (locked.path.parent / "stamp.py").write_text(STAMP_SCRIPT)
    assert pipeline.pipeline([f"{entry.name}=stamp.py 0 bench.json 0"], pipeline.Plan(wait=5, keep_envs=True), []) == 0
    results = machine / "results" / entry.name
    written = (results / "bench.json").read_text(), (results / "scripts.log").read_text()
    (results / "junit-eager.xml").write_text(
        '<testsuite name="earlier"><testcase classname="earlier" name="test_of_an_earlier_run"/></testsuite>')
    (results / "pytest.log").write_text("an earlier suite's log\n")
    assert suite.run_suite(entry.name, []) == 1
    assert ((results / "bench.json").read_text(), (results / "scripts.log").read_text()) == written
    merged = results / "junit.xml"
    assert not merged.exists() or "test_of_an_earlier_run" not in merged.read_text()
    assert "an earlier suite's log" not in (results / "pytest.log").read_text()
    assert json.loads((results / "run.json").read_text())["exit_code"] == 1


def test_one_at_a_time_a_suite_then_a_script_of_its_entry_run_in_that_order_and_keep_both_results(
        tmp_path: Path, locked: Matrix, machine: Path) -> None:
    """The next hold's shape (docs/gpu.md): ``--parallel 1`` with an entry's suite named before a
    benchmark of the same entry. The script starts only after the suite has written its run.json, the
    suite's files and the script's stay side by side, and the venv goes once the last step ended."""
    import json

    from rollout_matrix.gpu import suite

    entry = locked.get("tiny-2.31.0")
    tiny_bundle(locked, tmp_path)
    (locked.path.parent / "stamp.py").write_text(STAMP_SCRIPT)
    steps = [entry.name, f"{entry.name}=stamp.py 0 bench.json 0"]
    assert pipeline.pipeline(steps, pipeline.Plan(parallel=1, wait=5), []) == 1  # the tiny venv has no pytest
    results = machine / "results" / entry.name
    run = json.loads((results / "run.json").read_text())
    assert run["exit_code"] == 1 and (results / "pytest.log").is_file()
    started, _ = json.loads((results / "bench.json").read_text())
    assert started >= (results / "run.json").stat().st_mtime
    assert not (machine / "envs" / entry.name).exists()
    assert results / "bench.json" not in suite.suite_outputs(results)  # a later suite would leave it


def as_vllm_on_a_90_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny entry described as a vLLM release, on a machine whose driver reports one 9.0 GPU: what
    makes gpuenv build FlashInfer's kernels before its steps."""
    import dataclasses

    from rollout_matrix.gpu import kernels, suite

    real = suite.matrix_entry
    monkeypatch.setattr(suite, "matrix_entry", lambda name: dataclasses.replace(real(name), engine="vllm"))
    monkeypatch.setattr(kernels, "capabilities", lambda: ["9.0"])


def test_a_script_of_a_vllm_entry_gets_flashinfers_build_first_and_then_runs(
        tmp_path: Path, locked: Matrix, machine: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Before a script of a vLLM entry (the benchmark), FlashInfer's sampling kernels are built as before
    a suite (gpu/kernels.py), so the script's budget is not spent on nvcc: here the tiny entry stands for
    a vLLM release on a machine reporting one 9.0 GPU, its venv has no FlashInfer, the build says so in
    one line, and the script runs after it."""
    import json

    from rollout_matrix.gpu import kernels

    entry = locked.get("tiny-2.31.0")
    tiny_bundle(locked, tmp_path)
    as_vllm_on_a_90_gpu(monkeypatch)
    (locked.path.parent / "stamp.py").write_text(STAMP_SCRIPT)
    capsys.readouterr()
    assert pipeline.pipeline([f"{entry.name}=stamp.py 0 bench.json 0"], pipeline.Plan(wait=5), []) == 0
    said = capsys.readouterr().out
    assert f"{entry.name}: no FlashInfer in this environment: no kernels to build before the script" in said
    results = machine / "results" / entry.name
    log = (results / "scripts.log").read_text()
    assert log.index(f"{kernels.LOG_HEADER} the script") < log.index("$ python stamp.py")
    assert json.loads((results / "bench.json").read_text())[0] > 0
    assert not list(results.glob("running-*.json"))  # the build's stop marker went with it


def test_a_stop_during_the_kernel_build_before_a_script_keeps_the_script_from_starting(
        tmp_path: Path, locked: Matrix, machine: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``gpuenv stop`` while FlashInfer's kernels build before a vLLM entry's script: the build's process
    group gets the signal, and the script does not start after it (its marker would come after the stop
    had looked, and nothing would ever stop it)."""
    import threading
    import time

    from rollout_matrix.gpu import kernels, stop

    entry = locked.get("tiny-2.31.0")
    tiny_bundle(locked, tmp_path)
    as_vllm_on_a_90_gpu(monkeypatch)
    monkeypatch.setattr(kernels, "SCRIPT", "import time\ntime.sleep(120)\n")  # a build that takes its time
    (locked.path.parent / "stamp.py").write_text(STAMP_SCRIPT)
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(
        pipeline.pipeline([f"{entry.name}=stamp.py 0 bench.json 0"], pipeline.Plan(wait=5), [])))
    runner.start()
    results = machine / "results" / entry.name
    deadline = time.monotonic() + 120
    while not stop.markers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stop.stop(grace=20) == [entry.name]
    runner.join(timeout=60)
    assert codes and codes[0] != 0
    assert not (results / "bench.json").exists(), "the script started after the stop"
    assert "$ python stamp.py" not in (results / "scripts.log").read_text()


def test_steps_read_a_copy_of_the_checkout_that_a_new_call_cannot_change(tmp_path: Path, locked: Matrix,
                                                                        machine: Path) -> None:
    """The device tool copies the working tree again at every call; on 2026-12-03 a suite lost a file it
    opened in that second. A step must read the checkout as it was when the pipeline began: here a file
    is deleted from the real checkout while the step runs, and the step still finds it, and neither the
    real checkout nor a leftover copy shows the step ever ran."""
    import json
    import threading
    import time

    entry = locked.get("tiny-2.31.0")
    tiny_bundle(locked, tmp_path)
    checkout = locked.path.parent
    (checkout / "victim.txt").write_text("read me")
    (checkout / "look.py").write_text(
        "import json, os, pathlib, time\nres = pathlib.Path(os.environ['ROLLOUT_MATRIX_RESULTS'])\n"
        "(res / 'started').write_text(os.getcwd())\nt0 = time.time()\n"
        "while not (res / 'go').exists() and time.time() - t0 < 60: time.sleep(0.05)\n"
        "(res / 'seen.json').write_text(json.dumps(pathlib.Path('victim.txt').read_text()))\n")
    results = machine / "results" / entry.name
    codes: list[int] = []
    runner = threading.Thread(
        target=lambda: codes.append(pipeline.pipeline([f"{entry.name}=look.py"], pipeline.Plan(wait=5), [])))
    runner.start()
    deadline = time.monotonic() + 120
    while not (results / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    (checkout / "victim.txt").unlink()  # what a call that re-copies the tree does to a file for a moment
    (results / "go").write_text("")
    runner.join(timeout=120)
    assert codes == [0]
    assert json.loads((results / "seen.json").read_text()) == "read me"
    ran_in = Path((results / "started").read_text())
    assert ran_in != checkout and ran_in.parent == machine / "checkouts"
    assert not ran_in.exists() and checkout == store.CHECKOUT  # the copy went, the real checkout is back
    assert not (checkout / "victim.txt").exists()


def test_a_venv_goes_when_its_entrys_last_step_ends_and_a_full_disk_is_one_line(
        tmp_path: Path, locked: Matrix, machine: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The H200's 64 GiB hold few venvs at once (gpu/disk.py): a venv stays while any step of its entry
    runs, goes when the last ends (``--keep-envs`` keeps it), and a build the disk has no room for fails
    in one line, never filling the disk. What its engines built at run time stays in the entry's home
    for the next venv of that entry."""
    import json

    from rollout_matrix.gpu import disk

    entry = locked.get("tiny-2.31.0")
    tiny_bundle(locked, tmp_path)
    (locked.path.parent / "alive.py").write_text(
        "import json, os, sys, time\ntime.sleep(float(sys.argv[1]))\n"
        "built = os.path.join(os.environ['XDG_CACHE_HOME'], 'kernel.so')\n"
        "found = os.path.exists(built)\nopen(built, 'w').write('built')\n"
        "open(os.path.join(os.environ['ROLLOUT_MATRIX_RESULTS'], sys.argv[2]), 'w').write("
        "json.dumps([os.path.isdir(os.path.join(sys.prefix, 'lib')), found]))\n")
    env = machine / "envs" / entry.name
    steps = [f"{entry.name}=alive.py 0 short.json", f"{entry.name}=alive.py 3 long.json"]
    assert pipeline.pipeline(steps, pipeline.Plan(parallel=2, wait=5), []) == 0
    results = machine / "results" / entry.name
    assert json.loads((results / "short.json").read_text()) == [True, False]
    assert json.loads((results / "long.json").read_text()) == [True, True]  # its venv outlived the other step
    assert not env.exists()
    assert pipeline.pipeline(steps[:1], pipeline.Plan(wait=5, keep_envs=True), []) == 0
    assert (env / "bin").is_dir()
    assert json.loads((results / "short.json").read_text()) == [True, True]  # the build outlived the venv

    shutil.rmtree(env)
    monkeypatch.setattr(disk, "free_bytes", lambda path=None: 1 << 30)
    capsys.readouterr()
    assert pipeline.pipeline(steps[:1], pipeline.Plan(wait=5), []) == 1
    said = [line for line in capsys.readouterr().out.splitlines() if "GiB free" in line and "needs about" in line]
    assert len(said) == 1 and said[0].count(entry.name) == 1 and not env.exists()


def test_plan_shares_the_gpu_only_when_suites_run_side_by_side() -> None:
    assert pipeline.Plan().sharing() is None
    shared = pipeline.Plan(parallel=4).sharing()
    assert shared is not None and shared["ROLLOUT_MATRIX_GPU_MEMORY_FRACTION"] == "0.2"
    assert shared["ROLLOUT_MATRIX_GPU_LOCK"].endswith("gpu.lock")
    assert pipeline.Plan(parallel=2, memory_fraction=0.3).fraction() == 0.3


def test_parallel_auto_stays_one_where_the_driver_reports_no_memory_per_process(machine: Path) -> None:
    """Here (no GPU, no nvidia-smi) the probe finds no per-process accounting: suites run one at a time."""
    import json

    assert pipeline.auto_parallel() == 1
    facts = json.loads((machine / "probe.json").read_text())
    assert facts["per_process_memory"] is False and facts["cores"] >= 1


SLEEPER = """import json, os, signal, sys, time
out = os.path.join(os.environ["ROLLOUT_MATRIX_RESULTS"], sys.argv[1])
def interrupted(*_):
    open(out, "w").write("interrupted")
    sys.exit(2)
signal.signal(signal.SIGINT, interrupted)
open(out + ".env", "w").write(json.dumps({"prefix": sys.pycache_prefix,
                                          "no_bytecode": os.environ.get("PYTHONDONTWRITEBYTECODE"),
                                          "home": os.path.expanduser("~"), "venv": sys.prefix,
                                          "flashinfer": os.getenv("FLASHINFER_WORKSPACE_BASE", os.path.expanduser("~")),
                                          "xdg": os.environ.get("XDG_CACHE_HOME"),
                                          "inductor": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
                                          "vllm": os.environ.get("VLLM_CACHE_ROOT", ""),
                                          "triton": os.environ.get("TRITON_CACHE_DIR", ""),
                                          "cuda": os.environ.get("CUDA_CACHE_PATH", "")}))
time.sleep(120)
open(out, "w").write("slept")
"""


def test_stop_ends_the_running_step_by_its_recorded_group_and_starts_no_other(
        tmp_path: Path, locked: Matrix, machine: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``gpuenv stop``: the running step gets SIGINT through the process group it recorded (its handler
    writes its result, as pytest writes JUnit on Ctrl-C), the next step never starts, and a process
    running the very same command outside the batch lives on (nothing is matched by name). The steps
    keep their bytecode in the machine's cache, not in the checkout, and what they build at run time in a home
    of their entry's."""
    import json
    import threading
    import time

    from rollout_matrix.gpu import stop

    for name in ("FLASHINFER_WORKSPACE_BASE", "VLLM_CACHE_ROOT", "TRITON_CACHE_DIR", "CUDA_CACHE_PATH"):
        monkeypatch.setenv(name, str(tmp_path / "shared-by-the-machine"))  # a machine's setting for all users
    entry = locked.get("tiny-2.31.0")
    tiny_bundle(locked, tmp_path)
    checkout = locked.path.parent
    (checkout / "sleeper.py").write_text(SLEEPER)
    results = machine / "results" / entry.name
    results.mkdir(parents=True, exist_ok=True)
    outsider = subprocess.Popen([sys.executable, "sleeper.py", "outside.txt"], cwd=checkout,
                                env={**os.environ, "ROLLOUT_MATRIX_RESULTS": str(tmp_path)})
    codes: list[int] = []
    steps = [f"{entry.name}=sleeper.py first.txt", f"{entry.name}=sleeper.py second.txt"]
    runner = threading.Thread(target=lambda: codes.append(pipeline.pipeline(steps, pipeline.Plan(wait=5), [])))
    runner.start()
    try:
        deadline = time.monotonic() + 120
        while not (results / "first.txt.env").is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [m.parent for m in stop.markers()] == [results]
        assert stop.stop(grace=20) == [entry.name]
        runner.join(timeout=60)
        assert codes == [1]
        assert (results / "first.txt").read_text() == "interrupted"
        assert not (results / "second.txt.env").exists(), "a step started after stop"
        assert stop.markers() == []
        assert outsider.poll() is None, "stop hit a process outside the batch"
    finally:
        outsider.kill()
        outsider.wait()
    env = json.loads((results / "first.txt.env").read_text())
    assert env["prefix"] == str(machine / "pycache") and not env["no_bytecode"]  # even where the caller's env sets it
    assert list((machine / "pycache").rglob("*.pyc")), "no bytecode was cached"
    assert not list(checkout.rglob("__pycache__"))
    # run-time builds (flashinfer's JIT reads FLASHINFER_WORKSPACE_BASE, else ~) stay in the entry's own
    # home, where no other entry reads them
    assert Path(env["venv"]).parent == machine / "envs" and Path(env["home"]) != Path.home()
    for key in ("home", "flashinfer", "xdg", "inductor", "vllm", "triton", "cuda"):
        assert Path(env[key]).is_relative_to(machine / "homes" / entry.name), (key, env[key])
    assert stop.stop(grace=1) == []  # nothing left to stop: one line, no error


def test_stop_reaches_every_step_of_one_entry_running_side_by_side(tmp_path: Path, locked: Matrix,
                                                                     machine: Path) -> None:
    """Two scripts of one entry at once (``--parallel 2``) each record their own process group, so
    ``gpuenv stop`` interrupts both. With one ``running.json`` per entry, the second step's group replaced
    the first one's, and the first step ran on through the stop."""
    import threading
    import time

    from rollout_matrix.gpu import stop

    entry = locked.get("tiny-2.31.0")
    tiny_bundle(locked, tmp_path)
    (locked.path.parent / "sleeper.py").write_text(SLEEPER)
    results = machine / "results" / entry.name
    codes: list[int] = []
    steps = [f"{entry.name}=sleeper.py one.txt", f"{entry.name}=sleeper.py two.txt"]
    runner = threading.Thread(target=lambda: codes.append(pipeline.pipeline(steps, pipeline.Plan(parallel=2, wait=5), [])))
    runner.start()
    deadline = time.monotonic() + 120
    while len(stop.markers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(stop.markers()) == 2, "each running step records its own process group"
    while not all((results / f"{n}.txt.env").is_file() for n in ("one", "two")) and time.monotonic() < deadline:
        time.sleep(0.2)  # both interpreters are up, their SIGINT handlers set
    assert stop.stop(grace=20) == [entry.name]
    runner.join(timeout=60)
    assert codes == [1]
    assert [(results / f"{n}.txt").read_text() for n in ("one", "two")] == ["interrupted", "interrupted"]
    assert stop.markers() == []


def test_wait_holds_the_call_until_the_background_pipeline_ends(tmp_path: Path, locked: Matrix,
                                                                 machine: Path) -> None:
    """``gpuenv wait``, as a hold runs it after the last part (a call in flight keeps the machine; on
    2026-12-03 a 30 s pause between calls lost three running suites): through the real CLI and a
    detached pipeline, it says "still running" (exit 3) at ``--max``, returns once the pipeline ended
    (exit 0), and tells a pipeline killed mid-step (exit 1) from one still running."""
    import json
    import signal
    import time

    from rollout_matrix.gpu import waiting

    entry = locked.get("tiny-2.31.0")
    tiny_bundle(locked, tmp_path)
    checkout = locked.path.parent
    (checkout / "nap.py").write_text("import sys, time\ntime.sleep(float(sys.argv[1]))\n")

    def gpuenv(*args: str) -> subprocess.CompletedProcess:
        return run_gpuenv(checkout, machine, *args)

    no_pipeline = gpuenv("wait", "--max", "1")
    assert no_pipeline.returncode == 2 and "no pipeline has run" in no_pipeline.stderr
    assert gpuenv("pipeline", "--background", "--wait", "60", f"{entry.name}=nap.py 6").returncode == 0
    early = gpuenv("wait", "--max", "1")
    assert early.returncode == waiting.RUNNING and "still running after 1s" in early.stdout, early.stdout
    t0 = time.monotonic()
    done = gpuenv("wait", "--max", "120")
    assert done.returncode == waiting.ENDED and "1 of 1 steps passed" in done.stdout, done.stdout
    assert time.monotonic() - t0 < 60, "wait slept well past the pipeline's end"

    assert gpuenv("pipeline", "--background", "--wait", "60", f"{entry.name}=nap.py 120").returncode == 0
    state = json.loads((machine / "logs" / waiting.STATE).read_text())
    assert gpuenv("wait", "--max", "2").returncode == waiting.RUNNING
    os.kill(state["pid"], signal.SIGKILL)
    try:
        gone = gpuenv("wait", "--max", "60")
        assert gone.returncode == waiting.GONE and "gone without ending" in gone.stdout, gone.stdout
    finally:
        gpuenv("stop", "--grace", "5")  # the orphaned step, by the group it recorded


def test_receive_and_wait_bring_back_what_finished_in_the_same_call(tmp_path: Path, locked: Matrix,
                                                                    machine: Path) -> None:
    """``receive PART --collect OUT`` and ``wait --collect OUT``: each call of a hold brings back the
    results that changed (a machine lost mid-suite took two suites' results with it on 2026-12-05, its
    calls having no ``collect``), ``receive`` keeps what is complete as its last line, and a call with
    nothing new brings back no file."""
    import json
    import tarfile

    entry = locked.get("tiny-2.31.0")
    checkout = locked.path.parent
    (checkout / "nap.py").write_text("import sys, time\ntime.sleep(float(sys.argv[1]))\n")
    parts = sorted(tiny_bundle(locked, tmp_path, receive=False).iterdir())
    assert [p.name for p in parts] == ["part-000", "part-001"]

    def gpuenv(*args: str) -> subprocess.CompletedProcess:
        return run_gpuenv(checkout, machine, *args)

    def archived(out: Path) -> list[str] | None:
        if not (out / "gpu-results.tgz").exists():
            return None
        with tarfile.open(out / "gpu-results.tgz") as tar:
            return tar.getnames()

    (tmp_path / "a-file").write_text("")
    unwritable = gpuenv("receive", str(parts[0]), "--collect", str(tmp_path / "a-file"))
    assert unwritable.returncode == 2 and "cannot write gpu-results.tgz" in unwritable.stderr, unwritable.stderr
    assert "complete: none; still missing chunks" in unwritable.stdout, "the part was not received all the same"
    first = gpuenv("receive", str(parts[0]), "--collect", str(tmp_path / "call-1"))
    assert first.returncode == 0 and first.stdout.splitlines()[-1].endswith(
        f"still missing chunks: {entry.name} {len(json.loads((parts[0] / MANIFEST).read_text())['chunks'])} "
        f"(in {parts[0].parent.name}/part-001)"), first.stdout  # what to send next: the tiny bundle's part after 000
    assert archived(tmp_path / "call-1") is not None  # the first collect of a machine always writes
    assert gpuenv("pipeline", "--background", "--wait", "60", f"{entry.name}=nap.py 0").returncode == 0
    rest = gpuenv("receive", *(str(p) for p in parts[1:]), "--collect", str(tmp_path / "call-2"))
    assert rest.returncode == 0 and rest.stdout.splitlines()[-1].endswith(f"complete: {entry.name}"), rest.stdout
    done = gpuenv("wait", "--max", "120", "--collect", str(tmp_path / "call-3"))
    assert done.returncode == 0 and "1 of 1 steps passed" in done.stdout, done.stdout
    names = archived(tmp_path / "call-3")
    assert names is not None and "gpu-logs/pipeline.log" in names, names
    again = gpuenv("wait", "--max", "5", "--collect", str(tmp_path / "call-4"))
    assert again.returncode == 0 and archived(tmp_path / "call-4") is None, again.stdout
    assert "nothing new" in again.stdout.splitlines()[-1]


def test_a_pipeline_on_a_machine_without_the_bundle_is_refused_at_once(tmp_path: Path, locked: Matrix,
                                                                       machine: Path) -> None:
    """A machine that went back comes fresh: a pipeline there, in the foreground or detached, says in one
    line that no bundle lists the entry (exit 2) instead of waiting ``--wait`` seconds of device time,
    and one whose part-000 is here is accepted. ``receive`` ends with a line of what is complete and
    what still misses chunks (a hold reads only that last line of each part's call), and on a machine
    without any part-000 (one that replaced a lost machine mid-hold) with a line that says so."""
    import json
    import time

    entry = locked.get("tiny-2.31.0")
    checkout = locked.path.parent
    (checkout / "nap.py").write_text("import sys, time\ntime.sleep(float(sys.argv[1]))\n")

    def gpuenv(*args: str) -> subprocess.CompletedProcess:
        return run_gpuenv(checkout, machine, *args)

    for background in ([], ["--background"]):
        t0 = time.monotonic()
        refused = gpuenv("pipeline", *background, "--wait", "120", f"{entry.name}=nap.py 0")
        assert refused.returncode == 2 and time.monotonic() - t0 < 60, refused.stderr
        assert refused.stderr.count("\n") == 1 and f"no bundle on this machine lists {entry.name}" in refused.stderr
        assert "none, a fresh machine" in refused.stderr and "part-000" in refused.stderr
    tiny_bundle(locked, tmp_path, receive=False)
    empty = run_gpuenv(checkout, tmp_path / "fresh-machine", "status")
    assert empty.stdout.splitlines()[-1].endswith("it is a fresh one (the last may have been taken back, and its "
                                                  "state with it); send part-000 and start the pipeline again")
    # part-000 went to a lost machine; the chunks after it came to this one, as parts 001-003 (a part is a
    # folder of chunks; receive moves them, so these are copies)
    chunks = sorted(c for p in sorted((tmp_path / "bundle").iterdir())[1:] for c in p.iterdir())
    assert len(chunks) >= 3, "the test needs three chunks after part-000"
    later = [tmp_path / "lost" / f"part-00{n}" for n in (1, 2, 3)]
    for n, chunk in enumerate(chunks):
        later[min(n, 2)].mkdir(parents=True, exist_ok=True)
        shutil.copyfile(chunk, later[min(n, 2)] / chunk.name)
    for part in (later[2], later[0], later[1]):
        fresh = run_gpuenv(checkout, tmp_path / "fresh-machine", "receive", str(part))
        assert fresh.returncode == 0 and not any(part.iterdir()), "its chunks are kept there all the same"
    assert fresh.stdout.splitlines()[-1].endswith(
        "send part-000 and start the pipeline again; kept here: lost/part-001 - lost/part-003, so go on from the "
        "first part not among them"), fresh.stdout
    first = gpuenv("receive", str(tmp_path / "bundle" / "part-000"))  # the manifest only
    assert first.returncode == 0
    chunks = len(json.loads((tmp_path / "bundle" / "part-000" / "bundle.json").read_text())["chunks"])
    parts = sorted((tmp_path / "bundle").iterdir())
    assert [p.name for p in parts] == ["part-000", "part-001"]
    assert chunks and first.stdout.splitlines()[-1].endswith(
        f"complete: none; still missing chunks: {entry.name} {chunks} (in bundle/part-001)")  # what to send next
    assert pipeline.check_received([f"{entry.name}=nap.py 0"]) is None  # the chunks may follow
    rest = gpuenv("receive", *(str(p) for p in parts[1:]))
    assert rest.returncode == 0 and rest.stdout.splitlines()[-1].endswith(f"complete: {entry.name}")


def test_wheels_the_machine_has_installed_travel_as_kits_and_come_back_exact(
        tmp_path: Path, locked: Matrix, machine: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``bundle --borrow``: a lock-exact venv lends its files (as the H200's python3 lends torch):
    every wheel it holds travels as a kit, far smaller than the wheels; the machine rebuilds each wheel
    from the installed files and the venv equals the lock. A changed installed file fails the build in
    one line (no venv left) and is refused at receive, as is a machine without the distributions.
    Wheels under 1 MiB are not borrowed unless asked (``borrow_min_bytes``)."""
    import json

    from rollout_matrix.bundles import borrow

    entry = locked.get("tiny-2.31.0")
    first = make_bundle(locked, [entry], entry.python, tmp_path / "plain", part_mib=7, payload="zstd",
                        cache=tmp_path / "cache", progress=lambda line: None)
    store.receive(sorted((tmp_path / "plain").iterdir()))
    donor_env = install.install(entry.name, jobs=2)
    donor = donor_env / "lib" / f"python{entry.python}" / "site-packages"
    (tmp_path / "inventory.json").write_text(json.dumps(borrow.inventory([str(donor)])))

    # By default a wheel under borrow.MIN_WHEEL_BYTES (1 MiB) travels whole, and tiny's wheels are all
    # smaller (requests and its dependencies): nothing is borrowed. With no floor, all of them are.
    default = make_bundle(locked, [entry], entry.python, tmp_path / "default", part_mib=7, payload="zstd",
                          cache=tmp_path / "cache", progress=lambda line: None,
                          borrow_from=tmp_path / "inventory.json")
    assert {f.payload for f in default.entries[entry.name].files} == {"zstd"}

    monkeypatch.setattr(store, "ROOT", tmp_path / "machine2")  # a machine holding nothing of the first bundle
    lines: list[str] = []
    kits = make_bundle(locked, [entry], entry.python, tmp_path / "kits", part_mib=7, payload="zstd",
                       cache=tmp_path / "cache", progress=lines.append, borrow_from=tmp_path / "inventory.json",
                       borrow_min_bytes=0)
    files = kits.entries[entry.name].files
    assert {f.payload for f in files} == {borrow.KIT} and len(files) == len(first.entries[entry.name].files)
    assert all(f.lent_bytes > 0 for f in files)
    assert sum(f.size for f in files) < sum(f.size for f in first.entries[entry.name].files) / 3
    assert all("the machine has its files" in line for line in lines if ".whl" in line)

    monkeypatch.setenv(borrow.SEARCH_ENV, str(tmp_path / "empty"))
    with pytest.raises(UserError, match="is not installed where its files were to come from"):
        store.receive([tmp_path / "kits" / "part-000"])
    monkeypatch.setenv(borrow.SEARCH_ENV, str(donor))
    store.receive(sorted((tmp_path / "kits").iterdir()))
    env = install.install(entry.name, jobs=2)
    assert (env / ".lock-exact").is_file() and env != donor_env

    shutil.rmtree(env)
    victim = donor / "requests" / "__init__.py"
    victim.write_text(victim.read_text() + "# changed\n")
    with pytest.raises(UserError, match=r"requests-2\.31\.0-py3-none-any\.whl: this machine's .*requests/__init__\.py "
                                        r"differs from the wheel's; make the bundle without --borrow"):
        install.install(entry.name, jobs=2)
    assert not env.exists()
    with pytest.raises(UserError, match=r"requests/__init__\.py changed since it was installed"):
        store.receive([tmp_path / "kits" / "part-000"])  # refused before any part arrives
