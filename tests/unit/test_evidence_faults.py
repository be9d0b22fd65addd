"""Evidence that cannot be forged or turned against the checkout, one test per class of fault.

`record` takes a run's entry from run.json, which anyone can write: as a path it must never leave the
entry's evidence folder, follow a link, copy a huge file or name a release matrix.yaml lacks. `report`
reads committed folders, which anyone can copy: a folder counts only for the entry and the committed
lock its run.json names. Every refusal is one line with exit code 7 (EvidenceError) and changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rollout_matrix.errors import EvidenceError, UserError
from rollout_matrix.evidence.committed import committed, record
from rollout_matrix.evidence.report import EVIDENCE_REJECTED, GPU_PROVEN, collect, write_report
from rollout_matrix.evidence.results import MAX_BYTES, REJECTED, RunRecord
from rollout_matrix.matrix.load import load_matrix

REPO = Path(__file__).resolve().parents[2]
ENTRY = "sglang-0.5.2"
LOCK = f"docker/locks/{ENTRY}-py3.12.txt"


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (links as their target): what a refusal must not change."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            out[str(path.relative_to(root))] = f"-> {os.readlink(path)}".encode()
        elif path.is_file():
            out[str(path.relative_to(root))] = path.read_bytes()
    return out


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A checkout: the real matrix.yaml, the real locks of two releases, a docs/ folder, no evidence."""
    root = tmp_path / "checkout"
    (root / "docker" / "locks").mkdir(parents=True)
    shutil.copy(REPO / "matrix.yaml", root / "matrix.yaml")
    for name in (LOCK, "docker/locks/sglang-0.5.3-py3.12.txt"):
        shutil.copy(REPO / name, root / name)
    (root / "docs").mkdir()
    (root / "docs" / "keep.md").write_text("not evidence\n")
    return root


def lock_of(root: Path, path: str = LOCK) -> dict[str, str]:
    return {"path": path, "sha256": "sha256:" + hashlib.sha256((root / path).read_bytes()).hexdigest()}


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, suite_runner) -> tuple[Path, int]:
    return suite_runner(tmp_path_factory.mktemp("suite"), cpu={"passed": 3}, gpu={"passed": 5, "skipped": 1})


@pytest.fixture
def run(tmp_path: Path, checkout: Path, suite: tuple[Path, int]) -> Path:
    """A real passing GPU run of sglang-0.5.2 (real pytest JUnit), as results/ holds it."""
    junit, code = suite
    folder = tmp_path / "results" / ENTRY
    folder.mkdir(parents=True)
    shutil.copy(junit, folder / "junit.xml")
    (folder / "pytest.log").write_text("5 passed, 1 skipped\n")
    RunRecord(entry=ENTRY, kind="gpu", environment="bundle", started="2026-11-29T10:00:00+00:00", exit_code=code,
              lock=lock_of(checkout), machine={"gpu_names": ["NVIDIA H200"], "gpu_count": 1, "torch": "2.8.0"}
              ).write(folder)
    return folder


def set_field(folder: Path, **fields: object) -> None:
    raw = json.loads((folder / "run.json").read_text())
    raw.update(fields)
    (folder / "run.json").write_text(json.dumps(raw))


def known(root: Path) -> set[str]:
    return set(load_matrix(root / "matrix.yaml").entries)


def refused(run: Path, root: Path, match: str) -> None:
    """``record`` refuses with one EvidenceError line matching ``match`` and leaves the checkout as it was."""
    before = tree(root)
    with pytest.raises(EvidenceError, match=match) as info:
        record(run, root, known(root))
    assert "\n" not in str(info.value)
    assert tree(root) == before


# -- record: the entry becomes a path only as a name of matrix.yaml -----------------------------------------


@pytest.mark.parametrize("entry", ["../docs", ".", "", "..", "/tmp/elsewhere", f"{ENTRY}/../../docs",
                                   "sglang-0.5.2\x00", 5, ["sglang-0.5.2"], None, {"a": 1}])
def test_an_entry_that_is_not_an_entry_name_is_refused_before_it_is_a_path(run: Path, checkout: Path,
                                                                            entry: object) -> None:
    set_field(run, entry=entry)
    refused(run, checkout, r"run\.json: (entry .* is not an entry name|entry .* must be a string)")


def test_an_entry_not_in_matrix_yaml_is_refused(run: Path, checkout: Path) -> None:
    set_field(run, entry="sglang-9.9.9")
    refused(run, checkout, r"entry sglang-9\.9\.9 is not in matrix\.yaml; record runs of the matrix's entries only")


def test_record_cli_refuses_in_one_line_with_exit_7_and_a_missing_folder_with_2(run: Path, checkout: Path) -> None:
    set_field(run, entry="../docs")
    before = tree(checkout)
    cli = [sys.executable, "-m", "rollout_matrix.cli", "record"]
    proc = subprocess.run([*cli, str(run)], capture_output=True, text=True, cwd=checkout, timeout=120)
    assert proc.returncode == EvidenceError.exit_code == 7
    assert proc.stderr.splitlines() == [f"rollout-matrix: checkout {checkout} (matrix.yaml)",
                                        f"rollout-matrix: error: {run}/run.json: entry '../docs' is not an entry "
                                        "name (ENGINE-VERSION as `rollout-matrix list` shows them)"]
    missing = subprocess.run([*cli, "results/nothing"], capture_output=True, text=True, cwd=checkout, timeout=120)
    assert missing.returncode == UserError.exit_code and "no such results folder" in missing.stderr
    a_file = subprocess.run([*cli, str(run / "run.json")], capture_output=True, text=True, cwd=checkout, timeout=120)
    assert a_file.returncode == UserError.exit_code  # it said "no such results folder" of a file that is there
    assert a_file.stderr.splitlines()[-1] == f"rollout-matrix: error: {run}/run.json: is a file; pass the results " \
                                             f"folder that holds it ({run})"
    assert tree(checkout) == before


def test_record_of_several_runs_records_the_good_ones_and_names_the_bad(run: Path, checkout: Path) -> None:
    """`record --replace results/*/` (docs/ci.md, the GPU workflow) stopped at the first bad run: the
    runs after it were never tried, those before it were recorded. Each run is tried; the command then
    fails naming the bad ones, with their class's code."""
    bad = run.parent / "sglang-0.5.3"
    shutil.copytree(run, bad)
    set_field(bad, entry="../docs")
    proc = subprocess.run([sys.executable, "-m", "rollout_matrix.cli", "record", str(bad), str(run)],
                          capture_output=True, text=True, cwd=checkout, timeout=120)
    assert proc.returncode == EvidenceError.exit_code, proc.stderr
    assert proc.stderr.splitlines()[1:] == [
        f"rollout-matrix: error: {bad}/run.json: entry '../docs' is not an entry name (ENGINE-VERSION as "
        "`rollout-matrix list` shows them)",
        f"rollout-matrix: error: 1 of 2 runs not recorded ({bad}: see the lines above); the others were"]
    assert proc.stdout == f"{ENTRY}: gpu run, passed -> gpu-results/{ENTRY}\n"
    assert (checkout / "gpu-results" / ENTRY / "run.json").read_bytes() == (run / "run.json").read_bytes()


@pytest.mark.parametrize("out", ["", " "])
def test_report_with_an_empty_out_writes_nothing(checkout: Path, out: str) -> None:
    """`report --out "$UNSET"` wrote the committed docs/ pages, as if --out had not been given."""
    before = tree(checkout)
    proc = subprocess.run([sys.executable, "-m", "rollout_matrix.cli", "report", "--out", out],
                          capture_output=True, text=True, cwd=checkout, timeout=120)
    assert proc.returncode == UserError.exit_code, proc.stderr
    assert proc.stderr.splitlines()[1] == ("rollout-matrix: error: --out is empty; pass a directory, or leave --out "
                                           "out to write the committed docs/ pages")
    assert tree(checkout) == before


# -- record: regular files only, within their limits -----------------------------------------------------------


@pytest.mark.parametrize("name", ["pytest.log", "junit.xml", "run.json"])
def test_a_linked_file_is_never_copied(run: Path, checkout: Path, tmp_path: Path, name: str) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes((run / name).read_bytes())  # even a link to a valid file is refused
    (run / name).unlink()
    (run / name).symlink_to(secret)
    refused(run, checkout, rf"{name}: is a symbolic link; results hold regular files only")


def test_a_fifo_is_refused_without_waiting_for_a_writer(run: Path, checkout: Path) -> None:
    (run / "pytest.log").unlink()
    os.mkfifo(run / "pytest.log")
    refused(run, checkout, r"pytest\.log: is not a regular file")


@pytest.mark.parametrize("name", ["run.json", "junit.xml", "pytest.log"])
def test_a_file_over_its_limit_is_refused(run: Path, checkout: Path, name: str) -> None:
    with open(run / name, "ab") as fh:  # sparse: the size is what counts, not the disk it takes
        fh.truncate(MAX_BYTES[name] + 1)
    refused(run, checkout, rf"{name}: {MAX_BYTES[name] + 1} bytes, over the {MAX_BYTES[name] >> 20} MiB")


@pytest.mark.parametrize("target", ["cpu-results", "gpu-results", f"gpu-results/{ENTRY}"])
def test_a_linked_evidence_folder_is_never_written_through(run: Path, checkout: Path, tmp_path: Path,
                                                           target: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (checkout / target).parent.mkdir(parents=True, exist_ok=True)
    (checkout / target).symlink_to(outside)
    if target == "cpu-results":  # not the folder this run goes to: recorded, and nothing lands outside
        record(run, checkout, known(checkout))
    else:
        refused(run, checkout, "is not a folder")
    assert list(outside.iterdir()) == []


# -- record and report: the lock -------------------------------------------------------------------------------


@pytest.mark.parametrize(("lock", "why"), [
    ("changed", r"was made from another docker/locks/sglang-0\.5\.2-py3\.12\.txt than the committed one"),
    ("borrowed", r"names 'docker/locks/sglang-0\.5\.3-py3\.12\.txt', which is not a lock of sglang-0\.5\.2"),
    ("gone", r"was made from docker/locks/sglang-0\.5\.2-py3\.11\.txt, which is not in this checkout"),
    ("none", r"records no lock \(an unlocked build\)"),
])
def test_a_run_of_another_lock_is_refused_and_good_evidence_stays(run: Path, checkout: Path, lock: str,
                                                                  why: str) -> None:
    dest, _ = record(run, checkout, known(checkout))
    good = tree(dest)
    value = {
        "changed": {**lock_of(checkout), "sha256": "sha256:" + "0" * 64},
        "borrowed": lock_of(checkout, "docker/locks/sglang-0.5.3-py3.12.txt"),
        "gone": {"path": "docker/locks/sglang-0.5.2-py3.11.txt", "sha256": "sha256:" + "1" * 64},
        "none": None,
    }[lock]
    set_field(run, lock=value)
    with pytest.raises(EvidenceError, match=why):
        record(run, checkout, known(checkout), replace=True)
    assert tree(dest) == good


def test_record_replaces_a_folder_whole_and_leaves_no_staging(run: Path, checkout: Path) -> None:
    dest, first = record(run, checkout, known(checkout))
    (run / "pytest.log").write_text("second run\n")
    dest2, second = record(run, checkout, known(checkout))
    assert dest2 == dest and (dest / "pytest.log").read_text() == "second run\n"
    assert sorted(p.name for p in dest.parent.iterdir()) == [ENTRY]  # no .new / .old folders left
    assert first.verdict == second.verdict == "passed"


# -- report: a folder counts only for the entry and the lock its run.json names ---------------------------


def test_a_copied_folder_does_not_prove_another_release(run: Path, checkout: Path) -> None:
    record(run, checkout, known(checkout))
    shutil.copytree(checkout / "gpu-results" / ENTRY, checkout / "gpu-results" / "sglang-0.5.3")
    rows = {r.entry.name: r for r in collect(load_matrix(checkout / "matrix.yaml"), checkout)}
    assert rows[ENTRY].verdict == GPU_PROVEN
    assert rows["sglang-0.5.3"].verdict == EVIDENCE_REJECTED
    assert rows["sglang-0.5.3"].notes == [
        "GPU evidence rejected: gpu-results/sglang-0.5.3/run.json: is the run of 'sglang-0.5.2', not of "
        "sglang-0.5.3; evidence is moved by `rollout-matrix record`, never by copying folders"]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("machine", {"gpu_names": 5}, "machine a dict must be null or a mapping with gpu_names a list of strings"),
    ("lock", "str", "lock 'str' must be null or give path"),
    ("started", 20261129, "started 20261129 must be an ISO date and time"),
    ("seconds", "slow", "seconds 'slow' must be a number of seconds or null"),
    ("exit_code", True, "exit_code True must be an integer or null"),
    ("pytest_args", [1], "pytest_args a list must be a list of strings"),
    ("kind", "cpu", "holds a cpu run, not a gpu one"),
])
def test_committed_evidence_of_the_wrong_shape_is_rejected_in_one_line(run: Path, checkout: Path, field: str,
                                                                      value: object, message: str) -> None:
    dest, _ = record(run, checkout, known(checkout))
    set_field(dest, **{field: value})
    evidence = committed(checkout, "gpu")[ENTRY]
    assert evidence.verdict == REJECTED and "\n" not in evidence.note
    assert evidence.note.startswith(f"gpu-results/{ENTRY}/run.json: ") and message in evidence.note
    # and the pages are still written, with the row saying why
    rows, written = write_report(load_matrix(checkout / "matrix.yaml"), checkout / "docs")
    assert next(r for r in rows if r.entry.name == ENTRY).verdict == EVIDENCE_REJECTED
    assert str(checkout) not in written[0].read_text()


def test_a_committed_lock_changed_since_the_run_rejects_its_evidence(run: Path, checkout: Path) -> None:
    record(run, checkout, known(checkout))
    with open(checkout / LOCK, "a") as fh:
        fh.write("# regenerated\n")
    evidence = committed(checkout, "gpu")[ENTRY]
    assert evidence.verdict == REJECTED and "than the committed one" in evidence.note


def test_report_cli_warns_per_rejected_folder_and_strict_refuses_writing_nothing(run: Path, checkout: Path) -> None:
    record(run, checkout, known(checkout))
    shutil.copytree(checkout / "gpu-results" / ENTRY, checkout / "gpu-results" / "sglang-0.5.3")
    cli = [sys.executable, "-m", "rollout_matrix.cli", "report"]
    proc = subprocess.run(cli, capture_output=True, text=True, cwd=checkout / "docs", timeout=120)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 0 and lines[0] == f"rollout-matrix: checkout {checkout} (matrix.yaml)"
    assert lines[1:] == ["rollout-matrix: warning: gpu-results/sglang-0.5.3/run.json: is the run of 'sglang-0.5.2', "
                         "not of sglang-0.5.3; evidence is moved by `rollout-matrix record`, never by copying "
                         "folders; not counted"]
    page = (checkout / "docs" / "compatibility.md").read_bytes()

    strict = subprocess.run([*cli, "--strict", "--out", "strict"], capture_output=True, text=True, cwd=checkout,
                            timeout=120)
    assert strict.returncode == EvidenceError.exit_code
    assert strict.stderr.splitlines()[-1].startswith("rollout-matrix: error: gpu-results/sglang-0.5.3/run.json: ")
    assert strict.stderr.splitlines()[-1].endswith("; nothing written") and "Traceback" not in strict.stderr
    assert not (checkout / "strict").exists() and (checkout / "docs" / "compatibility.md").read_bytes() == page


# -- report: its pages are whole or untouched ------------------------------------------------------------


@pytest.mark.parametrize("out", ["/proc/rollout-matrix-report", "/proc/self", "html-is-a-directory"])
def test_pages_that_cannot_be_written_leave_the_old_ones_whole(checkout: Path, out: str) -> None:
    """A folder that cannot be made, one that exists but takes no file (even for root), and a directory
    where a page goes: one line, and the pages already there are untouched (both, not just one)."""
    matrix = load_matrix(checkout / "matrix.yaml")
    docs = checkout / "docs"
    write_report(matrix, docs)
    if out == "html-is-a-directory":
        (docs / "compatibility.html").unlink()
        (docs / "compatibility.html").mkdir()
    before = tree(docs)
    with pytest.raises(UserError) as info:
        write_report(matrix, docs if out == "html-is-a-directory" else Path(out))
    message = str(info.value)
    assert "\n" not in message and any(s in message for s in ("nothing written", "cannot be created"))
    assert tree(docs) == before
    assert not [p for p in docs.iterdir() if p.name.startswith(".")]  # no temporary file left
