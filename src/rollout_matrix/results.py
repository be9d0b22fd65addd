"""The results contract: what a run of tests/engine leaves, how it is read, and how it becomes evidence.

A run leaves a folder with ``junit.xml`` (pytest's) and ``run.json`` (a :class:`RunRecord`: where and
on what it ran). Two kinds of run exist and are never mixed:

* ``cpu``: no GPU was visible (a matrix image on a CPU host). Only the CPU half of the suite can pass;
  this proves installability and argument mapping, never generation.
* ``gpu``: a GPU was visible (an image on a GPU runner, or a lock-exact venv on the GPU machine).

Local runs land in ``results/<entry>/`` (not committed). :func:`record` promotes one into the
committed evidence, ``cpu-results/<entry>/`` or ``gpu-results/<entry>/`` by its kind, and refuses to
replace evidence with less (a failing run over a passing one, fewer passed tests in its half); the
report renders only committed evidence, so a partial local run can never shrink the published page.
"""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rollout_matrix.errors import UserError

RUN_SCHEMA = 2
JUNIT = "junit.xml"
RUN_JSON = "run.json"
LOG = "pytest.log"
KINDS = ("cpu", "gpu")
EVIDENCE_DIRS = {"cpu": "cpu-results", "gpu": "gpu-results"}
LOCAL_RESULTS = "results"
PYTEST_NO_TESTS = 5

#: Which half of tests/engine a test case belongs to, from its JUnit classname (tests.engine.test_gpu...).
_GPU_MODULE = re.compile(r"(^|\.)test_gpu\w*$")


class ResultsError(UserError):
    """A results folder that cannot be read as a run (the cause is in the message)."""


@dataclass
class RunRecord:
    """``run.json``: what ran, where, and how it ended. One schema for image runs and GPU-machine runs."""

    entry: str
    kind: str  # "cpu" or "gpu": whether a GPU was visible to the suite
    environment: str  # "image" (a matrix image) or "bundle" (a lock-exact venv on an offline machine)
    started: str
    seconds: float | None = None
    exit_code: int | None = None
    build_error: str | None = None  # the image did not build: no test ran
    shim: str | None = None
    image: dict[str, Any] | None = None  # readable_ref, content_ref, image_id, repo_digests, base_image
    lock: dict[str, Any] | None = None  # path, sha256, inputs_hash, packages
    machine: dict[str, Any] | None = None  # gpu names/count, driver, python, torch, torch_cuda
    pytest_args: list[str] = field(default_factory=list)
    schema: int = RUN_SCHEMA

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / RUN_JSON
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: Path) -> RunRecord:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ResultsError(f"{path}: no run.json; the run did not finish writing its results") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ResultsError(f"{path}: unreadable ({exc.__class__.__name__}); run the tests again") from None
        if not isinstance(raw, dict) or raw.get("schema") != RUN_SCHEMA:
            raise ResultsError(f"{path}: not a run.json of schema {RUN_SCHEMA}; run the tests again")
        known = {f for f in cls.__dataclass_fields__}
        try:
            record = cls(**{k: v for k, v in raw.items() if k in known})
        except TypeError as exc:
            raise ResultsError(f"{path}: {exc}; run the tests again") from None
        if record.kind not in KINDS:
            raise ResultsError(f"{path}: kind {record.kind!r} is not one of {', '.join(KINDS)}")
        return record


@dataclass(frozen=True)
class Counts:
    """Test outcomes of one half of the suite, as the JUnit file states them."""

    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0

    @property
    def passed(self) -> int:
        return max(0, self.tests - self.failures - self.errors - self.skipped)

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tests + other.tests, self.failures + other.failures, self.errors + other.errors,
                      self.skipped + other.skipped)


def read_junit(path: Path) -> dict[str, Counts]:
    """Counts per half (``cpu``: test_cpu.py and the rest; ``gpu``: test_gpu*.py), from the testcases.

    Testcases rather than the suites' totals, because the split is the point: a CPU run skips every GPU
    test, and only the GPU half says anything about generation.
    """
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise ResultsError(f"{path}: no JUnit file; the tests did not get to report") from None
    except (ET.ParseError, OSError) as exc:
        raise ResultsError(f"{path}: not readable JUnit XML ({exc})") from None
    cases = list(root.iter("testcase"))
    if not cases and not list(root.iter("testsuite")):
        raise ResultsError(f"{path}: no <testsuite> element")
    halves = {"cpu": Counts(), "gpu": Counts()}
    for case in cases:
        half = "gpu" if _GPU_MODULE.search(case.get("classname", "")) else "cpu"
        outcome = Counts(
            tests=1,
            failures=int(case.find("failure") is not None),
            errors=int(case.find("error") is not None and case.find("failure") is None),
            skipped=int(case.find("skipped") is not None),
        )
        halves[half] = halves[half] + outcome
    return halves


# -- verdicts -------------------------------------------------------------------------------------------

PASSED = "passed"
FAILED = "failed"
ERROR = "error"
BUILD_FAILED = "build failed"
NOT_RUN = "not run"
SKIPPED = "all skipped"


@dataclass(frozen=True)
class Evidence:
    """One committed (or local) run of one entry, with its verdict for the half its kind proves."""

    entry: str
    kind: str
    folder: Path
    run: RunRecord | None
    halves: dict[str, Counts] | None
    verdict: str
    note: str = ""

    @property
    def counts(self) -> Counts | None:
        """The half this kind of run proves: the CPU half for cpu runs, the GPU half for gpu runs."""
        return self.halves[self.kind] if self.halves else None

    @property
    def finished(self) -> str | None:
        return self.run.started if self.run else None


def judge(kind: str, run: RunRecord | None, halves: dict[str, Counts] | None) -> tuple[str, str]:
    """(verdict, note) of a run for the half its kind proves.

    A gpu run passes when its GPU half passed at least one test with no failure or error, its CPU half
    has none either, and pytest exited 0. A cpu run passes when its CPU half did. Anything that did not
    get to report is an error, never a pass.
    """
    if run is not None and run.build_error:
        return BUILD_FAILED, f"the image did not build: {run.build_error}"
    if halves is None:
        code = run.exit_code if run else None
        return ERROR, f"no usable JUnit file (pytest exit code {code})"
    proven = halves[kind]
    broken = [h for h, c in halves.items() if c.failures or c.errors]
    if broken:
        return FAILED, f"failures in the {' and '.join(broken)} half"
    if run is not None and run.exit_code not in (0, PYTEST_NO_TESTS):
        return ERROR, f"pytest exited {run.exit_code} although the JUnit file records no failure"
    if proven.passed == 0:
        return SKIPPED, f"every {kind.upper()} test was skipped"
    return PASSED, ""


def load(folder: Path, kind: str | None = None) -> Evidence:
    """The run in ``folder`` (``kind``: what the folder must hold; None: whatever run.json says)."""
    run = RunRecord.read(folder / RUN_JSON)
    if kind is not None and run.kind != kind:
        raise ResultsError(f"{folder}: holds a {run.kind} run, not a {kind} one")
    halves = None
    note = ""
    if not run.build_error:
        try:
            halves = read_junit(folder / JUNIT)
        except ResultsError as exc:
            note = str(exc)
    verdict, why = judge(run.kind, run, halves)
    return Evidence(entry=run.entry, kind=run.kind, folder=folder, run=run, halves=halves, verdict=verdict,
                    note="; ".join(x for x in (why, note) if x))


def committed(root: Path, kind: str) -> dict[str, Evidence]:
    """Every entry's committed evidence of one kind under ``root`` (the checkout)."""
    base = root / EVIDENCE_DIRS[kind]
    found: dict[str, Evidence] = {}
    if not base.is_dir():
        return found
    for folder in sorted(p for p in base.iterdir() if (p / RUN_JSON).is_file()):
        try:
            found[folder.name] = load(folder, kind)
        except ResultsError as exc:
            found[folder.name] = Evidence(folder.name, kind, folder, None, None, ERROR, str(exc))
    return found


# -- promoting a local run to evidence -------------------------------------------------------------------

_RANK = {PASSED: 3, SKIPPED: 1, FAILED: 1, ERROR: 0, BUILD_FAILED: 0}


def is_less(new: Evidence, old: Evidence) -> str | None:
    """Why ``new`` would be less evidence than ``old`` (None: it is not)."""
    if _RANK[new.verdict] < _RANK[old.verdict]:
        return f"it {new.verdict} where the recorded run {old.verdict}"
    if new.counts and old.counts and new.counts.passed < old.counts.passed:
        return f"it passed {new.counts.passed} {new.kind.upper()} tests where the recorded run passed {old.counts.passed}"
    return None


def record(source: Path, root: Path, replace: bool = False) -> tuple[Path, Evidence]:
    """Copy the run in ``source`` into ``root/<cpu|gpu>-results/<entry>/``; never over better evidence
    unless ``replace``. Returns the destination and the recorded evidence."""
    new = load(source)
    dest = root / EVIDENCE_DIRS[new.kind] / new.entry
    if (dest / RUN_JSON).is_file() and not replace:
        try:
            old = load(dest, new.kind)
        except ResultsError:
            old = None
        why = is_less(new, old) if old else None
        if why:
            raise UserError(f"{new.entry}: not recorded: {why} ({dest}); pass --replace to record it anyway")
    staging = dest.with_name(dest.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in (RUN_JSON, JUNIT, LOG):
        if (source / name).is_file():
            shutil.copy2(source / name, staging / name)
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    return dest, load(dest, new.kind)
