"""`rollout-matrix gpu-batch`: which entries the GPU evidence is sought for, and how a batch is planned."""

from __future__ import annotations

from pathlib import Path

from rollout_matrix.bundles.gpubatch import SECONDS_PER_PART, ZSTD_RATIO, plan, render, targets
from rollout_matrix.matrix.load import load_matrix

ROOT = Path(__file__).resolve().parents[2]

# The 41 entries issue 19 names (the oldest and newest installable release of every band, the newest of
# every (band, torch) pair, and the releases peers pin), written down by hand from the issue.
ISSUE_19 = {
    "sglang": "0.4.6.post1 0.4.6.post5 0.4.7.post1 0.4.8 0.4.10.post2 0.5.1 0.5.2 0.5.3 0.5.5.post3 0.5.6 0.5.9 0.5.10 "
              "0.5.10.post1 0.5.12.post1 0.5.13.post1 0.5.14 0.5.15.post1 0.5.17 0.5.23",
    "vllm": "0.8.5 0.8.5.post1 0.9.0 0.9.2 0.10.0 0.10.1 0.10.1.1 0.10.2 0.11.0 0.11.2 0.12.0 0.13.0 0.16.0 0.19.1 "
            "0.22.0 0.24.0 0.25.0 0.25.1 0.26.0 0.27.1 0.32.0 0.33.0",
}


def test_the_targets_are_the_issue_s_41_entries() -> None:
    want = {f"{engine}-{v}" for engine, versions in ISSUE_19.items() for v in versions.split()}
    assert {e.name for e in targets(load_matrix(ROOT / "matrix.yaml"))} == want


def _pins(lock: Path) -> set[str]:
    """name==version of every pin of a lock file, read here line by line (not with the project's parser)."""
    return {line.split()[0].rstrip("\\") for line in lock.read_text().splitlines()
            if line and not line[0].isspace() and not line.startswith("#") and "==" in line}


def test_a_batch_groups_entries_by_cuda_line_and_counts_shared_files_once() -> None:
    matrix = load_matrix(ROOT / "matrix.yaml")
    asked: list[str] = []

    def size_of(name: str, version: str, shas: set[str]) -> tuple[int, bool]:
        asked.append(f"{name}=={version}")
        return 100 << 20, True

    chosen = [matrix.get(n) for n in ("vllm-0.33.0", "sglang-0.5.17", "vllm-0.24.0")]
    lines = plan(matrix, "3.12", size_of, chosen, parts_per_hold=10_000, proven={})
    assert [(line.torch, [e.name for e in line.entries]) for line in lines] == [
        ("2.11.0", ["sglang-0.5.17", "vllm-0.24.0"]), ("2.14.0", ["vllm-0.33.0"])]
    locks = ROOT / "docker" / "locks"
    union = _pins(locks / "sglang-0.5.17-py3.12.txt") | _pins(locks / "vllm-0.24.0-py3.12.txt")
    assert "torch==2.11.0" in union and asked.count("torch==2.11.0") == 1  # shared: sized once for the line
    assert lines[0].wheel_bytes == len(union) * (100 << 20)
    assert lines[1].wheel_bytes == len(_pins(locks / "vllm-0.33.0-py3.12.txt")) * (100 << 20)
    text = render(lines, {"vllm-0.24.0": ["eager"]})
    assert text[0].startswith("cu130 torch 2.11.0: 2 entries, ") and "  vllm-0.24.0  (proven: eager only)" in text
    proven = {"sglang-0.5.17": ["graphs", "eager"], "vllm-0.24.0": ["eager"]}  # proven in one mode: still sought
    later = plan(matrix, "3.12", lambda n, v, s: (100 << 20, True), chosen, proven=proven)
    assert [[e.name for e in line.entries] for line in later] == [["vllm-0.24.0"], ["vllm-0.33.0"]]


def test_what_the_machine_lends_is_priced_at_nothing_by_name_and_version() -> None:
    """gpu-batch --borrow: pins the machine's python3 has installed at the same version cost no parts;
    another version of the same name still does, and so does a wheel under 1 MiB."""
    matrix = load_matrix(ROOT / "matrix.yaml")
    chosen = [matrix.get("sglang-0.5.17")]
    pins = _pins(ROOT / "docker" / "locks" / "sglang-0.5.17-py3.12.txt")
    lent = {"torch": "2.11.0", "triton": "3.6.0", "numpy": "0.0.1"}  # numpy: not the lock's version
    (line,) = plan(matrix, "3.12", lambda n, v, s: (100 << 20, True), chosen, parts_per_hold=10_000, lent=lent,
                   proven={})
    assert {"torch==2.11.0", "triton==3.6.0"} <= pins and any(p.startswith("numpy==") for p in pins)
    assert line.wheel_bytes == (len(pins) - 2) * (100 << 20)
    small = 100 << 10  # a wheel under 1 MiB travels whole even when lent (bundle's floor)
    (line,) = plan(matrix, "3.12", lambda n, v, s: (small, True), chosen, parts_per_hold=10_000, lent=lent,
                   proven={})
    assert line.wheel_bytes == len(pins) * small


def test_a_line_is_cut_into_holds_in_entry_order_by_parts_and_count() -> None:
    """A hold takes what one 30-minute machine can carry and run: the entries' parts together (shared
    pins once) within the limit, and at most so many entries; an entry too large alone gets its own."""
    import math

    matrix = load_matrix(ROOT / "matrix.yaml")
    locks = ROOT / "docker" / "locks"
    names = ["sglang-0.5.12.post1", "sglang-0.5.13.post1", "sglang-0.5.14", "vllm-0.22.0", "vllm-0.24.0"]
    pins = {n: _pins(locks / f"{n}-py3.12.txt") for n in names}
    mib = 8  # per pin: parts = ceil(pins * 8 MiB * ZSTD_RATIO / 58 MiB), the shared pins once

    def parts(*entries: str) -> int:
        return math.ceil(len(set().union(*(pins[e] for e in entries))) * mib * ZSTD_RATIO / 58)

    limit = parts(*names[:2])  # the first two fit together; the third's own pins push a hold over
    assert parts(*names[:3]) > limit
    (line,) = plan(matrix, "3.12", lambda n, v, s: (mib << 20, True), [matrix.get(n) for n in names],
                   parts_per_hold=limit, entries_per_hold=2, proven={})
    holds = [[e.name for e in hold.entries] for hold in line.holds]
    assert [name for hold in holds for name in hold] == names  # order kept, every entry once
    assert holds[0] == names[:2] and all(1 <= len(h) <= 2 for h in holds)
    assert all(hold.parts == parts(*(e.name for e in hold.entries)) for hold in line.holds)
    assert all(hold.parts <= limit for hold in line.holds if len(hold.entries) > 1)
    text = render([line], {})
    assert text[1] == f"  hold 1: 2 entries, {limit} parts ({limit * SECONDS_PER_PART / 60:.1f} min of calls)"
    assert text[2:4] == ["    sglang-0.5.12.post1", "    sglang-0.5.13.post1"]


def _deb_sizes(pinned: Path) -> dict[str, int]:
    """sha256 -> size of every package line of a committed .deb set, read here (not with the project's parser)."""
    out = {}
    for line in pinned.read_text().splitlines():
        fields = line.split()
        if line and not line.startswith("#") and len(fields) >= 4 and fields[3].isdigit():
            out[fields[2].removeprefix("sha256:")] = int(fields[3])
    return out


def test_a_line_whose_entries_need_system_libraries_carries_their_debs_once() -> None:
    """vllm-0.25.0 and 0.26.0 both need ffmpeg: the pinned set is counted once for the line, as shipped
    (not zstd-compressed); a line of SGLang entries carries only libnuma1's set."""
    matrix = load_matrix(ROOT / "matrix.yaml")
    lines = plan(matrix, "3.12", lambda name, version, shas: (0, True),
                 [matrix.get(n) for n in ("vllm-0.25.0", "vllm-0.26.0")])
    ffmpeg = _deb_sizes(ROOT / "docker" / "syslibs" / "ffmpeg-bookworm-amd64.txt")
    assert len(ffmpeg) > 50 and lines[0].deb_bytes == sum(ffmpeg.values())
    assert lines[0].parts == -(-sum(ffmpeg.values()) // (58 << 20))
    assert "MiB of it system libraries" in render(lines, {})[0]
