"""`rollout-matrix gpu-batch`: which entries the GPU evidence is sought for, and how a batch is planned."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout_matrix.bundles.gpubatch import (
    PACES,
    PREPARE_ALONE_S,
    SUITE_ALONE_S,
    plan,
    render,
    suites_end,
    targets,
)
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
    # since 2026-12-05 vllm-0.34.0 installs (flashinfer-python 0.7.4 stands in for 0.7.3): the newest
    # release of band vllm-0.25 and of its torch 2.14.0 pair is 0.34.0, no longer 0.33.0
    want = want - {"vllm-0.33.0"} | {"vllm-0.34.0"}
    # and sglang 0.5.18 - 0.5.22 install (cuda-tile 1.6.0rc7 stands in for the stub of 1.6.0rc5): band
    # sglang-0.5.20 gets its one release, band sglang-0.5.21 its oldest (0.5.21, also the newest of its
    # torch 2.13.0 pair), and band sglang-0.5.14's torch 2.13.0 pair its newest (0.5.19)
    want |= {"sglang-0.5.19", "sglang-0.5.20", "sglang-0.5.21"}
    # and sglang 0.4.6 installs (sgl-kernel 0.1.0 stands in for 0.0.9.post2): the oldest installable
    # release of band sglang-0.4.5.post3 is 0.4.6, no longer 0.4.6.post1
    want = want - {"sglang-0.4.6.post1"} | {"sglang-0.4.6"}
    # and sglang 0.4.5.post3 installs (the same stand-in, uploaded a day after it: late_pin): the band's
    # oldest installable release is the band's own first, no longer 0.4.6
    want = want - {"sglang-0.4.6"} | {"sglang-0.4.5.post3"}
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
    lines = plan(matrix, "3.12", size_of, chosen, proven={}).lines
    assert [(line.torch, [e.name for e in line.entries]) for line in lines] == [
        ("2.11.0", ["sglang-0.5.17", "vllm-0.24.0"]), ("2.14.0", ["vllm-0.33.0"])]
    locks = ROOT / "docker" / "locks"
    union = _pins(locks / "sglang-0.5.17-py3.12.txt") | _pins(locks / "vllm-0.24.0-py3.12.txt")
    assert "torch==2.11.0" in union and asked.count("torch==2.11.0") == 1  # shared: sized once for the line
    assert lines[0].wheel_bytes == len(union) * (100 << 20)
    assert lines[1].wheel_bytes == len(_pins(locks / "vllm-0.33.0-py3.12.txt")) * (100 << 20)
    text = render(plan(matrix, "3.12", size_of, chosen, proven={}), {"vllm-0.24.0": ["eager"]})
    assert text[0].startswith("cu130 torch 2.11.0: 2 entries, ") and "  vllm-0.24.0  (proven: eager only)" in text
    proven = {"sglang-0.5.17": ["graphs", "eager"], "vllm-0.24.0": ["eager"]}  # proven in one mode: still sought
    later = plan(matrix, "3.12", lambda n, v, s: (100 << 20, True), chosen, proven=proven).lines
    assert [[e.name for e in line.entries] for line in later] == [["vllm-0.24.0"], ["vllm-0.33.0"]]


def test_newest_first_plans_the_newest_line_s_entries_in_the_first_hold() -> None:
    """gpu-batch --newest-first: a session with one hold proves what most users install first. The lines
    reverse (newest stack and torch first); entries of a line keep matrix order."""
    matrix = load_matrix(ROOT / "matrix.yaml")
    chosen = [matrix.get(n) for n in ("vllm-0.11.2", "sglang-0.5.17", "vllm-0.24.0", "vllm-0.33.0")]
    batch = plan(matrix, "3.12", lambda n, v, s: (100 << 20, True), chosen, proven={}, newest_first=True)
    assert [(line.stack, line.torch) for line in batch.lines] == [
        ("cu130", "2.14.0"), ("cu130", "2.11.0"), ("cu128", "2.9.0")]
    assert [e.name for e in batch.lines[1].entries] == ["sglang-0.5.17", "vllm-0.24.0"]
    assert batch.holds[0].entries[0].name == "vllm-0.33.0"
    oldest = plan(matrix, "3.12", lambda n, v, s: (100 << 20, True), chosen, proven={})
    assert oldest.holds[0].entries[0].name == "vllm-0.11.2"


def test_what_the_machine_lends_is_priced_at_nothing_by_name_and_version() -> None:
    """gpu-batch --borrow: pins the machine's python3 has installed at the same version cost no parts;
    another version of the same name still does, and so does a wheel under 1 MiB."""
    matrix = load_matrix(ROOT / "matrix.yaml")
    chosen = [matrix.get("sglang-0.5.17")]
    pins = _pins(ROOT / "docker" / "locks" / "sglang-0.5.17-py3.12.txt")
    lent = {"torch": "2.11.0", "triton": "3.6.0", "numpy": "0.0.1"}  # numpy: not the lock's version
    (line,) = plan(matrix, "3.12", lambda n, v, s: (100 << 20, True), chosen, lent=lent, proven={}).lines
    assert {"torch==2.11.0", "triton==3.6.0"} <= pins and any(p.startswith("numpy==") for p in pins)
    assert line.wheel_bytes == (len(pins) - 2) * (100 << 20)
    small = 100 << 10  # a wheel under 1 MiB travels whole even when lent (bundle's floor)
    (line,) = plan(matrix, "3.12", lambda n, v, s: (small, True), chosen, lent=lent, proven={}).lines
    assert line.wheel_bytes == len(pins) * small


def test_suites_start_as_their_entries_complete_and_share_three_places() -> None:
    """The fifth H200 hold of 2026-12-03 as the model sees it: the machine answered after 105 s, parts
    came every 8.4 s; four vLLM suites of 450 s complete after parts 58, 65, 105 and 111 (.gpu/e1's
    order). The first three start as they complete (592.2, 651.0, 987.0 s); the fourth waits for the
    first place to free (592.2 + 450 = 1042.2 s) and ends at 1492.2 s."""
    times = {"start_s": 105, "seconds_per_part": 8.4, "suite_s": {"vllm": 450, "sglang": 700},
             "prepare_s": {"vllm": 0, "sglang": 0}, "parallel": 3}
    assert suites_end([58, 65, 105, 111], ["vllm"] * 4, **times) == pytest.approx(1492.2)
    assert suites_end([10], ["sglang"], **times) == pytest.approx(105 + 84 + 700)
    assert suites_end([10, 10], ["vllm", "vllm"], **{**times, "parallel": 1}) == pytest.approx(189 + 900)


def test_an_entry_prepares_while_the_places_are_taken() -> None:
    """The sixth hold of 2026-12-04 as the model sees it with preparation apart: three vLLM entries
    complete after parts 53, 60, 66 and prepare 130 s each before their modes (480 s); sglang-0.5.1,
    complete after part 84, prepares (35 s) while they run and takes the first place to free."""
    times = {"start_s": 52, "seconds_per_part": 5.6, "suite_s": {"vllm": 480, "sglang": 600},
             "prepare_s": {"vllm": 130, "sglang": 35}}
    first_free = 52 + 53 * 5.6 + 130 + 480
    assert suites_end([53, 60, 66, 84], ["vllm"] * 3 + ["sglang"], **times) == pytest.approx(first_free + 600)
    ready_late = 52 + 300 * 5.6 + 35  # a place is free by then: it waits only for its own preparation
    assert suites_end([53, 300], ["vllm", "sglang"], **times) == pytest.approx(ready_late + 600)


def test_one_suite_at_a_time_each_step_waits_for_its_chunks_and_the_step_before() -> None:
    """``--parallel 1`` has one worker: an entry complete while the suite before it runs prepares only
    once that suite ended; one complete later waits for its own last part."""
    times = {"start_s": 100, "seconds_per_part": 5, "suite_s": {"vllm": 260, "sglang": 230},
             "prepare_s": {"vllm": 25, "sglang": 35}, "parallel": 1}
    first = 100 + 40 * 5 + 25 + 260  # 585
    assert suites_end([40], ["vllm"], **times) == pytest.approx(first)
    assert suites_end([40, 50], ["vllm", "sglang"], **times) == pytest.approx(first + 35 + 230)  # ready at 350
    assert suites_end([40, 200], ["vllm", "sglang"], **times) == pytest.approx(100 + 200 * 5 + 35 + 230)


def test_the_plan_prints_the_pace_it_was_made_for() -> None:
    """By default a hold is planned one suite at a time and its pipeline call says ``--parallel 1``; planned
    for three at once it says ``--parallel auto``; the parts are the same, the hold's end is the one-at-a-time
    model's."""
    matrix = load_matrix(ROOT / "matrix.yaml")
    chosen = [matrix.get(n) for n in ("vllm-0.22.0", "vllm-0.24.0")]
    sizes = lambda n, v, s: (40 << 20, True)  # noqa: E731
    alone, together = (plan(matrix, "3.12", sizes, chosen, proven={}, hold_s=10_000, pace=PACES[k]) for k in (1, 3))
    assert [h.ready_parts for h in alone.holds] == [h.ready_parts for h in together.holds]
    def first_call(batch) -> str:
        return next(line for line in render(batch, {}) if line.startswith("  first call"))

    card = "; nvidia-smi --query-gpu=name --format=csv,noheader"  # which card answered: docs/gpu.md says why
    assert first_call(alone).endswith(f"--parallel 1 vllm-0.22.0 vllm-0.24.0{card}")
    assert first_call(together).endswith(f"--parallel auto vllm-0.22.0 vllm-0.24.0{card}")
    ready = alone.holds[0].ready_parts
    assert alone.holds[0].end_s == pytest.approx(suites_end(ready, ["vllm"] * 2, suite_s=SUITE_ALONE_S,
                                                            prepare_s=PREPARE_ALONE_S, parallel=1))


def test_holds_take_entries_across_lines_while_every_suite_still_ends_in_time() -> None:
    """Entries go into holds in line order; one joins while the last suite would end by the limit, and
    each hold's parts count the pins its entries share once (an entry's number is the parts after which
    it is complete)."""
    import math

    matrix = load_matrix(ROOT / "matrix.yaml")
    locks = ROOT / "docker" / "locks"
    names = ["vllm-0.22.0", "vllm-0.24.0", "vllm-0.33.0"]  # torch 2.11, 2.11, 2.14: two lines, no .debs
    pins = {n: _pins(locks / f"{n}-py3.12.txt") for n in names}
    mib = 40  # per pin: parts = ceil(pins * 40 MiB * 0.776 / 61 MiB parts), the shared pins once
    cu130 = 0.78  # payload / wheel bytes of the cu130 bundle of 2026-12-04 (docs/gpu.md), all three are cu130

    def parts(*entries: str) -> int:
        return math.ceil(len(set().union(*(pins[e] for e in entries))) * mib * cu130 / 61)

    chosen = [matrix.get(n) for n in names]
    three = PACES[3]  # three suites at once, the pace SUITE_S and PREPARE_S (suites_end's defaults) describe
    roomy = plan(matrix, "3.12", lambda n, v, s: (mib << 20, True), chosen, proven={}, hold_s=10_000, pace=three)
    (hold,) = roomy.holds
    assert [e.name for e in hold.entries] == names
    assert hold.ready_parts == [parts(*names[:1]), parts(*names[:2]), parts(*names)]
    two = suites_end(hold.ready_parts[:2], ["vllm"] * 2)
    assert two < hold.end_s  # the third entry's suite ends last: a limit between the two leaves it out
    cut = (two + hold.end_s) / 2
    tight = plan(matrix, "3.12", lambda n, v, s: (mib << 20, True), chosen, proven={}, hold_s=cut, pace=three)
    assert [[e.name for e in h.entries] for h in tight.holds] == [names[:2], names[2:]]
    assert tight.holds[1].ready_parts == [parts(names[2])]
    text = render(tight, {}, "3.12", "docker/machines/nvidia-h200.json")
    first = next(i for i, line in enumerate(text) if line.startswith("hold 1: "))
    assert text[first].startswith(f"hold 1: {parts(*names[:2])} parts, suites end near ")
    assert text[first].endswith(f"vllm-0.22.0 ({parts(names[0])}), vllm-0.24.0 ({parts(*names[:2])})")
    assert text[first + 1] == ("  rollout-matrix bundle --python 3.12 --part-mib 61 --out .gpu/hold-1 "
                               "--borrow docker/machines/nvidia-h200.json vllm-0.22.0 vllm-0.24.0")
    assert text[first + 2] == "  keep='vllm-0.22.0|vllm-0.24.0'"
    assert text[first + 3] == ("  first call, alone: gpuenv receive .gpu/hold-1/part-000; gpuenv pipeline --background "
                               "--parallel auto vllm-0.22.0 vllm-0.24.0; nvidia-smi --query-gpu=name --format=csv,noheader")
    last = parts(*names[:2]) - 1  # parts are numbered from 000
    assert text[first + 4].startswith(f"  then: gpuenv receive .gpu/hold-1/part-NNN --collect $OUT for 001-{last:03d}, ")
    assert text[first + 5].startswith("hold 2: ") and text[first + 7] == "  keep='vllm-0.33.0'"
    assert text[-1].startswith("3 entries in 2 holds")


def test_a_hold_whose_wheels_the_machine_lends_is_sent_in_its_part_000_alone() -> None:
    """Every wheel priced at nothing (lent): the bundle is part-000 alone, and the hold's calls say so
    instead of asking for parts 001-000."""
    matrix = load_matrix(ROOT / "matrix.yaml")
    batch = plan(matrix, "3.12", lambda n, v, s: (0, True), [matrix.get("vllm-0.33.0")], proven={})
    then = [line for line in render(batch, {}) if line.startswith("  then: ")]
    assert then == ["  then: nothing more to send (part-000 is the whole bundle: the machine lends the rest); "
                    "gpuenv wait --max 240 --collect $OUT, back to back"]


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
    batch = plan(matrix, "3.12", lambda name, version, shas: (0, True),
                 [matrix.get(n) for n in ("vllm-0.25.0", "vllm-0.26.0")], proven={})
    lines = batch.lines
    ffmpeg = _deb_sizes(ROOT / "docker" / "syslibs" / "ffmpeg-bookworm-amd64.txt")
    assert len(ffmpeg) > 50 and lines[0].deb_bytes == sum(ffmpeg.values())
    assert lines[0].parts == -(-sum(ffmpeg.values()) // (61 << 20))
    assert "MiB of it system libraries" in render(batch, {})[0]


def test_wheels_are_priced_at_their_stack_s_measured_ratio() -> None:
    """Bundles made here on 2026-12-04: cu128 wheels (vLLM 0.11.2 - 0.13.0) shipped at 0.660 of their
    bytes, cu130 (SGLang 0.5.23, vLLM 0.27.1 - 0.33.0) at 0.776; one ratio for both planned the cu130 hold
    at 82 parts where it took 93. A line is priced at its stack's ratio, a hold of two stacks at each's."""
    matrix = load_matrix(ROOT / "matrix.yaml")
    locks = ROOT / "docker" / "locks"
    cu128, cu130 = matrix.get("vllm-0.12.0"), matrix.get("vllm-0.33.0")
    assert (cu128.stack.name, cu130.stack.name) == ("cu128", "cu130")
    batch = plan(matrix, "3.12", lambda n, v, s: (100 << 20, True), [cu128, cu130], proven={}, hold_s=10_000)
    for line, measured in zip(batch.lines, (0.660, 0.776), strict=True):
        assert line.payload_bytes / line.wheel_bytes == pytest.approx(measured, abs=0.005)
    only_128 = _pins(locks / "vllm-0.12.0-py3.12.txt")
    only_130 = _pins(locks / "vllm-0.33.0-py3.12.txt") - only_128  # a shared pin is priced with its first entry
    (hold,) = batch.holds
    assert hold.ready_parts[-1] == pytest.approx(
        (len(only_128) * 100 * 0.660 + len(only_130) * 100 * 0.776) / 61, abs=1 + 0.005 * len(only_128 | only_130))


def test_all_plans_every_installable_release_and_is_not_mixed_with_names(capsys: pytest.CaptureFixture) -> None:
    """gpu-batch --all: after the targets, every release that installs, each the one its py3.12 lock says it
    is (a lock is written only for a release that resolves); naming entries too is refused in one line."""
    from rollout_matrix.bundles.gpubatch import installable
    from rollout_matrix.cli.main import main

    locked = {p.name.removesuffix("-py3.12.txt") for p in (ROOT / "docker" / "locks").glob("*-py3.12.txt")}
    matrix = load_matrix(ROOT / "matrix.yaml")
    assert {e.name for e in installable(matrix)} == locked
    assert {e.name for e in targets(matrix)} < locked
    assert main(["--matrix", str(ROOT / "matrix.yaml"), "gpu-batch", "--all", "vllm-0.9.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "rollout-matrix: error: gpu-batch: give ENTRY names or --all, not both", err


@pytest.mark.parametrize(("args", "message"), [
    (["sglang-0.4.4"], "sglang-0.4.4 is unavailable (sgl-kernel 0.0.x is no longer on PyPI): it has no lock"),
    (["--python", "3.9", "sglang-0.4.10"], "no lock for sglang-0.4.10 on Python 3.9 ("),
])
def test_a_named_entry_without_a_lock_is_one_line(capsys: pytest.CaptureFixture, args: list[str], message: str) -> None:
    """An unavailable release, or a Python no lock was written for: a FileNotFoundError traceback."""
    from rollout_matrix.cli.main import main

    assert main(["--matrix", str(ROOT / "matrix.yaml"), "gpu-batch", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"rollout-matrix: error: {message}"), err

