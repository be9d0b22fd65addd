"""Lock paths, header round trip, staleness and content checks: real files in tmp_path, no network."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from rollout_matrix.errors import UserError
from rollout_matrix.locks.content import content_problems
from rollout_matrix.locks.drift import Change, diff_versions
from rollout_matrix.locks.lockfile import (
    PLATFORM,
    LockHeader,
    file_fits,
    lock_path,
    locks_dir_for,
    parse_body,
    parse_pins,
    preference_order,
    read_lock,
    render_body,
    render_lock,
    split_lock,
    target_tags,
    wheel_rank,
)
from rollout_matrix.locks.locking import (
    check_locks,
    exclude_newer_source,
    inputs_hash,
    normalize_date,
    release_cutoff,
)
from rollout_matrix.locks.pypi import format_time
from rollout_matrix.matrix.load import load_matrix
from rollout_matrix.matrix.model import Matrix

MATRIX = """\
schema: 1
test_requirements:
  - pytest==8.3.5
stacks:
  cu128:
    cuda: "12.8"
    base_image: nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04
    python: "3.10"
engines:
  demo:
    package: demo-engine
    requirement: "demo-engine[srt]=={version}"
    bands:
      - torch: "2.8.0"
        stack: cu128
        releases:
          "1.0.0": {demo-kernel: "0.3.5"}
          "1.0.1": {demo-kernel: "0.3.5", exclude_newer: "2025-09-13"}
"""

BODY = """\
demo-engine==1.0.0 \\
    --hash=sha256:aaaa \\
    --hash=sha256:bbbb
    # via -r -
demo-kernel==0.3.5 \\
    --hash=sha256:cccc
    # via demo-engine
nvidia-cuda-runtime-cu12==12.8.90 \\
    --hash=sha256:dddd
    # via torch
Pytest==8.3.5 \\
    --hash=sha256:eeee
torch==2.8.0 \\
    --hash=sha256:ffff
    # via
    #   -r -
    #   demo-engine
"""


@pytest.fixture
def matrix(tmp_path: Path) -> Matrix:
    path = tmp_path / "matrix.yaml"
    path.write_text(MATRIX)
    return load_matrix(path)


def write_lock(matrix: Matrix, name: str, body: str = BODY, python: str | None = None,
               **overrides: str) -> Path:
    """A lock as lock_entry writes it, without running uv."""
    entry = matrix.get(name)
    python = python or entry.python
    fields = dict(entry=entry.name, python=python, platform=PLATFORM, exclude_newer="2025-09-12T00:00:00Z",
                  exclude_newer_package="demo-engine=2025-09-12T00:00:05Z",
                  exclude_newer_source=exclude_newer_source(entry), requirements=tuple(entry.requirements()),
                  uv_version="0.0.0", inputs_hash=inputs_hash(entry, python))
    fields.update(overrides)
    path = lock_path(entry, python, locks_dir_for(matrix))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_lock(LockHeader(**fields), body))
    return path


def test_lock_path_names_entry_and_python(matrix: Matrix) -> None:
    entry = matrix.get("demo-1.0.0")
    base = locks_dir_for(matrix)
    assert base == matrix.path.parent / "docker" / "locks"
    assert lock_path(entry, None, base) == base / "demo-1.0.0-py3.10.txt"
    assert lock_path(entry, "3.11", base) == base / "demo-1.0.0-py3.11.txt"


@pytest.mark.parametrize("bad", ["3", "python3.11", "3.11.2", "4.0", ""])
def test_bad_python_is_a_user_error(matrix: Matrix, bad: str) -> None:
    with pytest.raises(UserError, match=r"MAJOR\.MINOR"):
        lock_path(matrix.get("demo-1.0.0"), bad or "x", locks_dir_for(matrix))


def test_header_round_trip(matrix: Matrix) -> None:
    path = write_lock(matrix, "demo-1.0.0")
    lock = read_lock(path)
    assert lock.header.entry == "demo-1.0.0"
    assert lock.header.python == "3.10"
    assert lock.header.platform == PLATFORM
    assert lock.header.requirements == ("torch==2.8.0", "demo-engine[srt]==1.0.0", "pytest==8.3.5")
    assert lock.header.inputs_hash == inputs_hash(matrix.get("demo-1.0.0"))
    assert lock.versions == {"demo-engine": "1.0.0", "demo-kernel": "0.3.5", "nvidia-cuda-runtime-cu12": "12.8.90",
                             "pytest": "8.3.5", "torch": "2.8.0"}
    assert lock.hashes["demo-engine"] == ("sha256:aaaa", "sha256:bbbb")


def test_not_a_lock(tmp_path: Path) -> None:
    path = tmp_path / "x-py3.10.txt"
    path.write_text("# some comment\n" + BODY)
    with pytest.raises(UserError, match="not a rollout-matrix lock"):
        read_lock(path)
    with pytest.raises(UserError, match="no such lock"):
        read_lock(tmp_path / "missing.txt")


@pytest.mark.parametrize("line", [
    "demo @ file:///opt/wheels/demo-1.0-py3-none-any.whl",
    "-e ./src",
    "requests",
    "idna==3.4 ; python_version < '3.11'",
    "--find-links /opt/wheels",
])
def test_pins_reject_anything_but_index_pins(line: str) -> None:
    with pytest.raises(UserError, match="unexpected line"):
        parse_pins(BODY + line + "\n")


def test_inputs_hash_follows_resolution_inputs_only(tmp_path: Path, matrix: Matrix) -> None:
    entry = matrix.get("demo-1.0.0")
    same_inputs = MATRIX.replace("ubuntu22.04", "ubuntu24.04").replace('demo-kernel: "0.3.5"}', 'demo-kernel: "0.3.6"}')
    changed = MATRIX.replace("pytest==8.3.5", "pytest==8.4.0")
    (tmp_path / "a.yaml").write_text(same_inputs)
    (tmp_path / "b.yaml").write_text(changed)
    assert inputs_hash(load_matrix(tmp_path / "a.yaml").get("demo-1.0.0")) == inputs_hash(entry)
    assert inputs_hash(load_matrix(tmp_path / "b.yaml").get("demo-1.0.0")) != inputs_hash(entry)
    assert inputs_hash(entry, "3.11") != inputs_hash(entry)


def test_exclude_newer_override_is_an_input(matrix: Matrix) -> None:
    assert exclude_newer_source(matrix.get("demo-1.0.1")) == (
        "matrix.yaml exclude_newer 2025-09-13T00:00:00Z; demo-engine itself: last upload of demo-engine==1.0.1")
    assert exclude_newer_source(matrix.get("demo-1.0.0")).startswith("first upload of demo-engine==1.0.0;")


def test_dates() -> None:
    assert normalize_date("2025-05-03") == "2025-05-03T00:00:00Z"
    assert normalize_date("2025-05-03T10:00:00Z") == "2025-05-03T10:00:00Z"
    first = datetime(2025, 5, 2, 22, 31, 2, 230828, tzinfo=timezone.utc)
    wheel = first + timedelta(seconds=61)  # the release's other file, a minute later
    cutoff = release_cutoff("Demo_Engine", [wheel, first])
    assert cutoff.everything == "2025-05-02T22:31:02Z"  # the first upload, no margin
    assert cutoff.packages == {"demo-engine": "2025-05-02T22:32:04Z"}  # its own files: up to the last one
    assert format_time(first) == "2025-05-02T22:31:02Z"
    # An override moves the date for everything; the engine's files stay in.
    assert release_cutoff("demo", [first, wheel], "2025-05-01").everything == "2025-05-01T00:00:00Z"
    assert release_cutoff("demo", [first, wheel], "2025-05-01").engine == "2025-05-02T22:32:04Z"
    assert release_cutoff("demo", [first, wheel], "2025-06-01").engine == "2025-06-01T00:00:00Z"


def test_a_late_pin_lets_its_package_past_the_date_and_nothing_else() -> None:
    first = datetime(2025, 5, 2, 22, 31, 2, tzinfo=timezone.utc)
    arrived = [datetime(2025, 6, 7, 9, 0, 0, 500000, tzinfo=timezone.utc), datetime(2025, 6, 7, 9, 1, 0, tzinfo=timezone.utc)]
    cutoff = release_cutoff("demo", [first], late={"Flash_Infer": arrived})
    assert cutoff.everything == "2025-05-02T22:31:02Z"
    assert cutoff.packages == {"demo": "2025-05-02T22:31:02Z", "flash-infer": "2025-06-07T09:01:00Z"}
    assert cutoff.header == "demo=2025-05-02T22:31:02Z, flash-infer=2025-06-07T09:01:00Z"


def test_check_locks_fresh(matrix: Matrix) -> None:
    write_lock(matrix, "demo-1.0.0")
    write_lock(matrix, "demo-1.0.1", BODY.replace("demo-engine==1.0.0", "demo-engine==1.0.1"))
    assert check_locks(matrix) == []


def test_check_locks_missing_and_orphan(matrix: Matrix) -> None:
    write_lock(matrix, "demo-1.0.0")
    orphan = locks_dir_for(matrix) / "demo-0.9.0-py3.10.txt"
    orphan.write_text(BODY)
    problems = check_locks(matrix)
    assert len(problems) == 2
    assert problems[0].startswith("demo-1.0.1: lock ") and "is missing" in problems[0]
    assert "rollout-matrix lock demo-1.0.1" in problems[0]
    assert problems[1].startswith(str(orphan)) and "belongs to no entry" in problems[1]
    # A selection checks only those entries, and no orphans.
    assert check_locks(matrix, [matrix.get("demo-1.0.0")]) == []


def test_check_locks_stale_after_matrix_edit(matrix: Matrix) -> None:
    write_lock(matrix, "demo-1.0.0")
    write_lock(matrix, "demo-1.0.1", BODY.replace("demo-engine==1.0.0", "demo-engine==1.0.1"))
    matrix.path.write_text(MATRIX.replace('exclude_newer: "2025-09-13"', 'exclude_newer: "2025-09-14"'))
    problems = check_locks(load_matrix(matrix.path))
    assert len(problems) == 1
    assert problems[0].startswith("demo-1.0.1: lock demo-1.0.1-py3.10.txt is stale")


def test_check_locks_covers_other_pythons(matrix: Matrix) -> None:
    write_lock(matrix, "demo-1.0.0")
    write_lock(matrix, "demo-1.0.1", BODY.replace("demo-engine==1.0.0", "demo-engine==1.0.1"))
    write_lock(matrix, "demo-1.0.0", python="3.11", inputs_hash="sha256:old")
    problems = check_locks(matrix)
    assert problems == [problems[0]] and "demo-1.0.0-py3.11.txt is stale" in problems[0]
    assert "--python 3.11" in problems[0]
    # Asking for a Python whose lock is absent names it.
    assert "is missing" in check_locks(matrix, [matrix.get("demo-1.0.1")], python="3.11")[0]


def test_check_locks_pins_against_content(matrix: Matrix) -> None:
    write_lock(matrix, "demo-1.0.0", BODY.replace("demo-kernel==0.3.5", "demo-kernel==0.3.4"))
    problems = check_locks(matrix, [matrix.get("demo-1.0.0")])
    assert problems == ["demo-1.0.0: demo-kernel is 0.3.4 in the lock but matrix.yaml expects 0.3.5; "
                        "fix matrix.yaml or run `rollout-matrix lock demo-1.0.0`"]


def test_content_problems_cuda_of_torch(matrix: Matrix) -> None:
    entry = matrix.get("demo-1.0.0")
    versions, _ = parse_pins(BODY)
    assert content_problems(entry, versions) == []
    versions["nvidia-cuda-runtime-cu12"] = "12.6.77"
    assert content_problems(entry, versions) == [
        "torch brings CUDA 12.6 (nvidia-cuda-runtime) but the stack is CUDA 12.8"]
    del versions["nvidia-cuda-runtime-cu12"]
    versions["nvidia-cuda-runtime"] = "12.8.90"  # CUDA 13-era wheels drop the -cuXX suffix
    assert content_problems(entry, versions) == []


@pytest.mark.parametrize(("python", "bindings", "refused"), [
    ("12.6.2.post1", "13.5.0", True),  # vllm-0.34.0's first lock: the compiled cuda-python beside cuda-bindings
    ("12.6.2.post1", None, False),  # alone it is the only cuda.bindings: nothing overwritten
    ("12.8.0", "12.8.0", False),  # from 12.8 a metapackage (12 KB) that requires cuda-bindings
    ("13.4.4", "13.4.4", False),
])
def test_a_compiled_cuda_python_beside_cuda_bindings_is_refused(matrix: Matrix, python: str, bindings: str | None,
                                                               refused: bool) -> None:
    entry = matrix.get("demo-1.0.0")
    versions, _ = parse_pins(BODY)
    versions["cuda-python"] = python
    if bindings:
        versions["cuda-bindings"] = bindings
    problems = content_problems(entry, versions)
    assert problems == ([f"cuda-python {python} ships cuda.bindings itself and would overwrite cuda-bindings "
                         f"{bindings}'s files; add \"cuda-python>=12.8\" to the band's extra_requirements"]
                        if refused else [])


def test_diff_versions() -> None:
    changes = diff_versions({"a": "1.0", "b": "2.0", "c": "1"}, {"a": "1.0", "b": "1.9", "d": "3"})
    assert [str(c) for c in changes] == ["b: 2.0 -> 1.9 (downgraded)", "c: 1 -> - (removed)",
                                         "d: - -> 3 (added)"]
    assert Change("x", "1.0", "2.0").kind == "upgraded"


@pytest.mark.parametrize("edit", [
    ("--hash=sha256:aaaa", "--hash=sha256:aaab"),  # one digit of a hash
    ("demo-kernel==0.3.5", "demo-kernel==0.3.50"),  # a version
    ("torch==2.8.0 \\\n", "evil==1.0 \\\n    --hash=sha256:9999\ntorch==2.8.0 \\\n"),  # an added package
    ("    --hash=sha256:eeee\n", "    --hash=sha256:eeee \\\n    --hash=sha256:6666\n"),  # an extra allowed hash
])
def test_check_locks_finds_hand_edits_of_the_body(matrix: Matrix, edit: tuple[str, str]) -> None:
    path = write_lock(matrix, "demo-1.0.0")
    old, new = edit
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    problems = check_locks(matrix, [matrix.get("demo-1.0.0")])
    assert len(problems) == 1 and "edited by hand" in problems[0], problems
    assert "rollout-matrix lock demo-1.0.0" in problems[0]


def test_body_round_trip_keeps_pins_hashes_and_comments() -> None:
    pins = parse_body(BODY)
    assert [(p.name, p.version, len(p.hashes)) for p in pins] == [
        ("demo-engine", "1.0.0", 2), ("demo-kernel", "0.3.5", 1), ("nvidia-cuda-runtime-cu12", "12.8.90", 1),
        ("Pytest", "8.3.5", 1), ("torch", "2.8.0", 1)]
    assert pins[-1].comments == ("    # via", "    #   -r -", "    #   demo-engine")
    assert parse_body(render_body(pins)) == pins
    assert split_lock("# a\n# b\nx==1\n") == ("# a\n# b\n", "x==1\n")


@pytest.mark.parametrize(("filename", "python", "fits"), [
    ("aiohttp-3.12.15-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", "3.12", True),
    ("aiohttp-3.12.15-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", "3.12", False),
    ("aiohttp-3.12.15-cp312-cp312-musllinux_1_2_x86_64.whl", "3.12", False),
    ("aiohttp-3.12.15-cp312-cp312-macosx_11_0_arm64.whl", "3.12", False),
    ("aiohttp-3.12.15-cp312-cp312-manylinux_2_17_aarch64.whl", "3.12", False),
    ("sglang-0.5.11-cp312-cp312-manylinux_2_34_x86_64.whl", "3.12", True),   # glibc 2.34 <= 2.35
    ("thing-1.0-cp312-cp312-manylinux_2_39_x86_64.whl", "3.12", False),     # needs a newer glibc
    ("tokenizers-0.22.0-cp39-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", "3.11", True),
    ("six-1.17.0-py2.py3-none-any.whl", "3.10", True),
    ("flashinfer_python-0.3.1.tar.gz", "3.12", True),                       # an sdist may always be built
    ("not-a-distribution.zip", "3.12", False),
])
def test_lock_keeps_only_files_an_installer_there_may_take(filename: str, python: str, fits: bool) -> None:
    assert file_fits(filename, target_tags(python)) is fits


def test_wheel_rank_prefers_the_most_specific_tag() -> None:
    order = preference_order("3.12")
    specific = wheel_rank("x-1-cp312-cp312-manylinux_2_28_x86_64.whl", order)
    abi3 = wheel_rank("x-1-cp39-abi3-manylinux_2_28_x86_64.whl", order)
    pure = wheel_rank("x-1-py3-none-any.whl", order)
    assert specific is not None and abi3 is not None and pure is not None
    assert specific < abi3 < pure
    assert wheel_rank("x-1-cp311-cp311-manylinux_2_28_x86_64.whl", order) is None
