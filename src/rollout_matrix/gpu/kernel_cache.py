"""A FlashInfer build carried to another machine, counted as built: its venv's inputs dated before it.

Why: FlashInfer's sampling build takes 136-157 s of a GPU machine's time (vllm-0.34.0 on the H100,
2026-12-06), so a home's ``.cache/flashinfer`` is carried from an earlier machine (``tar`` keeps the
files' times). But the venv there is made anew from the same lock at the same path, so every header
and source the build read (FlashInfer's csrc, torch's and CUDA's include folders) is newer than the
carried objects, and FlashInfer 0.7.4, which always runs ``ninja`` ("ninja no-ops if everything is up
to date"), rebuilt all of it (157 s). Ninja rebuilds an output whose inputs are newer than it, whose
command changed (``.ninja_log``), or whose deps-log entry is older than it (so touching the outputs
would not do): here the inputs are dated back instead, and only where that is true to what they hold.

That is where ``stamp``, after a build, named the lock this venv was made from (its ``.lock-exact``,
written by gpu/lockenv.py once the venv equalled the lock) and the builds ninja then found up to date
with it: the same wheels make the same files. ``freshen`` dates back, to just before the output that
read it, every input of the venv that those builds' deps logs name; nothing outside the venv (a system
header that changed still rebuilds). Without a matching stamp it changes nothing: ninja decides as
before.

Only the standard library: gpu/kernels.py imports this module, and tests/engine imports that one in
every release's environment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

STAMP = "rollout-matrix-lock.json"
"""In the home's FlashInfer folder: the entry, venv and lock its builds (``builds``: their ninja files,
relative to it) were made from."""
VENV_LOCK = ".lock-exact"
"""gpu/lockenv.py's ``STAMP`` in a venv that equals its lock (not imported: that module needs more
than the standard library)."""
SECOND_NS = 1_000_000_000
DEPS_HEADER = re.compile(r"^(?P<output>.+): #deps \d+, deps mtime \d+ \((?P<state>VALID|STALE)\)$")
"""A line of ``ninja -t deps`` naming an output; its inputs follow, indented, then a blank line."""


def cache_root(environ: Mapping[str, str]) -> Path:
    """Where FlashInfer keeps its builds for a process with ``environ`` (``suite.caches`` sets both)."""
    base = environ.get("FLASHINFER_WORKSPACE_BASE") or environ.get("HOME") or os.path.expanduser("~")
    return Path(base) / ".cache" / "flashinfer"


def _lock_of(venv: Path) -> dict | None:
    """What the venv was made from (``lock``, ``lock_sha256``), or None when nothing says."""
    try:
        made = json.loads((venv / VENV_LOCK).read_text())
    except (OSError, ValueError):
        return None
    return made if isinstance(made, dict) and isinstance(made.get("lock_sha256"), str) else None


def _mark(entry: str, venv: Path, made: Mapping) -> dict:
    return {"entry": entry, "venv": str(venv), "lock": made.get("lock"), "lock_sha256": made["lock_sha256"]}


def _ninja(venv: Path) -> str | None:
    """The venv's ninja (FlashInfer's builds run it), else the machine's."""
    own = venv / "bin" / "ninja"
    return str(own) if own.is_file() else shutil.which("ninja")


def builds(root: Path) -> list[Path]:
    """The ninja files under ``root`` with a deps log where ninja runs them: beside them (vLLM 0.34.0's
    FlashInfer runs ``ninja -C <module folder> -f build.ninja``) or one folder up (FlashInfer 0.6.0 ran
    ``ninja -C cached_ops -f <module>/build.ninja``)."""
    if not root.is_dir():
        return []
    found: list[Path] = []
    for deps in sorted(root.glob("**/.ninja_deps")):
        own = deps.parent / "build.ninja"
        found += [own] if own.is_file() else sorted(deps.parent.glob("*/build.ninja"))
    return found


def _workdir(manifest: Path) -> Path:
    """Where ninja runs ``manifest``: the folder of its deps log (``builds``)."""
    return manifest.parent if (manifest.parent / ".ninja_deps").is_file() else manifest.parent.parent


def _ninja_in(ninja: str, manifest: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ninja, "-C", str(_workdir(manifest)), "-f", str(manifest), *args], capture_output=True,
                          text=True, timeout=60, check=False)


def up_to_date(ninja: str, manifest: Path) -> bool:
    """Whether ninja would build nothing of ``manifest`` (a dry run: it writes no log)."""
    done = _ninja_in(ninja, manifest, "-n")
    return done.returncode == 0 and "ninja: no work to do." in done.stdout


def stamp(entry: str, venv: Path, root: Path) -> int:
    """After a build succeeded: say in ``root`` (``cache_root``) which of its builds were made from the
    lock of ``venv``: those ninja finds up to date with this venv now (not one an engine built from
    another lock and no engine here has rebuilt). Returns how many; 0 and no stamp where the venv does
    not say its lock or no ninja is found; never raises."""
    made, ninja = _lock_of(venv), _ninja(venv)
    if made is None or ninja is None:
        return 0
    try:
        done = [str(m.relative_to(root)) for m in builds(root) if up_to_date(ninja, m)]
        part = root / f"{STAMP}.{os.getpid()}"  # whole or not at all: a suite and a script may run side by side
        part.write_text(json.dumps({**_mark(entry, venv, made), "builds": done}, indent=1) + "\n")
        part.replace(root / STAMP)
    except Exception:  # best effort: without a stamp the next machine rebuilds, as before
        return 0
    return len(done)


def recorded(ninja: str, manifest: Path) -> dict[Path, list[Path]]:
    """Each output of ``manifest`` whose deps-log entry ninja calls VALID -> the inputs recorded for it
    (``ninja -t deps``; relative paths are read from the folder ninja runs in)."""
    done, where = _ninja_in(ninja, manifest, "-t", "deps"), _workdir(manifest)
    found: dict[Path, list[Path]] = {}
    inputs: list[Path] | None = None
    for line in done.stdout.splitlines():
        header = DEPS_HEADER.match(line)
        if header:
            inputs = found.setdefault(where / header["output"], []) if header["state"] == "VALID" else None
        elif line.startswith(" ") and line.strip() and inputs is not None:
            inputs.append(where / line.strip())
        elif not line.strip():
            inputs = None
    return found


def freshen(entry: str, venv: Path, root: Path) -> dict:
    """Before a build: where ``root``'s stamp names this entry, venv and lock, date every input of the
    venv that a stamped build recorded back to 1 s before the earliest output that read it, where it is
    newer than that. Returns ``{"reused": bool, "touched": n, "builds": n, "why": ...}`` (builds: the
    builds found under ``root``; why: when not reused); never raises."""
    found = builds(root)
    outcome = {"reused": False, "touched": 0, "builds": len(found)}
    try:
        if not found:
            return {**outcome, "why": "no FlashInfer build in this home yet"}
        made = _lock_of(venv)
        if made is None:
            return {**outcome, "why": f"the venv does not say which lock it was made from (no {VENV_LOCK})"}
        try:
            stamped = json.loads((root / STAMP).read_text())
        except (OSError, ValueError):
            return {**outcome, "why": f"its builds are not stamped with a lock ({STAMP})"}
        mark = _mark(entry, venv, made)
        if {k: stamped.get(k) for k in mark} != mark:
            return {**outcome, "why": f"its builds were made from another lock or venv ({stamped.get('entry')}, "
                                      f"{str(stamped.get('lock_sha256'))[:19]})"}
        ninja = _ninja(venv)
        if ninja is None:
            return {**outcome, "why": "no ninja to read the builds' deps logs"}
        kept = [b for b in found if str(b.relative_to(root)) in stamped.get("builds", [])]
        if not kept:
            return {**outcome, "why": "none of its builds was up to date when it was stamped"}
        inside = venv.resolve()
        before: dict[Path, int] = {}  # input -> the time it must not be later than
        for build in kept:
            for output, inputs in recorded(ninja, build).items():
                if not output.is_file():
                    continue
                limit = output.stat().st_mtime_ns - SECOND_NS
                for path in inputs:
                    real = path.resolve()  # ninja reads the file a link names: that is what gets dated
                    if real.is_relative_to(inside) and real.is_file():
                        before[real] = min(limit, before.get(real, limit))
        touched = 0
        for path, limit in before.items():
            if path.stat().st_mtime_ns > limit:
                os.utime(path, ns=(limit, limit))
                touched += 1
        return {**outcome, "reused": True, "touched": touched}
    except Exception as exc:  # best effort: ninja then rebuilds what it finds newer, as without this
        return {**outcome, "why": f"{type(exc).__name__}: {exc}"}
