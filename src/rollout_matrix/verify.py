"""The post-build check: run the new image and make it report the versions matrix.yaml expects.

Like PyTorch's .ci/docker/build.sh, a build is only good once the image itself says what is inside;
a resolver that quietly picked another torch (or a kernel package built for another CUDA) fails here,
before anyone spends GPU time on it.
"""

from __future__ import annotations

import json

from packaging.version import InvalidVersion, Version

from rollout_matrix.docker_api import client, short_error
from rollout_matrix.errors import UserError

# Runs inside the image with its own Python. Reads versions from package metadata; imports torch
# only for torch.version.cuda (importing torch works without a GPU).
REPORT_SCRIPT = r"""
import importlib.metadata as md, json, sys
wanted = json.loads(sys.argv[1])
out = {"python": "%d.%d" % sys.version_info[:2]}
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
print("ROLLOUT_MATRIX_VERSIONS " + json.dumps(out))
"""


def report_versions(image: str, names: list[str]) -> dict[str, str | None]:
    """Run ``image`` once and return what it reports for ``names`` (plus its Python)."""
    c = client()
    container = c.containers.create(image, ["python", "-c", REPORT_SCRIPT, json.dumps(names)],
                                    entrypoint=[], network_disabled=True)
    try:
        container.start()
        status = container.wait(timeout=600).get("StatusCode", 1)
        logs = container.logs(stdout=True, stderr=True).decode(errors="replace")
    except Exception as exc:  # docker errors and timeouts alike: one line to the user
        raise UserError(f"could not run {image} for the version check: {short_error(exc)}") from None
    finally:
        container.remove(force=True)
    for line in logs.splitlines():
        if line.startswith("ROLLOUT_MATRIX_VERSIONS "):
            return json.loads(line.split(" ", 1)[1])
    raise UserError(f"the version check could not run in {image} (exit {status}): {logs.strip()[-300:]}")


def compare(expected: dict[str, str], reported: dict[str, str | None]) -> list[tuple[str, str, str]]:
    """(name, expected, reported) for every mismatch; versions compare by their public part."""
    bad = []
    for name, want in expected.items():
        got = reported.get(name)
        if got is None or not _same(want, got):
            bad.append((name, want, got or "not installed"))
    return bad


def check_image(image: str, entry_name: str, expected: dict[str, str]) -> dict[str, str | None]:
    """Fail with a readable diff unless ``image`` reports exactly ``expected``."""
    reported = report_versions(image, sorted(expected))
    bad = compare(expected, reported)
    if bad:
        width = max(len(n) for n, _, _ in bad)
        rows = "\n".join(f"  {n:<{width}}  expected {w:<14} image has {g}" for n, w, g in bad)
        raise UserError(f"version check failed for {entry_name}: the image does not report what matrix.yaml "
                        f"expects; fix the pins in matrix.yaml or the lock:\n{rows}")
    return reported


def _same(want: str, got: str) -> bool:
    try:
        return Version(want).public == Version(got).public
    except InvalidVersion:
        return want == got
