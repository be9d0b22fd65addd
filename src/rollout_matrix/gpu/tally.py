"""Where every entry of a hold stands, in one line each: what ``gpuenv wait`` prints when it returns.

Why: the machine goes back 30 s after a call ends. Reading results between calls (unpacking the
collected archive, grepping logs) took longer than that twice on 2026-12-03, and each time the running
suites went with the machine. With each mode's outcome and the names of failed tests in the output of
the call that held the machine, the next call can follow at once.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from rollout_matrix.evidence.band_status import MODES
from rollout_matrix.evidence.results import LOG, RUN_JSON
from rollout_matrix.gpu import kernels, places, store
from rollout_matrix.gpu.suite import MODE_HEADER, SCRIPT_LINE, SCRIPTS_LOG, mode_junit

_VERDICT = re.compile(r"(?<![\w-])(PASSED|FAILED|ERROR|SKIPPED)(?![\w-])")
_SUMMARY = re.compile(r"^(?:FAILED|ERROR) \S+::")  # pytest's short summary repeats a failure


def _mode_from_junit(path: Path) -> str:
    """``N passed, F failed (names), S skipped`` from a mode's JUnit file, or why it cannot be read."""
    try:
        cases = list(ET.parse(path).getroot().iter("testcase"))
    except (OSError, ET.ParseError) as exc:
        return f"unreadable JUnit ({exc})"
    failed = [c.get("name", "?") for c in cases if c.find("failure") is not None or c.find("error") is not None]
    skipped = sum(1 for c in cases if c.find("skipped") is not None)
    said = f"{len(cases) - len(failed) - skipped} passed"
    if failed:
        said += f", {len(failed)} failed ({', '.join(failed)})"
    return said + (f", {skipped} skipped" if skipped else "")


def _running_from_log(path: Path, finished: set[str]) -> str:
    """The mode still running, from its part of the log (after suite.py's last mode header): the verdict
    words pytest has printed so far. A test id can share a line with engine output, so this counts the
    words; the names of failed tests come from the mode's JUnit file once it ends. A mode in
    ``finished`` (its JUnit is written) whose process has not exited yet is said to be ending: engines'
    children can take a while (2026-12-04: "running graphs" after graphs' JUnit, which read as a rerun)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"log unreadable ({exc.strerror})"
    headers = list(MODE_HEADER.finditer(text))
    if not headers:
        if places.LOG_HEADER in text:  # written after the kernel build
            return places.LOG_HEADER
        return "building FlashInfer's kernels before the suite" if kernels.LOG_HEADER in text else "no mode started yet"
    if headers[-1].group(1) in finished:
        return f"the {headers[-1].group(1)} process still exiting"
    part = text[headers[-1].end():]
    words = [w for line in part.splitlines() if not _SUMMARY.match(line) for w in _VERDICT.findall(line)]
    counts = ", ".join(f"{words.count(w)} {w.lower()}" for w in ("PASSED", "FAILED", "ERROR", "SKIPPED")
                       if w in words)
    return f"running {headers[-1].group(1)}: so far {counts or 'nothing reported'}"


def _scripts_from_log(path: Path) -> str:
    """The entry's ``ENTRY=SCRIPT`` steps in the order they ran: each script's exit code and seconds,
    or that it is running (started, no exit line yet)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"scripts: log unreadable ({exc.strerror})"
    steps: list[str] = []
    script = None
    for match in SCRIPT_LINE.finditer(text):
        if match.group(1):
            if script:  # a start after a start: the first one's exit line never came
                steps.append(f"{script} ended unreported")
            script = Path(match.group(1)).name
        elif script:
            steps.append(f"{script} exit {match.group(2)} after {match.group(3)}s")
            script = None
    if script:
        steps.append(f"{script} running")
    return "scripts: " + (", ".join(steps) or "none started yet")


def entry_line(folder: Path) -> str:
    """One entry's state: each finished mode from its JUnit file, the running one from the log, then
    its scripts (a benchmark's pipeline step has no suite: 2026-12-06's `wait` said "no suite output
    yet" of entries whose benchmarks had all ended)."""
    finished = [mode for mode in MODES if mode_junit(folder, mode).is_file()]
    parts = [f"{mode}: {_mode_from_junit(mode_junit(folder, mode))}" for mode in finished]
    scripts = (folder / SCRIPTS_LOG).is_file()
    if len(parts) < len(MODES):
        if (folder / RUN_JSON).is_file():
            parts.append(f"ended with {len(MODES) - len(parts)} of {len(MODES)} modes unreported")
        elif (folder / LOG).is_file():
            parts.append(_running_from_log(folder / LOG, set(finished)))
        elif not parts and not scripts:
            parts.append("no suite output yet")
    if scripts:
        parts.append(_scripts_from_log(folder / SCRIPTS_LOG))
    return f"{folder.name}: " + "; ".join(parts)


def lines() -> list[str]:
    """A line per entry that has results under the machine's root, in name order."""
    results = store._dirs()["results"]
    return [entry_line(folder) for folder in sorted(p for p in results.iterdir() if p.is_dir())]
