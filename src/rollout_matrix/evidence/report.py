"""The compatibility report: one row per release of the matrix, from committed evidence only.

Rows come from :mod:`rollout_matrix.evidence.results` (``cpu-results/`` and ``gpu-results/`` of the checkout);
this module only decides the words and renders ``compatibility.md`` (committed, read on GitHub) and
``compatibility.html`` (one static file, no scripts, no network). CPU and GPU evidence sit in separate
columns and never merge: a release whose GPU tests never passed reads "CPU checks passed", never
"passed". Output depends only on the inputs (no "generated at" time), so regenerating from the same
evidence changes nothing in git.
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rollout_matrix.atomic import write_all
from rollout_matrix.errors import EvidenceError, UserError
from rollout_matrix.evidence.band_status import BandStatus, band_statuses, describe, releases_cell
from rollout_matrix.evidence.committed import committed
from rollout_matrix.evidence.results import BUILD_FAILED, ERROR, FAILED, PASSED, REJECTED, Evidence
from rollout_matrix.matrix.model import Entry, Matrix
from rollout_matrix.matrix.shim_band import shim_for

MARKDOWN = "compatibility.md"
HTML = "compatibility.html"
NONE = "—"

GPU_PROVEN = "GPU-proven"
CPU_ONLY = "CPU checks passed"
GPU_FAILED = "GPU tests failed"
CPU_FAILED = "CPU checks failed"
UNAVAILABLE = "unavailable"
NOT_RUN = "not run"
EVIDENCE_REJECTED = "evidence rejected"
VERDICTS = (GPU_PROVEN, CPU_ONLY, GPU_FAILED, CPU_FAILED, BUILD_FAILED, UNAVAILABLE, EVIDENCE_REJECTED, NOT_RUN)
LEGEND = (f"<b>{GPU_PROVEN}</b>: the GPU half of tests/engine (generation, logprobs, weight update, "
          f"offload/onload, failures) passed on a GPU; <b>{CPU_ONLY}</b>: only the CPU half ran (install, "
          f"detection, argument mapping), which proves nothing about generation; <b>{BUILD_FAILED}</b>: the "
          f"image did not build here, no test ran; <b>{UNAVAILABLE}</b>: not installable from PyPI "
          f"(pins gone, or only a stub fetching elsewhere; the row says which); <b>{EVIDENCE_REJECTED}</b>: the only "
          f"evidence committed does not belong to this release or its lock, or is unreadable (the note says "
          f"which file); <b>{NOT_RUN}</b>: no evidence.")


@dataclass(frozen=True)
class Row:
    entry: Entry
    band: str
    cpu: Evidence | None
    gpu: Evidence | None

    @property
    def rejected(self) -> list[Evidence]:
        """Evidence committed for this release that does not count (see results.committed)."""
        return [e for e in (self.cpu, self.gpu) if e is not None and e.verdict == REJECTED]

    @property
    def verdict(self) -> str:
        cpu, gpu = (e if e is not None and e.verdict != REJECTED else None for e in (self.cpu, self.gpu))
        if gpu is not None and gpu.verdict == PASSED:
            return GPU_PROVEN
        if gpu is not None and gpu.verdict in (FAILED, ERROR):
            return GPU_FAILED
        if cpu is not None:
            return {PASSED: CPU_ONLY, BUILD_FAILED: BUILD_FAILED}.get(cpu.verdict, CPU_FAILED)
        if self.rejected:
            return EVIDENCE_REJECTED
        return UNAVAILABLE if self.entry.unavailable else NOT_RUN

    @property
    def notes(self) -> list[str]:
        out = [f"{e.kind.upper()}{' evidence rejected' if e.verdict == REJECTED else ''}: {e.note}"
               for e in (self.cpu, self.gpu) if e is not None and e.note]
        if self.entry.unavailable and self.cpu is None and self.gpu is None:
            out.append(self.entry.unavailable)
        if self.entry.stand_in:  # every figure on this row is for the release with the stand-in, not as published
            late = " (uploaded after the release)" if self.entry.late_stand_in else ""
            out.append(f"locked with {self.entry.stand_in}{late} standing in for {self.entry.awaits}, "
                       "which cannot be installed from PyPI")
        return out


def _outcome(e: Evidence) -> str:
    c = e.counts
    if e.verdict == REJECTED:
        return f"{NONE} ({EVIDENCE_REJECTED})"
    if e.verdict == BUILD_FAILED or c is None:
        return e.verdict
    bad = c.failures + c.errors
    return f"{c.passed} passed" + (f", {bad} failed" if bad else "")


def cpu_cell(e: Evidence | None) -> str:
    """``7 passed``: the CPU half of the suite in the release's image."""
    return NONE if e is None else _outcome(e)


def gpu_cell(e: Evidence | None) -> str:
    """``19 passed on 1× NVIDIA H200, torch 2.8.0+cu128``."""
    if e is None:
        return NONE
    m = (e.run.machine or {}) if e.run else {}
    where = f" on {m.get('gpu_count', '?')}× {', '.join(m['gpu_names'])}" if m.get("gpu_names") else ""
    return _outcome(e) + where + (f", torch {m['torch']}" if m.get("torch") else "")


def date_of(*evidence: Evidence | None) -> str:
    days = sorted((e.finished or "")[:10] for e in evidence if e is not None and e.finished)
    return days[-1] if days else NONE


def collect(matrix: Matrix, root: Path) -> list[Row]:
    """A row for every matrix entry, in file order, from the evidence committed under ``root``."""
    cpu, gpu = committed(root, "cpu"), committed(root, "gpu")
    return [Row(entry=e, band=shim_for(e) or NONE, cpu=cpu.get(e.name), gpu=gpu.get(e.name)) for e in matrix]


def unknown_evidence(matrix: Matrix, root: Path) -> list[str]:
    """Evidence folders that belong to no entry of the matrix (a release removed from matrix.yaml)."""
    found = set(committed(root, "cpu")) | set(committed(root, "gpu"))
    return sorted(found - set(matrix.entries))


def counts(rows: list[Row]) -> dict[str, int]:
    seen = Counter(r.verdict for r in rows)
    return {v: seen[v] for v in VERDICTS if seen[v]}


def summary_line(rows: list[Row]) -> str:
    return f"{len(rows)} releases: " + ", ".join(f"{n} {v}" for v, n in counts(rows).items()) + "."


def _md(text: str) -> str:
    """A Markdown table cell: no pipes or newlines break the table, no HTML gets through."""
    return (text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
            .replace("<", "&lt;").replace(">", "&gt;"))


COLUMNS = ("Release", "Verdict", "Shim band", "CPU checks (image, CPU host)", "GPU suite", "torch", "CUDA",
           "Date")


def _cells(r: Row) -> list[str]:
    return [r.entry.name, r.verdict, r.band, cpu_cell(r.cpu), gpu_cell(r.gpu), r.entry.torch or NONE,
            r.entry.cuda, date_of(r.cpu, r.gpu)]


BAND_COLUMNS = ("Shim band", "Releases", "GPU status", "Proven on (modes)", "Failing GPU tests")


def bands(rows: list[Row]) -> list[BandStatus]:
    """The band table's rows: per shim band, its GPU evidence by mode (rollout_matrix.evidence.band_status)."""
    return band_statuses((r.entry.name.partition("-")[2], r.band,
                          None if r.gpu is None or r.gpu.verdict == REJECTED else r.gpu,  # rejected proves nothing
                          not r.entry.unavailable) for r in rows if r.band != NONE)


def _band_cells(b: BandStatus) -> list[str]:
    return [b.band, releases_cell(b), b.status, *describe(b)]


def render_markdown(rows: list[Row], unknown: list[str]) -> str:
    out = [
        "# Engine compatibility",
        "",
        "Generated by `rollout-matrix report` from the committed evidence: `cpu-results/<release>/` (the "
        "engine suite in the release's image on a CPU host) and `gpu-results/<release>/` (the suite with a "
        "GPU, from the release's lock). Each holds pytest's `junit.xml`, `run.json` and the log; do not "
        "edit this page by hand.",
        "",
        f"**{summary_line(rows)}**",
        "",
        LEGEND.replace("<b>", "*").replace("</b>", "*"),
        "",
        "## Shim bands on a GPU",
        "",
        "Per shim band (one class of rollout_shims each): which of its releases passed every GPU test, and in "
        "which modes (`graphs`: CUDA graphs, what users run by default; `eager`: `enforce_eager`).",
        "",
        "| " + " | ".join(BAND_COLUMNS) + " |",
        "|" + "|".join("---" for _ in BAND_COLUMNS) + "|",
        *("| " + " | ".join(_md(c) for c in _band_cells(b)) + " |" for b in bands(rows)),
        "",
        "## Releases",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for r in rows:
        cells = [_md(c) for c in _cells(r)]
        cells[0] = f"`{cells[0]}`"
        if r.verdict in (GPU_FAILED, CPU_FAILED, BUILD_FAILED):
            cells[1] = f"**{cells[1]}**"
        out.append("| " + " | ".join(cells) + " |")
    noted = [r for r in rows if r.notes]
    if noted:
        out += ["", "## Notes", ""]
        out += [f"- `{_md(r.entry.name)}`: {_md('; '.join(r.notes))}" for r in noted]
    gpu_rows = [r for r in rows if r.gpu is not None and r.gpu.verdict != REJECTED and r.gpu.run is not None
                and r.gpu.run.lock]
    if gpu_rows:
        out += ["", "## GPU runs", "", "Each ran in a venv holding exactly the named lock:", ""]
        for r in gpu_rows:
            lock = r.gpu.run.lock or {}  # type: ignore[union-attr]
            out.append(f"- `{_md(r.entry.name)}`: `{_md(str(lock.get('path')))}` "
                       f"(`{_md(str(lock.get('sha256', ''))[:19])}`, {lock.get('packages', '?')} packages)")
    if unknown:
        out += ["", "Evidence for releases not in matrix.yaml was ignored: "
                + ", ".join(f"`{_md(u)}`" for u in unknown) + "."]
    return "\n".join(out) + "\n"


def _css() -> str:
    return resources.files("rollout_matrix").joinpath("resources/report.css").read_text(encoding="utf-8")


def _slug(text: str) -> str:
    return text.lower().replace(" ", "-")


def render_html(rows: list[Row], unknown: list[str]) -> str:
    """The same table with verdict colours, no JavaScript."""
    e = html.escape
    badges = "".join(f'<li class="badge verdict-{e(_slug(v))}" data-verdict="{e(v)}"><span class="count">{n}'
                     f"</span> {e(v)}</li>" for v, n in counts(rows).items())
    head = "".join(f'<th scope="col">{e(c)}</th>' for c in COLUMNS)
    body = []
    for r in rows:
        name, verdict, band, cpu, gpu, torch, cuda, date = _cells(r)
        notes = f'<div class="notes">{e("; ".join(r.notes))}</div>' if r.notes else ""
        body.append(
            f'<tr data-entry="{e(name)}" data-verdict="{e(verdict)}" data-engine="{e(r.entry.engine)}">'
            f'<th scope="row" class="entry"><code>{e(name)}</code>{notes}</th>'
            f'<td class="verdict verdict-{e(_slug(verdict))}">{e(verdict)}</td>'
            f'<td class="band">{e(band)}</td><td class="cpu">{e(cpu)}</td><td class="gpu">{e(gpu)}</td>'
            f'<td class="torch">{e(torch)}</td><td class="cuda">{e(cuda)}</td><td class="date">{e(date)}</td></tr>'
        )
    ignored = ("" if not unknown else '<p class="unknown">Evidence for releases not in matrix.yaml was ignored: '
               + ", ".join(f"<code>{e(u)}</code>" for u in unknown) + ".</p>")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>rollout-matrix: engine compatibility</title>", f"<style>\n{_css()}</style>", "</head>",
        "<body>", "<main>", "<h1>Engine compatibility</h1>",
        f'<p id="summary">{e(summary_line(rows))}</p>', f'<ul class="badges">{badges}</ul>',
        f'<p class="legend">{LEGEND}</p>', "<h2>Shim bands on a GPU</h2>", '<div class="scroll">',
        '<table id="bands"><thead><tr>' + "".join(f'<th scope="col">{e(c)}</th>' for c in BAND_COLUMNS)
        + "</tr></thead><tbody>",
        *(f'<tr data-band="{e(b.band)}" data-status="{e(b.status)}"><th scope="row"><code>{e(b.band)}</code></th>'
          + "".join(f"<td>{e(c)}</td>" for c in _band_cells(b)[1:]) + "</tr>" for b in bands(rows)),
        "</tbody></table>", "</div>", "<h2>Releases</h2>", '<div class="scroll">',
        f'<table id="compatibility"><thead><tr>{head}</tr></thead>', "<tbody>", *body, "</tbody></table>",
        "</div>", ignored,
        "<footer>Generated by <code>rollout-matrix report</code> from cpu-results/ and gpu-results/.</footer>",
        "</main>", "</body>", "</html>", "",
    ])


def rejected(rows: list[Row]) -> list[str]:
    """One line per committed evidence folder the report did not count, naming its file and why."""
    return [e.note for r in rows for e in r.rejected]


def write_report(matrix: Matrix, out_dir: Path, strict: bool = False) -> tuple[list[Row], list[Path]]:
    """Both pages into ``out_dir`` from the evidence committed beside ``matrix.yaml``.

    Both pages are rendered before anything is written, then each goes through a temporary file and a
    rename: a failure (a read-only folder, a directory where a page goes) leaves the old pages whole.
    ``strict``: refuse (:class:`EvidenceError`, nothing written) when any evidence was rejected.
    """
    root = matrix.path.parent
    rows = collect(matrix, root)
    bad = rejected(rows)
    if strict and bad:
        raise EvidenceError(f"{bad[0]}" + (f" (and {len(bad) - 1} more rejected evidence folders)" if len(bad) > 1
                                           else "") + "; nothing written")
    unknown = unknown_evidence(matrix, root)
    pages = {MARKDOWN: render_markdown(rows, unknown), HTML: render_html(rows, unknown)}
    written = [out_dir / name for name in pages]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out_dir}: cannot be created ({exc.strerror}); pass a writable folder") from None
    for path in written:
        if path.is_dir() or path.is_symlink():
            raise UserError(f"{path}: is a {'directory' if path.is_dir() else 'symbolic link'}; remove it or pass "
                            "another --out (nothing written)")
    try:
        write_all({path: pages[path.name] for path in written})
    except OSError as exc:
        raise UserError(f"--out {out_dir}: the pages cannot be written there ({exc.strerror}); nothing written: "
                        "pass a writable folder") from None
    return rows, written
