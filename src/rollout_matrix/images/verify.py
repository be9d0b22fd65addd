"""The post-build check: run the new image and make it report the versions matrix.yaml expects.

Like PyTorch's .ci/docker/build.sh, a build is only good once the image itself says what is inside;
a resolver that quietly picked another torch (or a kernel package built for another CUDA) fails here,
before anyone spends GPU time on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

from rollout_matrix.errors import CheckFailed
from rollout_matrix.images.docker_api import container

# Runs inside the image with its own Python. Reads versions from package metadata; imports torch
# only for torch.version.cuda (importing torch works without a GPU).
REPORT_SCRIPT = r"""
import importlib.metadata as md, json, sys
wanted = json.loads(sys.argv[1])
out = {"python": "%d.%d" % sys.version_info[:2]}
dists = {}
for dist in md.distributions():
    dists[dist.metadata["Name"].lower().replace("_", "-").replace(".", "-")] = dist.version
for name in wanted:
    if name == "torch.cuda":
        try:
            import torch
            out[name] = torch.version.cuda
        except Exception as exc:
            out[name] = "torch import failed: %s" % exc
        continue
    try:
        out[name] = md.version(name)
    except md.PackageNotFoundError:
        out[name] = None
print("ROLLOUT_MATRIX_VERSIONS " + json.dumps({"versions": out, "distributions": dists}))
"""


@dataclass(frozen=True)
class ImageReport:
    versions: dict[str, str | None]  # the names asked for, plus "python"
    distributions: dict[str, str]  # every installed distribution (canonical name -> version)


def report_versions(image: str, names: list[str]) -> ImageReport:
    """Run ``image`` once; return what it reports for ``names`` and every installed distribution."""
    what = f"the version check in {image}"
    with container(image, ["python", "-c", REPORT_SCRIPT, json.dumps(names)], what, network_disabled=True) as c:
        status = c.wait(timeout=600).get("StatusCode", 1)
        logs = c.logs(stdout=True, stderr=True).decode(errors="replace")
    for line in logs.splitlines():
        if line.startswith("ROLLOUT_MATRIX_VERSIONS "):
            data = json.loads(line.split(" ", 1)[1])
            return ImageReport(data["versions"], data["distributions"])
    raise CheckFailed(f"the version check could not run in {image} (exit {status}): {logs.strip()[-300:]}")


def compare(expected: dict[str, str], reported: dict[str, str | None]) -> list[tuple[str, str, str]]:
    """(name, expected, reported) for every mismatch; versions compare by their public part."""
    bad = []
    for name, want in expected.items():
        got = reported.get(name)
        if got is None or not _same(want, got):
            bad.append((name, want, got or "not installed"))
    return bad


def compare_lock(locked: dict[str, str], installed: dict[str, str]) -> list[tuple[str, str, str]]:
    """(name, locked, installed) for every package not installed exactly as the lock says, either way."""
    bad = []
    for name in sorted(set(locked) | set(installed)):
        want, got = locked.get(name), installed.get(name)
        if want is None or got is None or not _same(want, got):
            bad.append((name, want or "not in the lock", got or "not installed"))
    return bad


def check_image(image: str, entry_name: str, expected: dict[str, str],
                locked: dict[str, str] | None = None) -> dict[str, str | None]:
    """Fail with a readable diff unless ``image`` reports exactly ``expected`` (and, given a lock,
    holds exactly the lock's packages: nothing more, nothing less, no other version)."""
    report = report_versions(image, sorted(expected))
    bad = compare(expected, report.versions)
    if bad:
        raise CheckFailed(f"version check failed for {entry_name}: the image does not report what matrix.yaml "
                        f"expects; fix the pins in matrix.yaml or the lock:\n{_table(bad, 'expected', 'image has')}")
    if locked is not None:
        bad = compare_lock(locked, report.distributions)
        if bad:
            raise CheckFailed(f"lock check failed for {entry_name}: the installed packages differ from the lock; "
                            f"re-lock or fix the install step:\n{_table(bad, 'locked', 'installed')}")
    return report.versions


def _table(rows: list[tuple[str, str, str]], left: str, right: str) -> str:
    width = max(len(n) for n, _, _ in rows)
    return "\n".join(f"  {n:<{width}}  {left} {w:<14} {right} {g}" for n, w, g in rows)


def _same(want: str, got: str) -> bool:
    try:
        return Version(want).public == Version(got).public
    except InvalidVersion:
        return want == got
