"""Bundles and their receiving side under bad input and faults, one test per class.

A real tiny lock (requests 2.31.0 and its dependencies, from PyPI) is bundled; the cache, the options,
the parts and the GPU machine's state are then damaged the ways a user or a transfer damages them.
Every refusal is one line, comes before any download where the input is known up front, and loses
nothing: no half bundle, no half manifest, good bundles still received and listed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rollout_matrix.bundles.bundle import MANIFEST, make_bundle
from rollout_matrix.errors import UserError
from rollout_matrix.gpu import install, pipeline, store
from rollout_matrix.locks.lockfile import read_lock
from rollout_matrix.locks.locking import lock_entry
from rollout_matrix.matrix.load import load_matrix
from rollout_matrix.matrix.model import Matrix

PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"
ENTRY = "tiny-2.31.0"


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory, pypi: None, tiny_engine_matrix) -> Matrix:
    root = tmp_path_factory.mktemp("repo")
    text = tiny_engine_matrix(PYTHON) + (
        "      - stack: cpu\n        torch: none\n        unavailable: \"pins a yanked release\"\n"
        "        releases:\n          \"2.0.0\": {}\n")
    (root / "matrix.yaml").write_text(text)
    matrix = load_matrix(root / "matrix.yaml")
    result = lock_entry(matrix.get(ENTRY), PYTHON, root / "docker" / "locks")
    assert result.ok, result.error
    return matrix


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, locked: Matrix) -> Path:
    """A cache that already holds the entry's wheels (one bundle made)."""
    cache = tmp_path_factory.mktemp("cache")
    make_bundle(locked, [locked.get(ENTRY)], PYTHON, tmp_path_factory.mktemp("first") / "b", part_mib=7,
                cache=cache, progress=lambda line: None)
    return cache


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bundle(locked: Matrix, out: Path, cache: Path, **kwargs: object):
    kwargs.setdefault("part_mib", 7)
    return make_bundle(locked, [locked.get(ENTRY)], PYTHON, out, cache=cache, progress=lambda line: None,
                       **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, locked: Matrix) -> Path:
    monkeypatch.setattr(store, "ROOT", tmp_path / "machine")
    monkeypatch.setattr(store, "CHECKOUT", locked.path.parent)
    monkeypatch.setattr(store, "_warned", set())
    return tmp_path / "machine"


# -- bundle: every wheel hashed, cached ones too --------------------------------------------------------


@pytest.mark.parametrize("payload", ["wheel", "zstd"])
def test_a_wheel_edited_in_the_cache_is_never_bundled(tmp_path: Path, locked: Matrix, payload: str,
                                                      machine: Path) -> None:
    cache = tmp_path / "cache"
    bundle(locked, tmp_path / "one", cache, payload=payload)
    edited = sorted((cache / "files").rglob("*.whl"))
    for wheel in edited:  # same size, other bytes: a wheel someone patched
        data = bytearray(wheel.read_bytes())
        data[-100] ^= 0xFF
        wheel.write_bytes(bytes(data))
    for stored in (cache / "zstd").glob("*.zst"):
        stored.write_bytes(stored.read_bytes()[:-10])  # and a payload cut short
    for chunk in (cache / "chunks").iterdir():
        chunk.write_bytes(b"x" * chunk.stat().st_size)  # and the chunk store overwritten
    manifest = bundle(locked, tmp_path / "two", cache, payload=payload)
    store.receive(sorted((tmp_path / "two").iterdir()))
    lock = read_lock(locked.path.parent / manifest.entries[ENTRY].lock)
    out = tmp_path / "wheels"
    out.mkdir()
    for record in manifest.entries[ENTRY].files:
        assert f"sha256:{record.wheel_sha256}" in lock.hashes[record.name]
        wheel = install.reassemble(record, payload, out)  # checks payload sha256 and member digest
        if payload == "wheel":
            assert f"sha256:{sha256(wheel)}" in lock.hashes[record.name]
    allowed = {h for hs in lock.hashes.values() for h in hs}
    assert all(f"sha256:{sha256(w)}" in allowed for w in edited if not w.name.startswith("zstandard"))  # fetched anew
    tools = {t: sha256(next((tmp_path / "two" / "part-000").glob(t))) for t in manifest.tools}
    assert tools == {t: h for t, h in manifest.tools_sha256.items()}


# -- bundle: bad options refused before anything is downloaded ---------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"part_mib": 1}, "--part-mib 1: a part must hold at least 2 MiB and at most 1024 MiB"),
    ({"part_mib": 10_000_000}, "--part-mib 10000000: a part must hold at least 2 MiB and at most 1024 MiB"),
    ({"part_mib": 10**20}, "--part-mib 100000000000000000000: a part must hold"),
    ({"payload": "tar"}, "--payload 'tar': choose one of wheel, zstd"),
])
def test_bad_options_are_one_line_before_any_download(tmp_path: Path, locked: Matrix, kwargs: dict,
                                                      message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        bundle(locked, tmp_path / "out", tmp_path / "cache", **kwargs)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("out", ["a-file", "/proc/rollout-matrix-bundle", "not-empty", "/proc/self/x/y"])
def test_an_out_folder_that_cannot_take_the_bundle_is_refused_first(tmp_path: Path, locked: Matrix, out: str) -> None:
    target = tmp_path / out if not out.startswith("/") else Path(out)
    if out == "a-file":
        target.write_text("keep")
    if out == "not-empty":
        target.mkdir()
        (target / "keep").write_text("keep")
    with pytest.raises(UserError) as info:
        bundle(locked, target, tmp_path / "cache", payload="wheel")
    assert "\n" not in str(info.value) and str(target) in str(info.value)
    assert not (tmp_path / "cache").exists()  # nothing downloaded
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"cache", out} & {"a-file", "not-empty"})
    if out == "a-file":
        assert target.read_text() == "keep"


@pytest.mark.parametrize("garbage", ["not-utf8", "no-entries", "folder", "missing", "empty"])
def test_after_naming_no_bundle_is_one_line_before_any_download(tmp_path: Path, locked: Matrix, garbage: str) -> None:
    earlier = tmp_path / "earlier"
    manifest = earlier / "part-000" / MANIFEST
    if garbage != "missing":
        manifest.parent.mkdir(parents=True)
    if garbage == "not-utf8":
        manifest.write_bytes(b"\xff\xfe{}")
    elif garbage == "no-entries":
        manifest.write_text('{"format": 1, "chunks": {}}')
    elif garbage == "folder":
        manifest.mkdir()
    elif garbage == "empty":
        manifest.write_text("")
    with pytest.raises(UserError, match=r"^--after .*earlier: .*bundle\.json: .*; name the folder of a bundle"):
        bundle(locked, tmp_path / "out", tmp_path / "cache", payload="wheel", skip_from=[earlier])
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_an_unavailable_entry_says_so_instead_of_sending_the_user_to_lock(tmp_path: Path, locked: Matrix) -> None:
    with pytest.raises(UserError, match=r"^tiny-2\.0\.0 is marked unavailable in matrix\.yaml \(pins a yanked "
                                        r"release\): it has no lock and cannot be bundled; leave it out$"):
        make_bundle(locked, [locked.get(ENTRY), locked.get("tiny-2.0.0")], PYTHON, tmp_path / "out",
                    cache=tmp_path / "cache", payload="wheel", progress=lambda line: None)
    assert not (tmp_path / "cache").exists()


def test_part_000_keeps_to_part_mib_or_the_bundle_is_refused(tmp_path: Path, locked: Matrix, cache: Path) -> None:
    with pytest.raises(UserError, match=r"--part-mib 2: part-000 must carry the unpacking tools \(5\.\d MiB\) and the "
                                        r"manifest; pass --part-mib \d+ or more, or --payload wheel"):
        bundle(locked, tmp_path / "out", cache, part_mib=2, payload="zstd")
    manifest = bundle(locked, tmp_path / "ok", cache, part_mib=7, payload="zstd")
    for part in manifest.parts:
        assert sum(f.stat().st_size for f in (tmp_path / "ok" / part["name"]).iterdir()) <= 7 << 20


def test_an_interrupted_bundle_leaves_no_folder_and_no_staging(tmp_path: Path, locked: Matrix, cache: Path) -> None:
    def stop(line: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_bundle(locked, [locked.get(ENTRY)], PYTHON, tmp_path / "out", part_mib=7, cache=cache, progress=stop)
    assert list(tmp_path.iterdir()) == []


# -- gpuenv: manifests checked before they are stored; a damaged one never stops good bundles ------------


@pytest.fixture
def parts(tmp_path: Path, locked: Matrix, cache: Path) -> list[Path]:
    bundle(locked, tmp_path / "bundle", cache, payload="zstd")
    return sorted((tmp_path / "bundle").iterdir())


@pytest.mark.parametrize(("content", "message"), [
    (b"", "not JSON"),
    (b"{}", "not a bundle manifest of format 1: format is not 1"),
    (b'{"format": 1}', "created, python, payload, part_mib, entries, chunks, parts, tools missing"),
    (b"\xff", "not UTF-8 text"),
    (None, "is not a regular file"),
])
def test_a_damaged_manifest_is_refused_in_one_line_and_not_stored(tmp_path: Path, parts: list[Path], machine: Path,
                                                                   content: bytes | None, message: str) -> None:
    bad = tmp_path / "bad" / "part-000"
    bad.mkdir(parents=True)
    if content is None:
        (bad / MANIFEST).mkdir()
    else:
        (bad / MANIFEST).write_bytes(content)
    with pytest.raises(UserError, match=message) as info:
        store.receive([bad, *parts])  # the good parts after it are still received
    assert "\n" not in str(info.value)
    assert len(list((machine / "manifests").iterdir())) == 1  # the good one only
    assert store.missing_chunks(store.manifests()[ENTRY], ENTRY) == []


@pytest.mark.parametrize("damage", [b"", b"{not json", b'{"format": 1, "entries": {"../../x": {}}}'])
def test_a_stored_damaged_manifest_never_breaks_status_or_receive(parts: list[Path], machine: Path,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  damage: bytes) -> None:
    (machine / "manifests").mkdir(parents=True)
    (machine / "manifests" / "0000000000000000.json").write_bytes(damage)  # stored before manifests were checked
    store.receive(parts)
    store.status()
    out = capsys.readouterr().out
    assert out.count("0000000000000000.json") == 1  # one warning line, once
    assert f"{ENTRY}: " in out and "Traceback" not in out
    assert ENTRY in store.manifests()


def test_folders_named_like_manifests_or_chunks_and_a_damaged_tool_are_refused_the_rest_received(
        tmp_path: Path, parts: list[Path], machine: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(parts[0].parent, copy)
    tool = next((copy / "part-000").glob("*.whl"))
    tool.write_bytes(tool.read_bytes()[: tool.stat().st_size // 2])  # truncated in transfer
    (copy / "part-001" / ("a" * 64)).mkdir()  # a folder named like a chunk
    with pytest.raises(UserError, match=r"(not the tool wheel the manifest names|is not a regular file).*"
                                        r"\(and 1 more refusals above\)"):
        store.receive(sorted(copy.iterdir()))
    assert store.missing_chunks(store.manifests()[ENTRY], ENTRY) == []  # every good chunk arrived
    assert not list((machine / "tools").glob("zstandard*"))  # the damaged tool was not installed
    store.receive(parts[:1])  # the good part-000 afterwards installs it
    assert list((machine / "tools").glob("zstandard*"))


@pytest.mark.parametrize("out", ["/proc/rollout-matrix-collect", "a-file"])
def test_collect_where_it_cannot_write_is_one_line_and_leaves_nothing_half(tmp_path: Path, machine: Path,
                                                                           out: str) -> None:
    target = Path(out) if out.startswith("/") else tmp_path / out
    if out == "a-file":
        target.write_text("keep")
    with pytest.raises(UserError, match=r"^collect .*: cannot write gpu-results\.tgz there \(.*\); pass a writable"):
        pipeline.collect(target)
    if out == "a-file":
        assert target.read_text() == "keep"


def test_collect_if_changed_writes_only_when_a_result_or_the_pipeline_changed(
        tmp_path: Path, machine: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hold's calls bring back an archive only when there is something new to bring (each returned
    file costs device time): a mode's JUnit, a run.json, the pipeline's state; a growing pytest.log is
    not, until ``REFRESH_S`` has passed since the last archive."""
    import tarfile

    results = machine / "results" / "tiny-2.31.0"
    results.mkdir(parents=True)
    (results / "pytest.log").write_text("collected 30 items\n")

    def collected(call: str) -> list[str] | None:
        out = tmp_path / call
        pipeline.collect(out, if_changed=True)
        if not (out / "gpu-results.tgz").exists():
            return None
        with tarfile.open(out / "gpu-results.tgz") as tar:
            return sorted(n for n in tar.getnames() if n.startswith("gpu-results/tiny"))

    assert collected("first") == ["gpu-results/tiny-2.31.0", "gpu-results/tiny-2.31.0/pytest.log"]
    assert collected("same") is None
    with (results / "pytest.log").open("a") as log:
        log.write("test_generate[graphs] PASSED\n")
    assert collected("log-grew") is None
    (results / "junit-graphs.xml").write_text("<testsuite/>")
    assert "gpu-results/tiny-2.31.0/junit-graphs.xml" in collected("a-mode-ended")
    assert collected("again") is None
    pipeline.collect(tmp_path / "plain")  # without the option: always written
    assert (tmp_path / "plain" / "gpu-results.tgz").exists()
    (results / "running-1.json").write_text('{"pgid": 1}')  # the eager process started
    assert collected("a-mode-started") is not None
    (machine / "logs" / "pipeline.json").write_text('{"ended": "now"}')
    assert collected("the-pipeline-ended") is not None
    monkeypatch.setattr(pipeline, "REFRESH_S", 0)
    assert collected("refresh") is not None


def test_a_file_that_goes_while_collect_archives_is_not_a_failure(tmp_path: Path, machine: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A step removes its running-<pgid>.json when it ends; if that happens while ``collect`` reads the folder,
    the archive is made again (it was reported as "cannot write ... pass a writable folder")."""
    import tarfile

    marker = machine / "results" / "tiny-2.31.0" / "running-1.json"
    marker.parent.mkdir(parents=True)
    marker.write_text('{"pgid": 1}')
    add = tarfile.TarFile.add

    def add_while_the_step_ends(self, name, *args, **kwargs):
        if marker.exists():
            marker.unlink()
            raise FileNotFoundError(2, "No such file or directory", str(marker))
        return add(self, name, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "add", add_while_the_step_ends)
    pipeline.collect(tmp_path / "out")
    with tarfile.open(tmp_path / "out" / "gpu-results.tgz") as tar:
        assert "gpu-results/tiny-2.31.0" in tar.getnames() and "gpu-results/tiny-2.31.0/running-1.json" not in tar.getnames()


# -- gpuenv pipeline: misspelt entries at once, failed steps in the exit code ------------------------------


def gpuenv_cli(*args: str, cwd: Path, root: Path) -> subprocess.CompletedProcess[str]:
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": str(src), "ROLLOUT_MATRIX_GPU_ROOT": str(root)}
    return subprocess.run([sys.executable, "-m", "rollout_matrix.gpuenv", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


@pytest.mark.parametrize("background", [False, True])
def test_a_misspelt_entry_is_refused_at_once_and_no_name_becomes_a_path_unchecked(tmp_path: Path, locked: Matrix,
                                                                                  background: bool) -> None:
    """From the command line (the pipeline's own test, in test_bundle.py, calls it in-process): refused
    before any wait, also with --background, after the line naming the checkout; and install/test refuse
    a name matrix.yaml lacks before it becomes envs/<entry> or results/<entry>."""
    start = time.monotonic()
    proc = gpuenv_cli("pipeline", *(["--background"] if background else []), "tiny-2.31.O", ENTRY,
                      cwd=locked.path.parent, root=tmp_path / "machine")
    assert time.monotonic() - start < 30
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "gpuenv: error: not in matrix.yaml: tiny-2.31.O; name entries as `rollout-matrix " \
                                  "list` shows them"
    assert f"checkout {locked.path.parent}" in proc.stdout
    for command in ("test", "install"):
        for bad in ("../../etc", ".", ""):
            proc = gpuenv_cli(command, bad, cwd=locked.path.parent, root=tmp_path / "machine")
            assert proc.returncode == 2 and "not in matrix.yaml" in proc.stderr, proc.stderr
    assert not (tmp_path / "machine" / "envs").exists() or not any((tmp_path / "machine" / "envs").iterdir())


def test_a_state_folder_that_cannot_be_made_is_one_line(tmp_path: Path, locked: Matrix) -> None:
    proc = gpuenv_cli("status", cwd=locked.path.parent, root=Path("/proc/rollout-matrix-gpu"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("gpuenv: error: /proc/rollout-matrix-gpu: cannot hold the GPU machine's state "
                                   "(No such file or directory); point ROLLOUT_MATRIX_GPU_ROOT at a writable folder")
