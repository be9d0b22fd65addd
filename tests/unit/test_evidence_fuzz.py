"""Property tests over what `record` and `report` read: generated run.json files (valid ones mutated field
by field, arbitrary JSON, arbitrary bytes), links and FIFOs in place of files, and folder names.

Whatever the input: `record` either writes exactly `<kind>-results/<entry>/` of an entry of matrix.yaml
or refuses with one line of a UserError class, and never touches anything else, inside the checkout or
beside it; `report` never fails on committed evidence (every refusal is one UserError line), never
counts a folder for another entry or lock, and never prints the checkout's absolute path on its pages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rollout_matrix.errors import UserError
from rollout_matrix.evidence.committed import record
from rollout_matrix.evidence.report import GPU_PROVEN, VERDICTS, collect, write_report
from rollout_matrix.evidence.results import PASSED, REJECTED, RUN_JSON
from rollout_matrix.matrix.load import load_matrix
from rollout_matrix.matrix.model import Matrix

REPO = Path(__file__).resolve().parents[2]
MATRIX = load_matrix(REPO / "matrix.yaml")
ENTRIES = ["sglang-0.5.2", "sglang-0.5.3", "vllm-0.8.5.post1"]
LOCKS = {e: f"docker/locks/{e}-py3.12.txt" for e in ENTRIES}
SETTINGS = settings(max_examples=int(os.environ.get("ROLLOUT_MATRIX_FUZZ_EXAMPLES", "120")), deadline=None,
                    derandomize=not os.environ.get("ROLLOUT_MATRIX_FUZZ_RANDOM"),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
"""The same examples on every run (CI stays reproducible: a random FIFO once hung it); set
ROLLOUT_MATRIX_FUZZ_RANDOM=1 (and ROLLOUT_MATRIX_FUZZ_EXAMPLES=1000) to explore new ones."""


@pytest.fixture(scope="module")
def junit(tmp_path_factory: pytest.TempPathFactory, suite_runner) -> bytes:
    path, _ = suite_runner(tmp_path_factory.mktemp("suite"), cpu={"passed": 2}, gpu={"passed": 3, "skipped": 1})
    return path.read_bytes()


def lock(entry: str) -> dict[str, str]:
    return {"path": LOCKS[entry], "sha256": "sha256:" + hashlib.sha256((REPO / LOCKS[entry]).read_bytes()).hexdigest()}


def valid_run(entry: str, kind: str) -> dict:
    return {"schema": 2, "entry": entry, "kind": kind, "environment": "bundle", "started": "2026-11-29T10:00:00+00:00",
            "seconds": 12.5, "exit_code": 0, "build_error": None, "shim": None, "image": None, "lock": lock(entry),
            "machine": {"gpu_names": ["NVIDIA H200"], "gpu_count": 1, "torch": "2.8.0"}, "pytest_args": []}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)
names = st.sampled_from([*ENTRIES, "sglang-9.9.9", "../docs", ".", "", "..", "/tmp/x", "docs", "a/b", "x\x00",
                         "sglang-0.5.2/../../docs", "SGLANG-0.5.2"]) | st.text(max_size=20)
entry_values = names | json_values


@st.composite
def run_files(draw: st.DrawFn) -> dict[str, object]:
    """run.json as bytes (a valid run with some fields replaced, any JSON, or any bytes), and for each of
    the three files: its bytes, a link to a file outside, a FIFO, a folder, or nothing."""
    base = valid_run(draw(st.sampled_from(ENTRIES)), draw(st.sampled_from(["cpu", "gpu"])))
    how = draw(st.sampled_from(["valid", "valid", "mutated", "mutated", "mutated", "json", "bytes"]))
    if how in ("valid", "mutated"):
        for field in draw(st.lists(st.sampled_from(sorted(base)), min_size=1, max_size=3, unique=True)) \
                if how == "mutated" else ():
            base[field] = draw(entry_values if field == "entry" else json_values)
        if how == "mutated" and draw(st.booleans()):
            base["entry"] = draw(names)
        data = json.dumps(base).encode()
    elif how == "json":
        data = json.dumps(draw(json_values)).encode()
    else:
        data = draw(st.binary(max_size=200))
    kinds = st.sampled_from(["file"] * 8 + ["link", "fifo", "folder", "missing"])
    return {"run.json": data, "kinds": {name: draw(kinds) for name in ("run.json", "junit.xml", "pytest.log")},
            "junit_ok": draw(st.sampled_from([True, True, True, False]))}


def tree(root: Path) -> dict[str, bytes]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = b"-> " + os.readlink(path).encode()
        elif path.is_file():
            out[rel] = path.read_bytes()
        elif path.is_dir():
            out[rel] = b"<dir>"
        else:
            out[rel] = b"<other>"
    return out


def lay(folder: Path, files: dict[str, object], junit: bytes, outside: Path) -> None:
    folder.mkdir(parents=True)
    contents = {"run.json": files["run.json"], "junit.xml": junit if files["junit_ok"] else b"<nope",
                "pytest.log": b"log\n"}
    for name, kind in files["kinds"].items():  # type: ignore[union-attr]
        path = folder / name
        if kind == "file":
            path.write_bytes(contents[name])
        elif kind == "link":
            (outside / name).write_bytes(contents[name])
            path.symlink_to(outside / name)
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "folder":
            path.mkdir()


def checkout(base: Path) -> tuple[Path, Path]:
    root, outside = base / "checkout", base / "outside"
    (root / "docker" / "locks").mkdir(parents=True)
    outside.mkdir()
    (outside / "sentinel").write_text("beside the checkout\n")
    for path in LOCKS.values():
        shutil.copy(REPO / path, root / path)
    (root / "docs").mkdir()
    (root / "docs" / "keep.md").write_text("keep\n")
    return root, outside


@SETTINGS
@given(files=run_files(), replace=st.booleans())
def test_record_writes_only_its_entrys_folder_or_refuses_in_one_line(junit: bytes, files: dict, replace: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root, outside = checkout(Path(tmp))
        source = Path(tmp) / "results" / "run"
        lay(source, files, junit, outside)
        before_root, before_outside, before_source = tree(root), tree(outside), tree(source)
        try:
            dest, evidence = record(source, root, set(MATRIX.entries), replace=replace)
        except UserError as exc:
            event(f"refused ({type(exc).__name__}, exit {exc.exit_code})")
            assert "\n" not in str(exc) and str(exc)
            assert tree(root) == before_root  # a refusal changes nothing, not even a staging folder
        else:
            event(f"recorded ({evidence.verdict})")
            assert evidence.entry in MATRIX.entries and evidence.kind in ("cpu", "gpu")
            assert dest == root / f"{evidence.kind}-results" / evidence.entry
            assert files["kinds"]["run.json"] == "file"  # a run.json that is not a regular file is never read
            changed = {k for k in set(tree(root)) ^ set(before_root)} | {
                k for k, v in tree(root).items() if before_root.get(k, v) != v}
            prefix = f"{evidence.kind}-results"
            assert all(k == prefix or k.startswith(f"{prefix}/{evidence.entry}") for k in changed), changed
            for name in ("junit.xml", "pytest.log"):  # links and FIFOs are never copied
                assert (dest / name).exists() == (files["kinds"][name] == "file")
        assert tree(outside) == before_outside and tree(source) == before_source


@st.composite
def evidence_folders(draw: st.DrawFn) -> list[tuple[str, str, dict[str, object]]]:
    """Committed folders: (kind, folder name, files), folder names from the entries and beyond."""
    folders = []
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["cpu", "gpu"]))
        name = draw(st.sampled_from([*ENTRIES, "sglang-9.9.9", "history", ".hidden"]))
        files = draw(run_files())
        if draw(st.booleans()):  # a good run of some entry, maybe in another's folder (a copy by hand)
            files["run.json"] = json.dumps(valid_run(draw(st.sampled_from(ENTRIES)), kind)).encode()
            files["kinds"]["run.json"] = "file"
        folders.append((kind, name, files))
    return folders


@SETTINGS
@given(folders=evidence_folders())
def test_report_counts_only_evidence_of_its_own_entry_and_lock(junit: bytes, folders: list) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root, outside = checkout(Path(tmp))
        for kind, name, files in folders:
            folder = root / f"{kind}-results" / name
            if not folder.exists():
                lay(folder, files, junit, outside)
        matrix: Matrix = dataclasses.replace(MATRIX, path=root / "matrix.yaml")
        rows = collect(matrix, root)
        for row in rows:
            assert row.verdict in VERDICTS
            if row.cpu or row.gpu:
                event(f"row: {row.verdict}")
            for e in (row.cpu, row.gpu):
                if e is None:
                    continue
                if e.verdict == REJECTED:
                    assert "\n" not in e.note and str(root) not in e.note
                else:  # counted: the folder's own entry, kind and lock, read from a regular run.json
                    assert e.run is not None and e.entry == row.entry.name == e.folder.name
                    assert e.run.lock == lock(row.entry.name)
                    assert (e.folder / RUN_JSON).is_file() and not (e.folder / RUN_JSON).is_symlink()
            if row.verdict == GPU_PROVEN:
                assert row.gpu is not None and row.gpu.verdict == PASSED
        _, written = write_report(matrix, root / "docs")
        page = written[0].read_text()
        assert str(root) not in page and str(Path(tmp)) not in page
        assert all(f"| `{name}` |" in page for name in matrix.entries)
