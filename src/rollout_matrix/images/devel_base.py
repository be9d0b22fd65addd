"""The CUDA devel *test* base: per CUDA stack, the Debian test base plus that stack's CUDA toolkit
from NVIDIA's PyPI wheels, laid out as /usr/local/cuda like the stack's nvidia/cuda:*-devel image.

Why it exists: some locked sdists need a CUDA toolkit to install (torch-memory-saver 0.0.5 compiles
against the CUDA headers and links ``-lcuda``; flashinfer-python 0.2.6.post1 / 0.2.7.post1 run
``nvcc --version`` in setup.py), and this project's CPU machines cannot pull nvidia/cuda images.
Built on this base (``rollout-matrix build ENTRY --base-image cu124=REF,cu126=REF --python 3.11``),
those releases install and their CPU tests run.

It is a TEST SUBSTITUTE, never a release base, and is named and labelled so: no cuDNN, NCCL or math
libraries beyond what torch's own wheels bring, no driver compat libraries, Debian's glibc and gcc
instead of Ubuntu's, a generated link stub for libcuda, and no CUDA compiler driver: NVIDIA's CUDA 12
wheels on PyPI carry ptxas, libNVVM and headers but no nvcc/cicc/cudafe++, so ``nvcc`` here is a
version probe answering from the toolkit's own ptxas that refuses to compile (docker/devel-base/nvcc).
An image built on it is evidence that a release *installs*, nothing more (docs/locks.md).

Inputs, all in docker/devel-base/: the Dockerfile, install.sh, assemble.py, the nvcc probe, and
``wheels-<stack>.txt``: the stack's toolkit wheels pinned with their sha256, committed, written by
``python -m rollout_matrix.images.devel_base --lock`` (:mod:`rollout_matrix.images.devel_wheels` chooses and reads
them). A committed lock rather than the PyPI API at plan time because the image name must be
computable offline, identical on every machine, and unable to move under an existing tag when NVIDIA
uploads a newer patch; a reviewer also sees exactly which files go in. Each stack's image is cached by
content: ``rollout-matrix-test/cuda-devel:<cuda>-<hash12>``, the hash over those files, the base image
reference and its local image id, and the extra CA.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

from rollout_matrix.errors import INTERRUPTED, BuildFailed, CheckFailed, UserError
from rollout_matrix.images.build import stream_build
from rollout_matrix.images.devel_wheels import devel_dir_for, get_stack, lock_wheels, read_wheels_lock, toolkit_stacks
from rollout_matrix.images.docker_api import client, container, engine_call, image_exists
from rollout_matrix.images.options import DEFAULT_INDEX_URL, BuildOptions
from rollout_matrix.images.plan import content_digest
from rollout_matrix.matrix.checkout import describe
from rollout_matrix.matrix.load import load_matrix
from rollout_matrix.matrix.model import Matrix, Stack
from rollout_matrix.progress import Reporter

#: Where the devel test bases go. A local name on purpose: nothing here is ever pushed as a base.
REPOSITORY = "rollout-matrix-test/cuda-devel"
DEFAULT_TEST_BASE = "rollout-matrix-test/debian:bookworm"
CONTEXT_FILES = ("Dockerfile", "install.sh", "assemble.py", "nvcc")
LABEL_PREFIX = "io.rollout-matrix.devel-base"


# -- the plan -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DevelBasePlan:
    """Everything needed to build, name and find one stack's devel test base."""

    stack: Stack
    base_image: str
    base_image_id: str | None  # part of the name: a rebuilt Debian base is another devel base
    devel_dir: Path
    wheels_text: str  # the lock's pins: what pip installs, hashed
    wheels: dict[str, str]
    extra_ca_cert: Path | None = None
    index_url: str = DEFAULT_INDEX_URL  # not hashed: the wheels are pinned by sha256 on any index

    @cached_property
    def content_hash(self) -> str:
        parts = [(name, (self.devel_dir / name).read_bytes()) for name in CONTEXT_FILES]
        parts += [("wheels", self.wheels_text.encode()), ("cuda", self.stack.cuda.encode()),
                  ("base_image", self.base_image.encode()), ("base_image_id", (self.base_image_id or "").encode())]
        if self.extra_ca_cert is not None:
            parts.append(("extra_ca", self.extra_ca_cert.read_bytes()))
        return content_digest(parts)

    @property
    def ref(self) -> str:
        """``rollout-matrix-test/cuda-devel:<cuda>-<hash12>``: names the exact inputs."""
        return f"{REPOSITORY}:{self.stack.cuda}-{self.content_hash[:12]}"

    def buildargs(self) -> dict[str, str]:
        return {"BASE_IMAGE": self.base_image, "CUDA": self.stack.cuda, "PIP_INDEX_URL": self.index_url}

    def labels(self) -> dict[str, str]:
        wheels = ", ".join(f"{n} {v}" for n, v in self.wheels.items())
        return {
            "org.opencontainers.image.title": f"rollout-matrix CUDA {self.stack.cuda} devel TEST base",
            "org.opencontainers.image.description": (
                f"TEST SUBSTITUTE for {self.stack.base_image}, not a release base: {self.base_image} plus "
                f"NVIDIA's PyPI wheels {wheels} as /usr/local/cuda (nvcc is a version probe)"),
            "org.opencontainers.image.created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "org.opencontainers.image.base.name": self.base_image,
            f"{LABEL_PREFIX}": "test-substitute",
            f"{LABEL_PREFIX}.stack": self.stack.name,
            f"{LABEL_PREFIX}.cuda": self.stack.cuda,
            f"{LABEL_PREFIX}.substitute-for": self.stack.base_image,
            f"{LABEL_PREFIX}.wheels": json.dumps(self.wheels, sort_keys=True),
            f"{LABEL_PREFIX}.content-hash": self.content_hash,
        }

    def context(self) -> io.BytesIO:
        """The build context as an in-memory tar: the Dockerfile's files, the stack's lock, certs/."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name in CONTEXT_FILES:
                _add(tar, name, (self.devel_dir / name).read_bytes())
            _add(tar, "wheels.txt", self.wheels_text.encode())
            info = tarfile.TarInfo("certs")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
            if self.extra_ca_cert is not None:
                _add(tar, "certs/extra-ca.crt", self.extra_ca_cert.read_bytes())  # update-ca-certificates: *.crt
        buf.seek(0)
        return buf


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def plan_devel_base(matrix: Matrix, stack: str, base_image: str = DEFAULT_TEST_BASE, *,
                    extra_ca_cert: Path | None = None, index_url: str = DEFAULT_INDEX_URL) -> DevelBasePlan:
    """Resolve one stack's devel test base: its files, wheel lock, base image (and id, if local)."""
    info = get_stack(matrix, stack)
    BuildOptions(extra_ca_cert=extra_ca_cert, index_url=index_url).validate()  # the engine build's checks
    devel_dir = devel_dir_for(matrix)
    for name in CONTEXT_FILES:
        if not (devel_dir / name).is_file():
            raise UserError(f"{devel_dir / name} is missing; run from a complete checkout")
    text, versions = read_wheels_lock(matrix, info)
    return DevelBasePlan(stack=info, base_image=base_image, base_image_id=_image_id(base_image),
                         devel_dir=devel_dir, wheels_text=text, wheels=versions,
                         extra_ca_cert=extra_ca_cert, index_url=index_url)


def devel_base_ref(matrix: Matrix, stack: str, base_image: str = DEFAULT_TEST_BASE, *,
                   extra_ca_cert: Path | None = None) -> str:
    """The content-addressed name of ``stack``'s devel test base on ``base_image`` (built or not);
    what to pass as ``--base-image STACK=REF``. Needs the Docker engine only to read the base's id."""
    return plan_devel_base(matrix, stack, base_image, extra_ca_cert=extra_ca_cert).ref


# -- build and check ----------------------------------------------------------------------------------


def ensure_devel_base(matrix: Matrix, stack: str, base_image: str = DEFAULT_TEST_BASE,
                      reporter: Reporter | None = None, *, extra_ca_cert: Path | None = None,
                      index_url: str = DEFAULT_INDEX_URL, force: bool = False) -> str:
    """Make ``stack``'s devel test base present locally and return its ref.

    Skipped when the content tag exists (unless ``force``). Otherwise built untagged, checked (its
    nvcc and CUDA headers report the stack's CUDA, a program using the driver and runtime APIs links),
    and only then tagged, so a failed build or check leaves no tag behind.
    """
    reporter = reporter or Reporter(f"devel-{stack}")
    if not image_exists(base_image):
        raise UserError(f"base image {base_image} is not local; build it first (`bash .ci/services.sh` makes "
                        f"{DEFAULT_TEST_BASE}) or pass --base-image with a local image")
    plan = plan_devel_base(matrix, stack, base_image, extra_ca_cert=extra_ca_cert, index_url=index_url)
    previous = _image_id(plan.ref)
    if previous and not force:
        reporter.line(f"up to date: {plan.ref} exists; not building")
        return plan.ref
    reporter.line(f"building the CUDA {plan.stack.cuda} devel TEST base (a test substitute for "
                  f"{plan.stack.base_image}) on {base_image} -> {plan.ref}")
    image_id = _run_build(plan, reporter)
    try:
        check_devel_base(image_id, plan.stack.cuda)
        reporter.line(f"checked: nvcc --version and CUDART_VERSION report CUDA {plan.stack.cuda}; "
                      "-lcuda -lcudart link")
        repo, tag = plan.ref.rsplit(":", 1)
        with engine_call(f"tagging {plan.ref}", BuildFailed):
            client().api.tag(image_id, repo, tag, force=True)
    except BaseException:
        _remove(image_id)
        raise
    if previous and previous != image_id:
        _remove_if_untagged(previous)  # a forced rebuild leaves no dangling copy behind
    with engine_call(f"inspecting {plan.ref}"):
        size = client().images.get(plan.ref).attrs.get("Size") or 0
    reporter.line(f"built {plan.ref} in {reporter.elapsed():.0f}s, {size / 1e9:.2f} GB")
    return plan.ref


def _run_build(plan: DevelBasePlan, reporter: Reporter) -> str:
    return stream_build(f"build of the {plan.stack.name} devel test base", reporter, fileobj=plan.context(),
                        buildargs=plan.buildargs(), labels=plan.labels())


# Runs in the new image, offline: what the check compares, then a torch-memory-saver-style link.
CHECK_SCRIPT = r"""
set -e
nvcc --version
grep -h '^#define CUDART_VERSION' "$CUDA_HOME/include/cuda_runtime_api.h"
printf '#include <cuda.h>\n#include <cuda_runtime_api.h>\n' >/tmp/t.c
printf 'int main(void){int v=0;cudaRuntimeGetVersion(&v);return cuInit(0)==CUDA_SUCCESS?0:v;}\n' >>/tmp/t.c
gcc -I"$CUDA_HOME/include" /tmp/t.c -L"$CUDA_HOME/lib64" -lcuda -lcudart -o /tmp/t
echo LINK_OK
"""


def check_devel_base(image: str, cuda: str) -> None:
    """Fail unless ``image``'s nvcc and cuda_runtime_api.h both say CUDA ``cuda`` and ``-lcuda`` links."""
    with container(image, ["sh", "-c", CHECK_SCRIPT], f"the check of {image[:19]}", CheckFailed,
                   network_disabled=True) as c:
        status = c.wait(timeout=300).get("StatusCode", 1)
        logs = c.logs(stdout=True, stderr=True).decode(errors="replace")
    nvcc = re.search(r"release (\d+\.\d+),", logs)
    cudart = re.search(r"#define CUDART_VERSION\s+(\d+)", logs)
    headers = f"{int(cudart[1]) // 1000}.{int(cudart[1]) % 1000 // 10}" if cudart else None
    problems = []
    if not nvcc or nvcc[1] != cuda:
        problems.append(f"nvcc --version reports {nvcc[1] if nvcc else 'no release'}")
    if headers != cuda:
        problems.append(f"cuda_runtime_api.h has CUDART_VERSION {cudart[1] if cudart else 'missing'}")
    if status != 0 or "LINK_OK" not in logs:
        problems.append(f"linking -lcuda -lcudart failed (exit {status}): {logs.strip().splitlines()[-1:]}")
    if problems:
        raise CheckFailed(f"the devel test base {image[:19]} is not CUDA {cuda}: {'; '.join(problems)}; "
                          "fix docker/devel-base or re-lock its wheels")


def _image_id(ref: str) -> str | None:
    if not image_exists(ref):
        return None
    with engine_call(f"inspecting {ref}"):
        return str(client().images.get(ref).id)


def _remove_if_untagged(image_id: str) -> None:
    with engine_call(f"inspecting {image_id[:19]}"):
        tags = client().images.get(image_id).tags
    if not tags:
        _remove(image_id)


def _remove(image_id: str) -> None:
    try:
        with engine_call(f"removing {image_id[:19]}"):
            client().images.remove(image_id, force=True)
    except UserError:
        pass


# -- command line -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rollout_matrix.images.devel_base [--stack STACK ...]``: build what is missing, print refs."""
    parser = argparse.ArgumentParser(
        prog="python -m rollout_matrix.images.devel_base",
        description="Build the CUDA devel TEST bases (a test substitute for the stacks' nvidia/cuda devel images, "
                    "never a release base): the Debian test base plus each stack's CUDA wheels as /usr/local/cuda. "
                    "Prints 'STACK REF' per stack on stdout (progress goes to stderr).")
    parser.add_argument("--stack", action="extend", nargs="+", default=[],
                        help="stacks to build (default: every CUDA 12 stack of matrix.yaml)")
    parser.add_argument("--base-image", default=os.environ.get("ROLLOUT_MATRIX_TEST_BASE") or DEFAULT_TEST_BASE,
                        help=f"the local Debian base to build on (default: $ROLLOUT_MATRIX_TEST_BASE or {DEFAULT_TEST_BASE})")
    parser.add_argument("--extra-ca-cert", default=os.environ.get("ROLLOUT_MATRIX_EXTRA_CA_CERT") or None,
                        help="a PEM CA bundle pip in the build must trust (default: $ROLLOUT_MATRIX_EXTRA_CA_CERT)")
    parser.add_argument("--index-url", default=os.environ.get("ROLLOUT_MATRIX_INDEX_URL") or DEFAULT_INDEX_URL,
                        help="package index mirror (the wheels are pinned by sha256)")
    parser.add_argument("--matrix", help="matrix.yaml to read (default: the checkout's)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the content tag exists")
    parser.add_argument("--ref-only", action="store_true", help="print the refs; build nothing")
    parser.add_argument("--mapping", action="store_true",
                        help="print one line cu124=REF,cu126=REF,... to pass as --base-image")
    parser.add_argument("--lock", action="store_true",
                        help="rewrite docker/devel-base/wheels-<stack>.txt from PyPI instead (no Docker)")
    args = parser.parse_args(argv)
    try:
        matrix = load_matrix(args.matrix)
        print(f"rollout-matrix devel-base: {describe(matrix.path)}", file=sys.stderr)
        stacks = list(dict.fromkeys(args.stack)) or toolkit_stacks(matrix)
        for name in stacks:
            get_stack(matrix, name)  # every name checked before anything is built
        if args.lock:
            for name in stacks:
                print(f"{name} {lock_wheels(matrix, name)}")
            return 0
        ca = Path(args.extra_ca_cert) if args.extra_ca_cert else None
        refs = {}
        for name in stacks:
            if args.ref_only:
                refs[name] = devel_base_ref(matrix, name, args.base_image, extra_ca_cert=ca)
            else:
                refs[name] = ensure_devel_base(matrix, name, args.base_image, Reporter(f"devel-{name}", sys.stderr),
                                               extra_ca_cert=ca, index_url=args.index_url, force=args.force)
        if args.mapping:
            print(",".join(f"{name}={ref}" for name, ref in refs.items()))
        else:
            for name, ref in refs.items():
                print(f"{name} {ref}")
        return 0
    except UserError as exc:
        print(f"rollout-matrix devel-base: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("rollout-matrix devel-base: interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
