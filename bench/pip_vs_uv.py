"""Build one entry twice from the same lock, once installing with pip and once with uv, and compare.

Both builds run with the Docker layer cache off (and the installers' own caches off, as in every
image build), so each downloads and installs everything. Prints, side by side: the time of the
install step, the whole build, and the ratio; then checks that both images hold the identical
package set (the lock's), which is the reproducibility claim of the locks.

    python bench/pip_vs_uv.py vllm-0.8.5.post1 --base-image rollout-matrix-test/debian:bookworm \\
        --python 3.11 --extra-ca-cert /etc/ssl/certs/ca-certificates.crt
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from rollout_matrix.images.build import run_build
from rollout_matrix.images.docker_api import client
from rollout_matrix.images.options import BuildOptions
from rollout_matrix.images.plan import plan_build
from rollout_matrix.images.verify import compare_lock, report_versions
from rollout_matrix.locks.locking import read_lock
from rollout_matrix.matrix.load import load_matrix
from rollout_matrix.progress import Reporter

STEP = re.compile(r"^Step (\d+)/\d+ : (.*)$", re.M)


class StepClock(Reporter):
    """A reporter that timestamps each Dockerfile step as the build stream announces it."""

    def __init__(self, prefix: str, quiet: bool) -> None:
        super().__init__(prefix)
        self.steps: list[tuple[float, str]] = []
        self.quiet = quiet

    def raw(self, text: str) -> None:
        for match in STEP.finditer(text):
            self.steps.append((time.monotonic(), match.group(2)))
        if not self.quiet:
            super().raw(text)

    def step_seconds(self, needle: str, end: float) -> float:
        for i, (start, name) in enumerate(self.steps):
            if needle in name:
                stop = self.steps[i + 1][0] if i + 1 < len(self.steps) else end
                return stop - start
        raise SystemExit(f"no build step matching {needle!r} in the build log")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("entry")
    parser.add_argument("--base-image")
    parser.add_argument("--python")
    parser.add_argument("--extra-ca-cert")
    parser.add_argument("--verbose", action="store_true", help="show the build logs")
    args = parser.parse_args()

    matrix = load_matrix()
    entry = matrix.get(args.entry)
    rows = []
    sets = {}
    for installer in ("pip", "uv"):
        options = BuildOptions.from_env(installer=installer, base_image=args.base_image, python=args.python,
                                        extra_ca_cert=args.extra_ca_cert)
        plan = plan_build(matrix, entry, options)
        clock = StepClock(f"{installer}", quiet=not args.verbose)
        clock.line(f"building {entry.name} with {installer} from {plan.lock_file} (no layer cache)")
        start = time.monotonic()
        image_id = run_build(plan, clock, nocache=True)
        end = time.monotonic()
        try:
            sets[installer] = report_versions(image_id, []).distributions
            size = client().images.get(image_id).attrs.get("Size", 0)
        finally:
            client().images.remove(image_id, force=True)
        rows.append((installer, clock.step_seconds("install.sh packages", end), end - start, size))
        clock.line(f"done in {end - start:.0f}s")

    lock = read_lock(Path(plan.lock_file)).versions if plan.lock_file else {}
    print()
    print(f"{entry.name} on {plan.base_image} (Python {plan.python}), {len(lock)} locked packages, "
          "layer and installer caches off")
    print(f"{'installer':<10} {'install step':>13} {'whole build':>12} {'image':>9}")
    for installer, step, total, size in rows:
        print(f"{installer:<10} {step:>12.1f}s {total:>11.1f}s {size / 1e9:>8.2f}G")
    pip_step, uv_step = rows[0][1], rows[1][1]
    print(f"ratio pip/uv: install step {pip_step / uv_step:.2f}x, whole build {rows[0][2] / rows[1][2]:.2f}x")
    same = sets["pip"] == sets["uv"]
    print(f"package sets: pip {len(sets['pip'])}, uv {len(sets['uv'])}, identical: {same}, "
          f"equal to the lock: {not compare_lock(lock, sets['uv'])}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
