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
written by gpu/lockenv.py once the venv equalled the lock), the builds ninja then found up to date with
it (the same wheels make the same files), and the inputs from outside the venv (CUDA's and the
compiler's headers of the machine's image: path, size and time, as one hash), which the machine's own
packages date long before any build, so ninja would not see them change. ``freshen`` dates back every
input of the venv that those builds' deps logs name, to 1 s before the earlier of the output's time and
the time ``.ninja_log`` records for it (ninja 1.12 on records when the command *started*, vLLM 0.34.0's
lock has ninja 1.13.2, and an nvcc compile takes minutes), then asks ninja whether it would build
anything. Nothing outside the venv is touched. Without a matching stamp, or where the machine's own
inputs differ, it changes nothing: ninja decides as before.

Only the standard library: gpu/kernels.py imports this module, and tests/engine imports that one in
every release's environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
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


def _outside(deps: Iterable[dict[Path, list[Path]]], venv: Path) -> str:
    """One hash of the inputs that builds' deps logs (``recorded``) name outside ``venv``: path, size and time."""
    inside = venv.resolve()
    resolved = {p.resolve() for per_output in deps for inputs in per_output.values() for p in inputs}
    seen = {p for p in resolved if not p.is_relative_to(inside)}
    lines = []
    for path in sorted(seen):
        try:
            st = path.stat()
            lines.append(f"{path} {st.st_size} {st.st_mtime_ns}")
        except OSError:
            lines.append(f"{path} missing")
    return "sha256:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()


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
        fresh = [m for m in builds(root) if up_to_date(ninja, m)]
        done = [str(m.relative_to(root)) for m in fresh]
        outside = _outside((recorded(ninja, m) for m in fresh), venv)
        part = root / f"{STAMP}.{os.getpid()}"  # whole or not at all: a suite and a script may run side by side
        part.write_text(json.dumps({**_mark(entry, venv, made), "builds": done, "outside": outside}, indent=1) + "\n")
        part.replace(root / STAMP)
    except Exception:  # best effort: without a stamp the next machine rebuilds, as before
        return 0
    return len(done)


def recorded(ninja: str, manifest: Path) -> dict[Path, list[Path]]:
    """Each output of ``manifest`` whose deps-log entry ninja calls VALID -> the inputs recorded for it
    (``ninja -t deps``; relative paths are read from the folder ninja runs in)."""
    done, where = _ninja_in(ninja, manifest, "-n", "-t", "deps"), _workdir(manifest)  # -n: the logs stay as they are
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


def logged(manifest: Path) -> dict[Path, int]:
    """Each output's time as ``.ninja_log`` records it (ns): ninja 1.12 on writes when its command started,
    and rebuilds an output whose inputs are newer than that. The last line of an output counts."""
    where, found = _workdir(manifest), {}
    try:
        lines = (where / ".ninja_log").read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        fields = line.split("\t")
        if len(fields) == 5 and fields[2].isdigit():
            found[where / fields[3]] = int(fields[2])
    return found


def freshen(entry: str, venv: Path, root: Path) -> dict:
    """Before a build: where ``root``'s stamp names this entry, venv and lock, and its hash of the inputs
    outside the venv matches (a stamp written by hand has none), date every input of the venv that a
    stamped build recorded back to 1 s before the earliest time that counts for an output that read it
    (its file's or its ``.ninja_log`` line's), where it is newer than that. Returns ``{"reused": bool,
    "touched": n, "builds": n, "why": ...}``: reused where ninja then finds nothing to build (builds: the
    builds found under ``root``; why: when not reused); never raises."""
    outcome: dict = {"reused": False, "touched": 0, "builds": 0}
    try:
        found = builds(root)
        outcome["builds"] = len(found)
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
        deps = {build: recorded(ninja, build) for build in kept}  # one `ninja -t deps` a build
        if "outside" in stamped and stamped["outside"] != _outside(deps.values(), venv):
            return {**outcome, "why": "the machine's own inputs of its builds (CUDA's or the compiler's headers, "
                                      "outside the venv) are not those it was built with"}
        inside = venv.resolve()
        before: dict[Path, int] = {}  # input -> the time it must not be later than
        for build, per_output in deps.items():
            log_times = logged(build)
            for output, inputs in per_output.items():
                if not output.is_file():
                    continue
                made_ns = output.stat().st_mtime_ns
                limit = min(made_ns, log_times.get(output, made_ns)) - SECOND_NS
                for path in inputs:
                    real = path.resolve()  # ninja reads the file a link names: that is what gets dated
                    if real.is_relative_to(inside) and real.is_file():
                        before[real] = min(limit, before.get(real, limit))
        touched = 0
        for path, limit in before.items():
            if path.stat().st_mtime_ns > limit:
                os.utime(path, ns=(limit, limit))
                touched += 1
        outcome["touched"] = touched
        if not all(up_to_date(ninja, b) for b in kept):
            return {**outcome, "why": "ninja would still build (an input outside the venv newer than the build, "
                                      "or a changed command)"}
        return {**outcome, "reused": True}
    except Exception as exc:  # best effort: ninja then rebuilds what it finds newer, as without this
        return {**outcome, "why": f"{type(exc).__name__}: {exc}"}
