"""How a hold's suites shared the GPU lock, read back from their logs (issue 19's throughput figure).

Read here, on the CPU machine, from the results ``collect`` brought back (or the committed ones).

Why: an engine start holds tests/engine's GPU lock alone (gpu_share.py), so while one starts, every
other suite's GPU work waits. Each suite process ends its log with one ``[share]`` line: the seconds it
waited for the lock, the seconds it held it alone, and (from 2026-12-04) each exclusive hold's
wall-clock span. Put together, the spans are the lock's timeline: how much of a hold it was held
alone, which says whether one more place on the GPU would pay. Until now that was summed by hand per
hold; this module is that sum, made once.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from rollout_matrix.errors import brief
from rollout_matrix.gpu.suite import MODE_HEADER

SHARE = re.compile(r"\[share\] this process waited (?P<waited>[\d.]+)s in all for the GPU lock and held it alone "
                   r"(?P<alone>[\d.]+)s over (?P<starts>\d+) engine start\(s\)(?: \((?P<spans>[^)]*)\))?")
SPAN = re.compile(r"(\d\d:\d\d:\d\d(?:\.\d+)?)-(\d\d:\d\d:\d\d(?:\.\d+)?)")


@dataclass
class SuiteProcess:
    """One suite process's ``[share]`` line: the entry, its mode, and what the lock cost it."""

    entry: str
    mode: str
    waited: float
    alone: float
    starts: int
    spans: list[tuple[datetime, datetime]] = field(default_factory=list)


@dataclass
class Timeline:
    processes: list[SuiteProcess]
    start: datetime
    end: datetime

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    def held(self, start: datetime | None = None, end: datetime | None = None) -> float:
        """Seconds the lock was held alone between ``start`` and ``end`` (default: the whole window)."""
        lo, hi = start or self.start, end or self.end
        return sum(max(0.0, (min(b, hi) - max(a, lo)).total_seconds())
                   for p in self.processes for a, b in p.spans)

    def overlaps(self) -> list[tuple[str, str]]:
        """Pairs of suite processes whose exclusive spans overlap: none, if the lock did its job."""
        spans = sorted((a, b, f"{p.entry} {p.mode}") for p in self.processes for a, b in p.spans)
        return [(spans[i][2], spans[i + 1][2]) for i in range(len(spans) - 1) if spans[i + 1][0] < spans[i][1]]


def suite_processes(log: Path, entry: str, day: datetime) -> list[SuiteProcess]:
    """The ``[share]`` lines of one suite's pytest.log, each with the mode of the section it ends."""
    found, mode = [], "?"
    for number, line in enumerate(log.read_text(errors="replace").splitlines(), 1):
        if m := MODE_HEADER.match(line):
            mode = m.group(1)
        elif m := SHARE.search(line):
            try:
                spans = [(_at(day, a), _at(day, b)) for a, b in SPAN.findall(m.group("spans") or "")]
                found.append(SuiteProcess(entry, mode, float(m.group("waited")), float(m.group("alone")),
                                          int(m.group("starts")), spans))
            except ValueError as exc:  # a damaged line: name where it is, not only what strptime saw
                raise ValueError(f"{log}:{number}: a [share] line that does not read ({exc})") from None
    return found


def timeline(results: Path) -> Timeline:
    """The lock's timeline over ``results/<entry>/`` (pytest.log + run.json each, as collected from the GPU
    machine or committed): the window runs from the first suite's start to the last one's end. The spans
    are the GPU machine's local clock and run.json's start is UTC: the H200s lent so far run on UTC."""
    processes, starts, ends = [], [], []
    for run in sorted(results.glob("*/run.json")):
        begun, ended = run_window(run)
        starts.append(begun)
        ends.append(ended)
        if (log := run.parent / "pytest.log").is_file():
            processes += suite_processes(log, run.parent.name, begun)
    if not starts:
        raise ValueError(f"no <entry>/run.json under {results}")
    return Timeline(processes, min(starts), max(ends))


def run_window(run: Path) -> tuple[datetime, datetime]:
    """When one suite ran (naive UTC): run.json's ``started`` and ``started`` + ``seconds``.

    Why checked here: a damaged or hand-edited run.json (``[]``, ``{"started": 5}``, no ``started``) gave a
    TypeError traceback or a bare ``'started'``; a ValueError naming the file and the field is what
    ``gpu-lock`` turns into its one line with exit 2.
    """
    facts = _run_facts(run)
    started, seconds = facts["started"], facts.get("seconds") or 0
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < _MAX_SECONDS:
        raise ValueError(f"{run}: 'seconds' is {brief(seconds)}, not a duration in seconds")
    try:
        begun = datetime.fromisoformat(started).astimezone(timezone.utc).replace(tzinfo=None)
        return begun, begun + timedelta(seconds=seconds)
    except (ValueError, OverflowError):  # not a time, or one past year 9999
        raise ValueError(f"{run}: 'started' is {brief(started)}, not an ISO 8601 time such as {_STARTED}") from None


def _run_facts(run: Path) -> dict:
    """run.json as a JSON object whose ``started`` is a string (its form is checked by the caller)."""
    try:
        facts = json.loads(run.read_text())
    except ValueError as exc:  # not JSON, or not UTF-8
        raise ValueError(f"{run}: not a JSON run record ({exc})") from None
    if not isinstance(facts, dict):
        raise ValueError(f"{run}: holds {brief(facts)}, not a JSON object with 'started' and 'seconds'")
    if "started" not in facts:
        raise ValueError(f"{run}: has no 'started' (the suite's start, e.g. {_STARTED})")
    if not isinstance(facts["started"], str):
        raise ValueError(f"{run}: 'started' is {brief(facts['started'])}, not an ISO 8601 time such as {_STARTED}")
    return facts


_STARTED = "2026-12-04T10:00:00+00:00"
_MAX_SECONDS = 366 * 86400
"""A suite's run is hours; a larger ``seconds`` (or NaN, which Python's JSON reader accepts) is damage."""


def _at(day: datetime, clock: str) -> datetime:
    """``HH:MM:SS.s`` on the day the suite started (a span past midnight lands on the next day)."""
    t = datetime.strptime(clock, "%H:%M:%S.%f" if "." in clock else "%H:%M:%S").time()
    at = datetime.combine(day.date(), t)
    return at + timedelta(days=1) if at < day - timedelta(hours=1) else at


def lines(tl: Timeline, splits: list[datetime] = ()) -> list[str]:
    """What ``rollout-matrix gpu-lock`` prints: one line per suite process, then the window, then each
    round between ``splits`` (e.g. when the second round's suites started)."""
    out = [f"{p.entry} {p.mode}: waited {p.waited:.1f}s, held alone {p.alone:.1f}s over {p.starts} start(s)"
           for p in tl.processes]
    bounds = [tl.start, *sorted(s for s in splits if tl.start < s < tl.end), tl.end]
    for lo, hi in itertools.pairwise(bounds):
        seconds = (hi - lo).total_seconds()
        held = tl.held(lo, hi)
        label = "window" if (lo, hi) == (tl.start, tl.end) else "round"
        out.append(f"{label} {lo:%H:%M:%S}-{hi:%H:%M:%S} ({seconds:.0f} s): lock held alone {held:.1f} s "
                   f"({held / seconds:.0%})" if seconds else f"{label} {lo:%H:%M:%S}: empty")
    if len(bounds) > 2:
        held = tl.held()
        out.append(f"window {tl.start:%H:%M:%S}-{tl.end:%H:%M:%S} ({tl.seconds:.0f} s): lock held alone "
                   f"{held:.1f} s ({held / tl.seconds:.0%})")
    waited = sum(p.waited for p in tl.processes)
    overlaps = tl.overlaps()
    out.append(f"{len(tl.processes)} suite processes waited {waited:.1f} s for the lock in all; "
               + (f"exclusive spans overlap: {overlaps}" if overlaps else "no exclusive spans overlap"))
    return out
