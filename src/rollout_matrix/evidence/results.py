"""The results contract: what a run of tests/engine leaves, how it is read, and its verdict.

A run leaves a folder with ``junit.xml`` (pytest's) and ``run.json`` (a :class:`RunRecord`: where and
on what it ran). Two kinds of run exist and are never mixed:

* ``cpu``: no GPU was visible (a matrix image on a CPU host). Only the CPU half of the suite can pass;
  this proves installability and argument mapping, never generation.
* ``gpu``: a GPU was visible (an image on a GPU runner, or a lock-exact venv on the GPU machine).

Local runs land in ``results/<entry>/`` (not committed).
:func:`rollout_matrix.evidence.committed.record` promotes one into the committed evidence,
``cpu-results/<entry>/`` or ``gpu-results/<entry>/`` by its kind, and refuses to replace evidence with
less (a failing run over a passing one, fewer passed tests in its half); the report renders only
committed evidence, so a partial local run can never shrink the published page.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import stat
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rollout_matrix.atomic import write_atomic
from rollout_matrix.errors import EvidenceError, brief

RUN_SCHEMA = 2
JUNIT = "junit.xml"
RUN_JSON = "run.json"
LOG = "pytest.log"
KINDS = ("cpu", "gpu")
EVIDENCE_DIRS = {"cpu": "cpu-results", "gpu": "gpu-results"}
LOCAL_RESULTS = "results"
PYTEST_NO_TESTS = 5

#: The largest file of each kind a run may hold: a few KB each today (the largest log is 18 KB);
#: anything near these is not a pytest run, and committed evidence must stay small.
MAX_BYTES = {RUN_JSON: 1 << 20, JUNIT: 16 << 20, LOG: 16 << 20}

#: Which half of tests/engine a test case belongs to, from its JUnit classname (tests.engine.test_gpu...).
_GPU_MODULE = re.compile(r"(^|\.)test_gpu\w*$")
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class ResultsError(EvidenceError):
    """A results folder that cannot be read as a run (the cause is in the message)."""


def read_regular(path: Path, shown: str | None = None) -> bytes:
    """The bytes of ``path``, a regular file of at most ``MAX_BYTES[path.name]``, opened without following a
    symbolic link (a pytest.log linked to /etc/shadow must not become committed evidence)."""
    label = shown or str(path)
    limit = MAX_BYTES.get(path.name, 1 << 20)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)  # a FIFO must not hang us
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if os.path.islink(path):
            raise ResultsError(f"{label}: is a symbolic link; results hold regular files only: copy the file "
                               "itself there") from None
        raise ResultsError(f"{label}: cannot be read ({exc.strerror}); check the file") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # a folder, a FIFO, a device: before fdopen, which refuses folders
        os.close(fd)
        raise ResultsError(f"{label}: is not a regular file; results hold regular files only")
    with os.fdopen(fd, "rb") as fh:
        if info.st_size > limit:
            raise ResultsError(f"{label}: {info.st_size} bytes, over the {limit >> 20} MiB a {path.name} may have; "
                               "this is not the file a test run writes: run the tests again")
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise ResultsError(f"{label}: cannot be read ({exc.strerror}); check the file") from None
    if len(data) > limit:
        raise ResultsError(f"{label}: over the {limit >> 20} MiB a {path.name} may have; run the tests again")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 1 << 63


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _lock_ok(value: Any) -> bool:
    return value is None or (
        isinstance(value, dict) and isinstance(value.get("path"), (str, type(None)))
        and isinstance(value.get("sha256"), str) and _SHA256.fullmatch(value["sha256"]) is not None
        and (value.get("packages") is None or _is_int(value["packages"])))


def _machine_ok(value: Any) -> bool:
    return value is None or (
        isinstance(value, dict) and _is_str_list(value.get("gpu_names", []))
        and _is_int(value.get("gpu_count", 0)) and isinstance(value.get("torch", ""), (str, type(None))))


#: run.json field -> (check, what it must be). Checked before anything reads a field, so ``gpu_names: 5``,
#: ``lock: "x"`` or ``started: 20261129`` is one line naming the file and the field, not a TypeError.
_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "entry": (lambda v: isinstance(v, str), "must be a string"),
    "kind": (lambda v: isinstance(v, str), "must be a string"),
    "environment": (lambda v: isinstance(v, str), "must be a string"),
    "started": (lambda v: isinstance(v, str) and _DATE.match(v) is not None,
                'must be an ISO date and time, e.g. "2026-11-29T10:00:00+00:00"'),
    "seconds": (lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                        and math.isfinite(v) and v >= 0), "must be a number of seconds or null"),
    "exit_code": (lambda v: v is None or _is_int(v), "must be an integer or null"),
    "build_error": (lambda v: v is None or isinstance(v, str), "must be a string or null"),
    "shim": (lambda v: v is None or isinstance(v, str), "must be a string or null"),
    "image": (lambda v: v is None or isinstance(v, dict), "must be a mapping or null"),
    "lock": (_lock_ok, "must be null or give path (a string) and sha256 (sha256:<64 hex digits>)"),
    "machine": (_machine_ok, "must be null or a mapping with gpu_names a list of strings, gpu_count an integer "
                             "and torch a string"),
    "pytest_args": (_is_str_list, "must be a list of strings"),
    "schema": (_is_int, "must be an integer"),
}


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
        write_atomic(path, json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, path: Path, shown: str | None = None) -> RunRecord:
        """The run.json at ``path`` (``shown``: how messages name it), every field type-checked."""
        label = shown or str(path)
        try:
            data = read_regular(path, label)
        except FileNotFoundError:
            raise ResultsError(f"{label}: no run.json; the run did not finish writing its results") from None
        return cls.parse(data, label)

    @classmethod
    def parse(cls, data: bytes, label: str) -> RunRecord:
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ResultsError(f"{label}: unreadable ({exc.__class__.__name__}); run the tests again") from None
        if not isinstance(raw, dict) or raw.get("schema") != RUN_SCHEMA:
            raise ResultsError(f"{label}: not a run.json of schema {RUN_SCHEMA}; run the tests again")
        fields = cls.__dataclass_fields__
        missing = [n for n, f in fields.items()
                   if n not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ResultsError(f"{label}: missing {', '.join(missing)}; run the tests again")
        for name, (ok, must) in _FIELDS.items():
            if name in raw and not ok(raw[name]):
                raise ResultsError(f"{label}: {name} {brief(raw[name], 40)} {must}; run the tests again")
        record = cls(**{k: v for k, v in raw.items() if k in fields})
        if record.kind not in KINDS:
            raise ResultsError(f"{label}: kind {brief(record.kind)} is not one of {', '.join(KINDS)}")
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


def read_junit(path: Path, shown: str | None = None) -> dict[str, Counts]:
    """Counts per half (``cpu``: test_cpu.py and the rest; ``gpu``: test_gpu*.py), from the testcases.

    Testcases rather than the suites' totals, because the split is the point: a CPU run skips every GPU
    test, and only the GPU half says anything about generation.
    """
    label = shown or str(path)
    try:
        root = ET.fromstring(read_regular(path, label))
    except FileNotFoundError:
        raise ResultsError(f"{label}: no JUnit file; the tests did not get to report") from None
    except ET.ParseError as exc:
        raise ResultsError(f"{label}: not readable JUnit XML ({exc})") from None
    cases = list(root.iter("testcase"))
    if not cases and not list(root.iter("testsuite")):
        raise ResultsError(f"{label}: no <testsuite> element")
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


REJECTED = "rejected"
"""Committed evidence that cannot be trusted as its folder's entry (unreadable, another entry, kind or
lock): the report counts it for nothing and says why."""


def load(folder: Path, kind: str | None = None, root: Path | None = None) -> Evidence:
    """The run in ``folder`` (``kind``: what the folder must hold; None: whatever run.json says).
    ``root``: messages name files relative to it (the checkout), not by absolute path."""
    def shown(name: str) -> str:
        path = folder / name
        return str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else str(path)

    run = RunRecord.read(folder / RUN_JSON, shown(RUN_JSON))
    if kind is not None and run.kind != kind:
        raise ResultsError(f"{shown(RUN_JSON)}: holds a {run.kind} run, not a {kind} one")
    halves = None
    note = ""
    if not run.build_error:
        try:
            halves = read_junit(folder / JUNIT, shown(JUNIT))
        except ResultsError as exc:
            note = str(exc)
    verdict, why = judge(run.kind, run, halves)
    return Evidence(entry=run.entry, kind=run.kind, folder=folder, run=run, halves=halves, verdict=verdict,
                    note="; ".join(x for x in (why, note) if x))


def merge_junit(parts: list[Path], target: Path) -> None:
    """One JUnit file of the suites in ``parts`` (those that exist and parse; pytest writes one per
    process, and gpuenv runs tests/engine once per engine mode), as ``<testsuites>`` of their
    ``<testsuite>`` elements: what ``read_junit`` and the band table read. Nothing is written when no
    part exists (the run recorded no test)."""
    suites = []
    for part in parts:
        try:
            root = ET.fromstring(part.read_bytes())
        except (OSError, ET.ParseError):
            continue
        suites.extend([root] if root.tag == "testsuite" else root.findall("testsuite"))
    if suites:
        merged = ET.Element("testsuites")
        merged.extend(suites)
        target.write_bytes(ET.tostring(merged, encoding="utf-8", xml_declaration=True))
