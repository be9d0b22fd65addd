"""The next GPU batch: which entries still lack GPU evidence in both modes, by CUDA line, and what they
cost to carry.

Why: a GPU machine is held for 30 minutes at most and everything reaches it in parts of ~61 MiB, about
6 s of device time each, so a batch is planned by what it ships. Entries of one CUDA line (a stack
and a torch) share torch and the NVIDIA libraries, most of their bytes: carried together they cross
once. ``rollout-matrix gpu-batch`` prints, per line, the entries still to prove and the parts they
need together (from the lock files' sizes, exact where the wheels are in the bundle cache), then the
holds that carry them: as many entries, lines in stack order, as still let every suite end in time,
suites running while later parts travel (:func:`suites_end`, from measured times).

Which entries GPU evidence is sought for (the targets): the oldest and newest installable release of
every shim band, the newest of every (band, torch) pair, and the releases an engine lists under
``gpu_evidence_also`` in matrix.yaml (the ones peers pin). Proven means committed GPU evidence whose
every GPU test passed or skipped, in both modes (tests/engine's ``graphs`` and ``eager``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from packaging.utils import canonicalize_name
from packaging.version import Version

from rollout_matrix.bundles import borrow
from rollout_matrix.bundles.syslibset import entry_sets
from rollout_matrix.errors import UserError
from rollout_matrix.evidence.band_status import MODES, gpu_modes
from rollout_matrix.evidence.committed import committed
from rollout_matrix.evidence.results import JUNIT, PASSED
from rollout_matrix.locks.lockfile import lock_path, locks_dir_for, parse_body, split_lock
from rollout_matrix.matrix.model import Entry, Matrix
from rollout_matrix.matrix.shim_band import shim_for

ZSTD_RATIO = {"cu128": 0.66, "cu130": 0.78}
"""Bundle payload / wheel bytes of the wheels a bundle ships (lent ones aside), per CUDA stack, measured
on bundles made here: cu128 0.660 (.gpu/hold-4 of 2026-12-04: vLLM 0.11.2 - 0.13.0, 5.85 GiB of
wheels), cu130 0.776 (.gpu/hold-1 of 2026-12-04: SGLang 0.5.23, vLLM 0.27.1, 0.32.0, 0.33.0, 6.84 GiB;
with the same ratio for all stacks, 0.69, that hold was planned at 82 parts and took 93). Other stacks:
``DEFAULT_ZSTD_RATIO``."""
DEFAULT_ZSTD_RATIO = 0.69
"""10.72 GiB of zstd payload for 15.47 GiB of wheels (752 files of 14 entries, SGLang 0.5.12 - 0.5.23,
vLLM 0.22 - 0.33, torch 2.11's wheel among them, bundled 2026-12-02)."""
SECONDS_PER_PART = 5.7
"""Device time per part when calls follow each other, ten to a message, the turns between messages
included: 5.88 s over 104 calls (2026-12-04, fourth hold: 4.5-5 s between the calls of one message,
12-16 s across the turn to the next), 5.58 s over 87 calls (third hold: 5.53 s for 41 calls without
``collect``, 5.60 s for 45 ending in ``collect --if-changed``, 6 of which brought an archive back). The
second hold of that day gave 6.3-6.9 s, its calls with ``collect`` bringing an archive back more often;
it was 8.3-8.6 s while every call collected (108 calls, 2026-12-03)."""
PART_MIB = 61
"""The part size a hold's bundle is made with (``bundle --part-mib 61``): the largest that fits the device
tool's 64 MiB per call beside the 1.7 MiB working tree a hold carries (docs/gpu.md)."""
HOLD_S = 1800
"""A machine goes back after 30 minutes held, and a session has 30 minutes of device time."""
START_S = 105
"""Held time at the first call's reply, the machine's start included (105 s on 2026-12-03, fifth hold)."""
END_MARGIN_S = 120
"""Kept free at the end of a hold: the last ``collect`` and the give-back."""
SUITE_S = {"sglang": 700, "vllm": 480}
"""One suite's modes (what holds a place) while three share the H200: SGLang 567-611 s, vLLM 417-480 s
(2026-12-04, sixth hold, from each mode's start to the suite's end). Whole steps before places were
taken for the modes only: SGLang 599-774 s, vLLM 396-442 s (2026-12-03, fifth hold); SGLang 0.5.10 and
0.5.10.post1 572 s and 600 s, vLLM 0.16.0 420 s, vLLM 0.25.0 184 s while no other suite ran (2026-12-04,
fifth). Engine starts take turns on the GPU lock, so a fourth suite would mostly wait."""
PREPARE_S = {"sglang": 35, "vllm": 130}
"""What a step does before it takes a place (gpu/places.py), while other suites run: its wheels
reassembled and its venv (35-46 s), and for vLLM FlashInfer's kernels (89-101 s; 2026-12-04, sixth hold)."""
PARALLEL = 3
"""Suites at a time (``gpuenv pipeline --parallel auto`` on the H200)."""
SUITE_ALONE_S = {"sglang": 230, "vllm": 260}
"""One suite, both modes, with the GPU to itself (``--parallel 1``): sglang-0.4.8 225.4 s and 0.4.10.post2
225.9 s (2026-12-05, third hold, every test of that day); vllm-0.25.0 184 s (2026-12-04, fifth hold) plus
the engine start per mode the tests since added (vLLM's median start 36.2 s). About what a suite costs
three at a time (567-611 s for three SGLang suites), so one at a time gives up no throughput, and a
machine lost mid-hold takes at most the suite in flight: every earlier one was collected."""
PREPARE_ALONE_S = {"sglang": 35, "vllm": 25}
"""With one place the pipeline has one worker: a step's wheels and venv come after the previous step ended
(35-46 s SGLang, 25 s vLLM), and vLLM's FlashInfer kernels are built inside its suite, not before it."""


@dataclass(frozen=True)
class Pace:
    """How a hold's pipeline runs its suites (``gpuenv pipeline --parallel``), with the seconds measured
    for that way."""

    parallel: int
    flag: str  # what ``pipeline --parallel`` is given
    suite_s: dict[str, float]
    prepare_s: dict[str, float]


PACES = {1: Pace(1, "1", SUITE_ALONE_S, PREPARE_ALONE_S), PARALLEL: Pace(PARALLEL, "auto", SUITE_S, PREPARE_S)}
"""``gpu-batch --parallel``: one suite at a time (the default since 2026-12-05), or three sharing the GPU."""


def suites_end(ready_parts: list[int], engines: list[str], *, start_s: float = START_S,
               seconds_per_part: float = SECONDS_PER_PART, suite_s: dict[str, float] | None = None,
               prepare_s: dict[str, float] | None = None, parallel: int = PARALLEL) -> float:
    """When the last suite ends, in seconds of the hold, for entries that complete after
    ``ready_parts[i]`` parts: ``pipeline`` prepares each entry once its last part has arrived, whether or
    not a place is free, and starts its modes, in order, once it is prepared and one of ``parallel``
    places is free; with one place it runs each step in turn (its chunks, its venv, its suite). Why:
    suites run while later parts still travel, so a hold can carry more parts than fit before the first
    suite would start."""
    suite_s = suite_s or SUITE_S
    prepare_s = PREPARE_S if prepare_s is None else prepare_s
    if parallel == 1:  # one worker: a step waits for its chunks, prepares and runs only after the one before
        end = 0.0
        for part, engine in zip(ready_parts, engines, strict=True):
            end = max(start_s + part * seconds_per_part, end) + prepare_s[engine] + suite_s[engine]
        return end
    free = [0.0] * parallel
    end = 0.0
    for part, engine in zip(ready_parts, engines, strict=True):
        place = min(range(parallel), key=free.__getitem__)
        start = max(start_s + part * seconds_per_part + prepare_s[engine], free[place])
        free[place] = start + suite_s[engine]
        end = max(end, free[place])
    return end


def targets(matrix: Matrix) -> list[Entry]:
    """The entries GPU evidence is sought for, in matrix order (see the module docstring)."""
    by_band: dict[str, list[Entry]] = {}
    by_pair: dict[tuple[str, str], list[Entry]] = {}
    for entry in matrix:
        if entry.unavailable:
            continue
        band = shim_for(entry) or ""
        by_band.setdefault(band, []).append(entry)
        by_pair.setdefault((band, entry.torch or ""), []).append(entry)
    chosen = set(matrix.gpu_evidence_also)
    for entries in by_band.values():
        ordered = sorted(entries, key=lambda e: Version(e.version))
        chosen |= {ordered[0].name, ordered[-1].name}
    for entries in by_pair.values():
        chosen.add(max(entries, key=lambda e: Version(e.version)).name)
    return [e for e in matrix if e.name in chosen]


def installable(matrix: Matrix) -> list[Entry]:
    """Every entry that installs from PyPI (``gpu-batch --all``: once the targets are proven, GPU truth
    for each release, not one per band)."""
    return [e for e in matrix if not e.unavailable]


def proven_modes(root: Path) -> dict[str, list[str]]:
    """entry -> the modes in which its committed GPU evidence passed every GPU test."""
    out = {}
    for name, evidence in committed(root, "gpu").items():
        if evidence.verdict != PASSED:
            continue
        modes = gpu_modes(evidence.folder / JUNIT)
        if not any(m.failed for m in modes.values()):
            out[name] = [m for m in MODES if m in modes and modes[m].passed]
    return out


@dataclass(frozen=True)
class Hold:
    """Entries that one 30-minute hold carries (one bundle, lines in stack order) and runs."""

    entries: list[Entry]
    ready_parts: list[int]  # entry i is complete after this many parts (the bundle's order)
    end_s: float  # when its last suite ends (suites_end)

    @property
    def parts(self) -> int:
        return self.ready_parts[-1]


@dataclass(frozen=True)
class Line:
    """One CUDA line's entries still to prove, and what carrying them costs."""

    stack: str
    torch: str
    entries: list[Entry]
    wheel_bytes: int
    exact: bool  # every size came from the local cache
    deb_bytes: int  # the pinned .deb sets of the entries' system_packages (shipped as published)
    payload_bytes: float  # what a bundle ships: the wheels at their stack's zstd ratio, the .debs whole

    @property
    def parts(self) -> int:
        return parts_for(self.payload_bytes)

    @property
    def minutes(self) -> float:
        return self.parts * SECONDS_PER_PART / 60


class Carried(NamedTuple):
    """What carrying some entries together costs (the last fields of a :class:`Line`)."""

    wheel_bytes: int
    exact: bool
    deb_bytes: int
    payload_bytes: float


def zstd_ratio(stack: str) -> float:
    return ZSTD_RATIO.get(stack, DEFAULT_ZSTD_RATIO)


def parts_for(payload_bytes: float) -> int:
    return math.ceil(payload_bytes / (PART_MIB << 20))


def lock_files(matrix: Matrix, entry: Entry, python: str) -> dict[str, tuple[str, str]]:
    """sha256 -> (name, version) of every file the entry's lock allows, per pin (any of its hashes)."""
    path = lock_path(entry, python, locks_dir_for(matrix))
    if entry.unavailable:
        raise UserError(f"{entry.name} is unavailable ({entry.unavailable}): it has no lock, so no bundle can carry "
                        "it to a GPU; leave it out")
    if not path.is_file():
        raise UserError(f"no lock for {entry.name} on Python {python} ({path}); run "
                        f"`rollout-matrix lock {entry.name} --python {python}` or plan for another --python")
    pins = parse_body(split_lock(path.read_text())[1], path)
    return {h.removeprefix("sha256:"): (p.name, p.version) for p in pins for h in p.hashes}


@dataclass(frozen=True)
class Batch:
    """What is left to prove, by CUDA line, and the holds that carry it."""

    lines: list[Line]
    holds: list[Hold]
    pace: Pace = PACES[1]


def plan(matrix: Matrix, python: str, size_of: Callable[[str, str, set[str]], tuple[int, bool]],
         entries: Iterable[Entry] | None = None, lent: dict[str, str] | None = None,
         proven: dict[str, list[str]] | None = None, hold_s: float = HOLD_S - END_MARGIN_S,
         newest_first: bool = False, pace: Pace = PACES[1]) -> Batch:
    """Entries not yet proven in both modes (of ``entries``, default :func:`targets`), grouped by CUDA line
    in stack order (``newest_first``: the newest line first, the releases most users install, when a
    session has one hold), and packed into holds in that order: an entry joins the current hold while every
    suite would still end by ``hold_s`` (:func:`suites_end`), else it starts the next (alone, even
    when it cannot end in time: ``render`` says so). ``size_of(name, version, allowed sha256s)`` gives
    a pin's wheel size and whether it is exact. ``lent``: name -> version the machine has installed
    (``bundle --borrow``), priced at nothing from 1 MiB (``borrow.MIN_WHEEL_BYTES``); by name and
    version, where ``bundle`` decides by the files. ``pace``: how the hold's suites will run (:data:`PACES`).
    ``proven``: entry -> modes of its committed GPU evidence (default: read from the checkout)."""
    if proven is None:
        proven = proven_modes(matrix.path.parent)
    todo = [e for e in (entries if entries is not None else targets(matrix))
            if set(proven.get(e.name, ())) != set(MODES)]
    grouped: dict[tuple[str, str], list[Entry]] = {}
    for entry in todo:
        grouped.setdefault((entry.stack.name, entry.torch or ""), []).append(entry)
    sized: dict[tuple[str, str], tuple[int, bool]] = {}  # pin -> size_of's answer, asked once per pin
    files: dict[str, dict[str, tuple[str, str]]] = {}  # entry -> its lock's files, read once per entry

    def carried(members: list[Entry]) -> Carried:
        """What carrying ``members`` together costs: each pin once, each wheel at its first entry's stack's
        ratio, the .debs as they are."""
        pins: dict[tuple[str, str], set[str]] = {}
        stack_of: dict[tuple[str, str], str] = {}
        for entry in members:
            if entry.name not in files:
                files[entry.name] = lock_files(matrix, entry, python)
            for sha, pin in files[entry.name].items():
                pins.setdefault(pin, set()).add(sha)
                stack_of.setdefault(pin, entry.stack.name)
        for pin, shas in pins.items():
            if pin not in sized:
                sized[pin] = size_of(pin[0], pin[1], shas)
        needs = sorted({name for entry in members for name in entry.system_packages})
        debs = {d.sha256: d.size for pinned in entry_sets(matrix.path.parent, tuple(needs)) for d in pinned.debs}
        shipped = [pin for pin in pins if (lent or {}).get(canonicalize_name(pin[0])) != pin[1]
                   or sized[pin][0] < borrow.MIN_WHEEL_BYTES]  # bundle ships small wheels whole
        payload = sum(sized[pin][0] * zstd_ratio(stack_of[pin]) for pin in shipped) + sum(debs.values())
        return Carried(sum(sized[pin][0] for pin in shipped), all(sized[pin][1] for pin in shipped),
                       sum(debs.values()), payload)

    def parts_of(members: list[Entry]) -> int:
        return parts_for(carried(members).payload_bytes)

    def joined(hold: Hold | None, entry: Entry) -> Hold:
        """``hold`` with ``entry`` last: the earlier entries' parts stay as they were (the bundle's order)."""
        members = [*(hold.entries if hold else ()), entry]
        ready = [*(hold.ready_parts if hold else ()), parts_of(members)]
        return Hold(members, ready, suites_end(ready, [e.engine for e in members], suite_s=pace.suite_s,
                                               prepare_s=pace.prepare_s, parallel=pace.parallel))

    lines = []
    for (stack, torch), members in grouped.items():
        lines.append(Line(stack, torch, members, *carried(members)))
    order = list(dict.fromkeys(e.stack.name for e in matrix))
    lines.sort(key=lambda line: (order.index(line.stack), Version(line.torch or "0")), reverse=newest_first)
    holds: list[Hold] = []
    for entry in (e for line in lines for e in line.entries):
        if holds and (grown := joined(holds[-1], entry)).end_s <= hold_s:
            holds[-1] = grown
        else:
            holds.append(joined(None, entry))
    return Batch(lines, holds, pace)


def cached_or_indexed(cache: Path, python: str) -> Callable[[str, str, set[str]], tuple[int, bool]]:
    """Sizes from the bundle cache (the exact file), else from the index (the file an installer would
    take for ``python``)."""
    from rollout_matrix.bundles.bundle import choose_file
    from rollout_matrix.locks.lockfile import Pin, preference_order

    order = preference_order(python)

    def size_of(name: str, version: str, shas: set[str]) -> tuple[int, bool]:
        for sha in shas:
            folder = cache / "files" / sha
            if folder.is_dir():
                found = [p for p in folder.iterdir() if p.is_file() and not p.name.endswith(".part")]
                if found:
                    return found[0].stat().st_size, True
        choice = choose_file(Pin(name, version, tuple(f"sha256:{s}" for s in shas)), python, order)
        return choice.file.size or 0, False

    return size_of


def _size(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def render(batch: Batch, proven: dict[str, list[str]], python: str = "3.12", borrow: str | None = None,
           asked: str = "target") -> list[str]:
    """The printed plan: a line per CUDA line with an indented line per entry, then the holds, each with
    the command that bundles it, the entries whose locks its working tree keeps and the GPU machine's
    calls (docs/gpu.md), so a hold is carried as planned, not retyped. ``asked`` names the entries
    planned for (target, installable, named)."""
    if not batch.lines:
        return [f"every {asked} entry has GPU evidence in both modes"]
    out = []
    for line in batch.lines:
        approx = "" if line.exact else "~"
        out.append(f"{line.stack} torch {line.torch}: {len(line.entries)} entries, {approx}{line.parts} parts "
                   f"({approx}{line.payload_bytes / 2**30:.2f} GiB, {approx}{line.minutes:.1f} min of calls"
                   + (f"; {_size(line.deb_bytes)} of it system libraries" if line.deb_bytes else "") + ")")
        for entry in line.entries:
            have = proven.get(entry.name)
            out.append(f"  {entry.name}" + (f"  (proven: {', '.join(have)} only)" if have else ""))
    for number, hold in enumerate(batch.holds, start=1):
        late = " (past the hold's end: expect it unfinished)" if hold.end_s > HOLD_S - END_MARGIN_S else ""
        out.append(f"hold {number}: {hold.parts} parts, suites end near {hold.end_s / 60:.0f} min{late}: "
                   + ", ".join(f"{e.name} ({part})" for e, part in zip(hold.entries, hold.ready_parts, strict=True)))
        names = [e.name for e in hold.entries]
        out.append(f"  rollout-matrix bundle --python {python} --part-mib {PART_MIB} --out .gpu/hold-{number}"
                   + (f" --borrow {borrow}" if borrow else "") + f" {' '.join(names)}")
        out.append(f"  keep='{'|'.join(names)}'")
        out.append(f"  first call, alone: gpuenv receive .gpu/hold-{number}/part-000; gpuenv pipeline --background "
                   f"--parallel {batch.pace.flag} {' '.join(names)}; nvidia-smi --query-gpu=name --format=csv,noheader")
        waits = "gpuenv wait --max 240 --collect $OUT, back to back"
        out.append(f"  then: gpuenv receive .gpu/hold-{number}/part-NNN --collect $OUT for 001-{hold.parts - 1:03d}, "
                   f"ten calls a message; after the last, {waits}" if hold.parts > 1 else
                   f"  then: nothing more to send (part-000 is the whole bundle: the machine lends the rest); {waits}")
    out.append(f"{sum(len(line.entries) for line in batch.lines)} entries in {len(batch.holds)} holds of one H200 "
               f"(an entry's number: the parts after which it is complete; lines in one hold share few files; "
               f"gpuenv: PYTHONPATH=src python3 -m rollout_matrix.gpuenv)")
    return out
