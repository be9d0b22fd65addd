"""The compatibility report: one row per release of the matrix, from the test results of its image.

``rollout-matrix test ENTRY`` leaves ``results/<entry>/junit.xml`` (pytest's JUnit XML of tests/engine
run inside the image) and ``results/<entry>/run.json`` (image, digests, labels, GPU or not, times).
:func:`write_report` turns a directory of those into ``compatibility.md`` (committed, read on GitHub)
and ``compatibility.html`` (one static file, no scripts, no network: it opens from disk or an artifact).

Every release of the matrix gets a row, results or not, because the point of the page is to say what
is known: a release without results is shown as "not run", never as passing, and a run that left no
usable JUnit file is an "error", not a pass. The numbers are the JUnit file's own. Output depends only
on the inputs (no "generated at" time), so regenerating from the same results changes nothing in git.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from rollout_matrix.errors import UserError
from rollout_matrix.matrix import Entry, Matrix, load_matrix

JUNIT = "junit.xml"
RUN_JSON = "run.json"
MARKDOWN = "compatibility.md"
HTML = "compatibility.html"

PASSED = "passed"
FAILED = "failed"
ERROR = "error"
NO_TESTS = "no tests"
ALL_SKIPPED = "all skipped"
NOT_RUN = "not run"
BUILD_FAILED = "build failed"
# The order statuses are counted in, worst first after "passed" so a summary reads naturally.
STATUSES = (PASSED, FAILED, ERROR, BUILD_FAILED, NO_TESTS, ALL_SKIPPED, NOT_RUN)
UNKNOWN = "?"
NONE = "—"  # an empty cell: nothing to show (a release never run has no counts)
PYTEST_NO_TESTS = 5  # pytest's exit code when it collected nothing
MATRIX_NAME = "matrix.yaml"


class JUnitError(ValueError):
    """A JUnit file that cannot be read as test results (the row becomes an error, not a crash)."""


@dataclass(frozen=True)
class JUnitCounts:
    """The totals of a JUnit file, as its testsuites state them."""

    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    timestamp: str | None = None  # the first suite's start time, when the file gives one

    @property
    def passed(self) -> int:
        # pytest counts skipped and errored tests in `tests`; a test that fails and then errors in
        # teardown is counted in both, so clamp rather than show a negative number.
        return max(0, self.tests - self.failures - self.errors - self.skipped)


def parse_junit(path: Path) -> JUnitCounts:
    """Sum tests/failures/errors/skipped over the leaf ``<testsuite>`` elements of a JUnit file.

    Leaf suites only: some writers nest suites and repeat the totals on the parent, which would count
    everything twice. A file without any suite (pytest always writes one) is an error, not zero tests.
    """
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise JUnitError(f"{path.name} is not readable JUnit XML ({exc})") from None
    suites = [s for s in root.iter("testsuite") if s.find("testsuite") is None]
    if not suites:
        raise JUnitError(f"{path.name} has no <testsuite> element")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in totals:
            raw = suite.get(key, "0")
            try:
                totals[key] += int(raw)
            except ValueError:
                raise JUnitError(f"{path.name}: testsuite {key}={raw!r} is not a number") from None
    return JUnitCounts(**totals, timestamp=suites[0].get("timestamp"))


@dataclass(frozen=True)
class Row:
    """One release as the report shows it."""

    entry: str
    engine: str
    release: str
    status: str
    band: str
    image: str  # the readable reference that was tested (or the tag it would have)
    digest: str  # repo@sha256:… from the registry, else the local image id, else ""
    torch: str
    cuda: str
    counts: JUnitCounts | None
    gpu: bool | None
    finished: str | None  # ISO 8601, from run.json (else the JUnit timestamp)
    notes: tuple[str, ...] = ()

    @property
    def tag(self) -> str:
        """The tag part of ``image`` (what people search for on the registry page)."""
        last = self.image.rsplit("/", 1)[-1]
        return last.split(":", 1)[1] if ":" in last else last

    @property
    def short_digest(self) -> str:
        """``sha256:`` and 12 hex digits: enough to tell images apart in a table."""
        if not self.digest:
            return ""
        algo_hex = self.digest.rsplit("@", 1)[-1]
        algo, _, hexpart = algo_hex.partition(":")
        return f"{algo}:{hexpart[:12]}" if hexpart else algo_hex[:19]

    @property
    def digest_is_local(self) -> bool:
        """True when only the local image id is known (the image was never pushed or pulled)."""
        return bool(self.digest) and "@" not in self.digest

    @property
    def runner(self) -> str:
        if self.status == NOT_RUN:
            return NONE
        return {True: "GPU", False: "CPU only"}.get(self.gpu, UNKNOWN)  # type: ignore[arg-type]

    @property
    def date(self) -> str:
        """The day the tests finished, UTC (``YYYY-MM-DD``), or a dash."""
        when = _parse_time(self.finished)
        return when.strftime("%Y-%m-%d") if when else NONE


@dataclass
class ReportSummary:
    """What :func:`write_report` did: the rows, the files written, result folders it did not use."""

    rows: list[Row]
    markdown: Path
    html: Path
    unknown: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Releases per status, every status present (zeros included) in :data:`STATUSES` order."""
        seen = Counter(r.status for r in self.rows)
        return {s: seen.get(s, 0) for s in STATUSES}

    def line(self) -> str:
        """One line for the terminal / the CI log."""
        parts = ", ".join(f"{n} {s}" for s, n in self.counts().items() if n)
        extra = f"; ignored results for unknown releases: {', '.join(self.unknown)}" if self.unknown else ""
        return f"{len(self.rows)} releases: {parts} -> {self.markdown}, {self.html}{extra}"


# -- reading results ----------------------------------------------------------------------------------


def _parse_time(value: str | None) -> datetime | None:
    """An ISO 8601 time in UTC (a time without zone is taken as UTC, as CI runners keep it)."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


def _read_run(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """run.json as a dict, or None with the reason it could not be used."""
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"run.json unreadable ({exc})"
    if not isinstance(data, dict):
        return None, "run.json is not a JSON object"
    return data, None


def _band_lookup() -> Callable[[Entry], str | None]:
    """The shim band of a release, from rollout_shims' band table (via :mod:`rollout_matrix.shim_band`).

    Guarded: the report must still work (showing "?") when rollout_shims is absent or broken, since
    the band only labels rows; a run's own ``shim`` field in run.json takes precedence anyway.
    """
    try:
        from rollout_matrix.shim_band import shim_for
    except Exception:
        return lambda entry: None

    def lookup(entry: Entry) -> str | None:
        try:
            shim = shim_for(entry)
        except Exception:
            return None
        return str(shim) if shim else None

    return lookup


def _result_dir(results_dir: Path, name: str) -> Path | None:
    """``results/<entry>/``, or ``results/<artifact>/<entry>/`` (artifacts downloaded without merging)."""
    direct = results_dir / name
    if direct.is_dir():
        return direct
    nested = sorted(p for p in results_dir.glob(f"*/{name}") if p.is_dir())
    return nested[0] if nested else None


def _status(counts: JUnitCounts, exit_code: Any) -> tuple[str, str | None]:
    """The status of a run that left a JUnit file; a note when the exit code tells more than the counts."""
    if counts.failures or counts.errors:
        return FAILED, None
    if counts.tests == 0:
        return NO_TESTS, None
    if isinstance(exit_code, int) and exit_code not in (0, PYTEST_NO_TESTS):
        return ERROR, f"pytest exited {exit_code} although the JUnit file has no failure"
    if counts.passed == 0:
        return ALL_SKIPPED, None
    return PASSED, None


def build_row(entry: Entry, folder: Path | None, band_of: Callable[[Entry], str | None]) -> Row:
    """The row of one release from its result folder (``None``: no results at all)."""
    run, run_problem = _read_run(folder / RUN_JSON) if folder else (None, None)
    junit = folder / JUNIT if folder else None
    has_junit = junit is not None and junit.is_file()
    run = run or {}
    labels = run.get("labels") if isinstance(run.get("labels"), dict) else {}
    notes: list[str] = [run_problem] if run_problem else []

    counts: JUnitCounts | None = None
    if not run and not has_junit:
        status = NOT_RUN
        if entry.unavailable:
            notes.append(f"its image cannot be built from PyPI: {entry.unavailable}")
    elif not has_junit and run.get("build_error"):
        status = BUILD_FAILED
        notes.append(f"the image did not build here: {run['build_error']}")
    elif not has_junit:
        status = ERROR
        code = run.get("exit_code", UNKNOWN)
        notes.append(f"no {JUNIT}: the tests did not get to report (exit code {code})")
    else:
        try:
            counts = parse_junit(junit)  # type: ignore[arg-type]
        except JUnitError as exc:
            status = ERROR
            notes.append(str(exc))
        else:
            status, note = _status(counts, run.get("exit_code"))
            if note:
                notes.append(note)
            if not run:
                notes.append("no run.json: image and runner unknown")

    digests = run.get("repo_digests") if isinstance(run.get("repo_digests"), list) else []
    digest = str(digests[0]) if digests else str(run.get("image_id") or "")
    torch = str(labels.get("io.rollout-matrix.torch") or entry.torch or NONE)
    cuda = str(labels.get("io.rollout-matrix.cuda") or entry.cuda)
    if run and entry.torch and labels.get("io.rollout-matrix.torch") not in (None, entry.torch):
        notes.append(f"image has torch {torch}, matrix.yaml says {entry.torch}")
    base = labels.get("io.rollout-matrix.base-image")
    if base and base != entry.stack.base_image:
        notes.append(f"built on {base} (Python {labels.get('io.rollout-matrix.python', '?')}), "
                     f"not the stack's {entry.stack.base_image}")
    gpu = run.get("gpu") if isinstance(run.get("gpu"), bool) else None
    finished = run.get("finished") or run.get("started") or (counts.timestamp if counts else None)
    return Row(
        entry=entry.name,
        engine=entry.engine,
        release=entry.version,
        status=status,
        band=str(run.get("shim") or band_of(entry) or UNKNOWN),
        image=str(run.get("image") or entry.readable_tag),
        digest=digest,
        torch=torch,
        cuda=cuda,
        counts=counts,
        gpu=gpu,
        finished=str(finished) if finished else None,
        notes=tuple(notes),
    )


def collect(matrix: Matrix, results_dir: Path) -> tuple[list[Row], list[str]]:
    """Rows for every matrix entry (file order) and the result folders that match no entry."""
    band_of = _band_lookup()
    rows = [build_row(entry, _result_dir(results_dir, entry.name), band_of) for entry in matrix]
    known = set(matrix.entries)
    unknown = sorted(
        p.name for p in results_dir.iterdir()
        if p.is_dir() and p.name not in known and ((p / JUNIT).is_file() or (p / RUN_JSON).is_file())
    ) if results_dir.is_dir() else []
    return rows, unknown


# -- rendering ----------------------------------------------------------------------------------------

COLUMNS = ("Release", "Status", "Shim band", "Image tag", "Digest", "torch", "CUDA",
           "Passed", "Failed", "Errors", "Skipped", "Runner", "Date")
NUMBER_COLUMNS = ("Passed", "Failed", "Errors", "Skipped")
LEGEND = (f"<b>{NOT_RUN}</b>: no results for that release in this report, so nothing is known about it; "
          f"<b>{ERROR}</b>: it ran but left no usable results; <b>{BUILD_FAILED}</b>: its image did not build "
          f"on that machine, so no test ran; <b>CPU only</b>: GPU tests were skipped.")


def _numbers(row: Row) -> tuple[str, str, str, str]:
    """Passed, failed, errors, skipped as shown; dashes when there is no JUnit file to count."""
    c = row.counts
    if c is None:
        return NONE, NONE, NONE, NONE
    return str(c.passed), str(c.failures), str(c.errors), str(c.skipped)


def _latest(rows: Iterable[Row]) -> str | None:
    """When the newest run finished: the report's date, taken from its inputs so output is reproducible."""
    times = [t for t in (_parse_time(r.finished) for r in rows) if t is not None]
    return max(times).strftime("%Y-%m-%d %H:%M UTC") if times else None


def _summary_text(summary: ReportSummary) -> str:
    counts = summary.counts()
    parts = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return f"{len(summary.rows)} releases: {parts}."


def _md(text: str) -> str:
    """A Markdown table cell: no pipes or newlines break the table, no HTML gets through."""
    return (text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
            .replace("<", "&lt;").replace(">", "&gt;"))


def render_markdown(summary: ReportSummary) -> str:
    """The committed page (docs/compatibility.md): a table GitHub renders, then the full digests."""
    rows = summary.rows
    latest = _latest(rows)
    out = [
        "# Engine compatibility",
        "",
        "Generated by `rollout-matrix report` from the JUnit results of each release's image "
        "(`results/<release>/junit.xml` and `run.json`); do not edit by hand.",
        "",
        f"**{_summary_text(summary)}**" + (f" Latest run: {latest}." if latest else ""),
        "",
        LEGEND.replace("<b>", "*").replace("</b>", "*"),
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---:" if c in NUMBER_COLUMNS else "---" for c in COLUMNS) + "|",
    ]
    for r in rows:
        digest = f"`{r.short_digest}`" + (" (local)" if r.digest_is_local else "") if r.digest else NONE
        status = f"**{r.status}**" if r.status in (FAILED, ERROR, BUILD_FAILED) else r.status
        cells = [f"`{_md(r.entry)}`", status, _md(r.band), f"`{_md(r.tag)}`", digest, _md(r.torch),
                 _md(r.cuda), *_numbers(r), r.runner, r.date]
        out.append("| " + " | ".join(cells) + " |")
    noted = [r for r in rows if r.notes]
    if noted:
        out += ["", "## Notes", ""]
        out += [f"- `{_md(r.entry)}`: {_md('; '.join(r.notes))}" for r in noted]
    pinned = [r for r in rows if r.digest and not r.digest_is_local]
    if pinned:
        out += ["", "## Images tested", "", "Pull exactly what was tested by its digest:", ""]
        out += [f"- `{_md(r.entry)}`: `{_md(r.digest)}`" for r in pinned]
    if summary.unknown:
        out += ["", f"Results for releases not in {MATRIX_NAME} were ignored: "
                + ", ".join(f"`{_md(u)}`" for u in summary.unknown) + "."]
    return "\n".join(out) + "\n"


def _num_class(kind: str, shown: str) -> str:
    """A number cell's classes; ``bad`` marks a non-zero failure/error count so it stands out."""
    return f"num bad {kind}" if shown not in ("0", NONE) else f"num {kind}"


def _css() -> str:
    return resources.files("rollout_matrix").joinpath("resources/report.css").read_text(encoding="utf-8")


def render_html(summary: ReportSummary) -> str:
    """The static page: the same table with status colours, full refs on hover, no JavaScript."""
    e = html.escape
    rows = summary.rows
    latest = _latest(rows)
    counts = summary.counts()
    badges = "".join(
        f'<li class="badge status-{e(s.replace(" ", "-"))}" data-status="{e(s)}">'
        f'<span class="count">{n}</span> {e(s)}</li>'
        for s, n in counts.items() if n
    )
    head = "".join(f'<th scope="col">{e(c)}</th>' for c in COLUMNS)
    body = []
    for r in rows:
        nums = _numbers(r)
        digest_cell = (f'<td class="digest" title="{e(r.digest)}"><code>{e(r.short_digest)}</code>'
                       + (' <span class="local">(local)</span>' if r.digest_is_local else "") + "</td>"
                       if r.digest else f'<td class="digest">{NONE}</td>')
        notes = f'<div class="notes">{e("; ".join(r.notes))}</div>' if r.notes else ""
        body.append(
            f'<tr data-entry="{e(r.entry)}" data-status="{e(r.status)}" data-engine="{e(r.engine)}">'
            f'<th scope="row" class="entry"><code>{e(r.entry)}</code>{notes}</th>'
            f'<td class="status status-{e(r.status.replace(" ", "-"))}">{e(r.status)}</td>'
            f'<td class="band">{e(r.band)}</td>'
            f'<td class="image" title="{e(r.image)}"><code>{e(r.tag)}</code></td>'
            f"{digest_cell}"
            f'<td class="torch">{e(r.torch)}</td><td class="cuda">{e(r.cuda)}</td>'
            f'<td class="num passed">{nums[0]}</td>'
            f'<td class="{_num_class("failed", nums[1])}">{nums[1]}</td>'
            f'<td class="{_num_class("errors", nums[2])}">{nums[2]}</td>'
            f'<td class="num skipped">{nums[3]}</td>'
            f'<td class="runner">{e(r.runner)}</td>'
            f'<td class="date" title="{e(r.finished or "")}">{e(r.date)}</td></tr>'
        )
    unknown = ""
    if summary.unknown:
        unknown = (f'<p class="unknown">Results for releases not in {MATRIX_NAME} were ignored: '
                   + ", ".join(f"<code>{e(u)}</code>" for u in summary.unknown) + ".</p>")
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>rollout-matrix: engine compatibility</title>",
        f"<style>\n{_css()}</style>",
        "</head>",
        "<body>",
        "<main>",
        "<h1>Engine compatibility</h1>",
        f'<p id="summary">{e(_summary_text(summary))}'
        + (f' Latest run: <time>{e(latest)}</time>.' if latest else "") + "</p>",
        f'<ul class="badges">{badges}</ul>',
        f'<p class="legend">{LEGEND}</p>',
        '<div class="scroll">',
        f'<table id="compatibility"><thead><tr>{head}</tr></thead>',
        "<tbody>",
        *body,
        "</tbody></table>",
        "</div>",
        unknown,
        "<footer>Generated by <code>rollout-matrix report</code> from JUnit XML and run.json of each "
        "release's image.</footer>",
        "</main>",
        "</body>",
        "</html>",
        "",
    ])


# -- entry points ---------------------------------------------------------------------------------------


def write_report(matrix: Matrix, results_dir: Path, out_dir: Path) -> ReportSummary:
    """Read ``results_dir/<entry>/{junit.xml,run.json}`` and write both report files into ``out_dir``.

    A missing ``results_dir`` is an error (most likely a wrong path); an empty one is fine and reports
    every release as not run.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UserError(f"{results_dir}: no such results directory; run `rollout-matrix test ENTRY` first "
                        f"or pass --results DIR (an empty directory reports every release as not run)")
    rows, unknown = collect(matrix, results_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = ReportSummary(rows=rows, markdown=out_dir / MARKDOWN, html=out_dir / HTML, unknown=unknown)
    summary.markdown.write_text(render_markdown(summary), encoding="utf-8")
    summary.html.write_text(render_html(summary), encoding="utf-8")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``report`` subcommand's options (shared by the CLI and ``python -m rollout_matrix.report``)."""
    parser.add_argument("--results", help="directory of <entry>/junit.xml + run.json (default: results/ "
                                          "next to matrix.yaml)")
    parser.add_argument("--out", help="where compatibility.md and .html go "
                                      "(default: docs/ next to matrix.yaml)")


def run_report(args: argparse.Namespace, matrix: Matrix) -> int:
    """CLI handler: write the report, print one summary line. Failing tests do not fail the command:
    the test jobs already did; this one only reports."""
    root = matrix.path.parent
    summary = write_report(matrix, Path(args.results) if args.results else root / "results",
                           Path(args.out) if args.out else root / "docs")
    print(summary.line())
    return 0


def register(sub: argparse._SubParsersAction, site_options: Callable[..., None] | None = None) -> None:  # type: ignore[type-arg]
    """Add ``report`` to the ``rollout-matrix`` subcommands (the CLI's optional-module hook)."""
    p = sub.add_parser("report", help="write docs/compatibility.md and .html from test results",
                       description=__doc__.splitlines()[0])
    add_arguments(p)
    p.set_defaults(handler=run_report)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rollout_matrix.report``: the same as ``rollout-matrix report``."""
    parser = argparse.ArgumentParser(prog="python -m rollout_matrix.report",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", help="path to matrix.yaml (default: the checkout's)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_report(args, load_matrix(args.matrix))
    except UserError as exc:
        print(f"rollout-matrix report: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
