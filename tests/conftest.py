"""Shared helpers of the host tests (tests/unit, tests/integration); stdlib and pytest only, since
pytest also loads this file when tests/engine runs inside an image."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# The host tests name every site option they use: the machine's own site file (.ci/services.sh writes
# rollout-matrix.toml) must not change what they, or the CLI they start, build or expect.
os.environ["ROLLOUT_MATRIX_SITE"] = str(Path(__file__).with_name("no-site.toml"))


def _run_suite(workdir: Path, *, cpu: dict[str, int], gpu: dict[str, int]) -> tuple[Path, int]:
    """Real pytest over a generated test_cpu.py and test_gpu.py with known outcomes (passed, failed,
    skipped, errors: a fixture failing in setup); returns the JUnit path and pytest's exit code."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name, spec in (("test_cpu.py", cpu), ("test_gpu.py", gpu)):
        lines = ["import pytest", "", "@pytest.fixture", "def broken():", "    raise RuntimeError('setup')", ""]
        lines += [f"def test_pass_{i}():\n    pass\n" for i in range(spec.get("passed", 0))]
        lines += [f"def test_fail_{i}():\n    assert {i} == -1\n" for i in range(spec.get("failed", 0))]
        lines += [f"def test_skip_{i}():\n    pytest.skip('no CUDA GPU visible')\n" for i in range(spec.get("skipped", 0))]
        lines += [f"def test_error_{i}(broken):\n    pass\n" for i in range(spec.get("errors", 0))]
        (workdir / name).write_text("\n".join(lines))
    (workdir / "pytest.ini").write_text("[pytest]\n")  # keep the project's pytest config out of it
    junit = workdir / "out" / "junit.xml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"],
                          cwd=workdir, env=env, capture_output=True, text=True, check=False, timeout=120)
    assert junit.is_file(), proc.stdout + proc.stderr
    return junit, proc.returncode


@pytest.fixture(scope="session")
def suite_runner() -> Callable[..., tuple[Path, int]]:
    """``suite_runner(dir, cpu={...}, gpu={...})``: JUnit XML from the real pytest, known outcomes."""
    return _run_suite


TINY_ENGINE_MATRIX = """\
schema: 1
stacks:
  cpu:
    cuda: "12.8"
    base_image: debian:bookworm
    python: "{python}"
engines:
  tiny:
    package: requests
    requirement: "requests=={{version}}"
    bands:
      - stack: cpu
        torch: none  # a CPU-only stand-in engine: it pins no torch
        releases:
          "2.31.0": {{}}
"""


@pytest.fixture(scope="session")
def tiny_engine_matrix() -> Callable[[str], str]:
    """``tiny_engine_matrix(python)``: a matrix.yaml whose one "engine" is requests 2.31.0 (first
    uploaded 2023-05-22; urllib3 2.0.3 came on 2023-06-07): locks and bundles in seconds."""
    return lambda python: TINY_ENGINE_MATRIX.format(python=python)


@pytest.fixture(scope="session")
def pypi() -> None:
    """Skips (saying why) where pypi.org cannot be reached."""
    import urllib.request

    try:
        urllib.request.urlopen("https://pypi.org/simple/requests/", timeout=15).close()
    except OSError:
        pytest.skip("pypi.org is not reachable (set SSL_CERT_FILE behind a TLS proxy)")


class FakeIndex:
    """A package index on 127.0.0.1 speaking what rollout_matrix.locks.pypi reads: the JSON simple API
    (PEP 691/700) and wheel files answering HEAD and Range requests. Each release is one real wheel
    (a zip whose METADATA carries the given Requires-Dist), so new-release reads it as it reads PyPI's."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.projects: dict[str, list[dict]] = {}
        self.files: dict[str, bytes] = {}
        self.fail_with: int | None = None  # answer every request with this HTTP status
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None,
                      head: bool = False) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _answer(self, head: bool) -> None:
                import json
                import re

                if index.fail_with:
                    return self._send(index.fail_with, b"down", "text/plain", head=head)
                m = re.fullmatch(r"/simple/([^/]+)/", self.path)
                if m:
                    files = index.projects.get(m.group(1))
                    if files is None:
                        return self._send(404, b"not found", "text/plain", head=head)
                    body = json.dumps({"meta": {"api-version": "1.1"}, "name": m.group(1), "files": files}).encode()
                    return self._send(200, body, "application/vnd.pypi.simple.v1+json", head=head)
                m = re.fullmatch(r"/files/([^/]+)", self.path)
                if not m or m.group(1) not in index.files:
                    return self._send(404, b"not found", "text/plain", head=head)
                data = index.files[m.group(1)]
                rng = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
                if rng:
                    start, end = int(rng.group(1)), min(int(rng.group(2)), len(data) - 1)
                    return self._send(206, data[start:end + 1], "application/octet-stream",
                                      {"Content-Range": f"bytes {start}-{end}/{len(data)}"}, head)
                return self._send(200, data, "application/octet-stream", head=head)

            def do_GET(self) -> None:
                self._answer(head=False)

            def do_HEAD(self) -> None:
                self._answer(head=True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, project: str, version: str, requires: list[str] | tuple[str, ...] = (), yanked: bool = False,
            upload_time: str = "2026-11-16T23:50:58Z") -> None:
        """One release of ``project``: a py3-none-any wheel whose METADATA lists ``requires``."""
        import io
        import zipfile

        dist = project.replace("-", "_")
        filename = f"{dist}-{version}-py3-none-any.whl"
        metadata = "".join([f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n",
                            *(f"Requires-Dist: {r}\n" for r in requires)])
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr(f"{dist}/__init__.py", "")
            zf.writestr(f"{dist}-{version}.dist-info/METADATA", metadata)
        self._publish(project, filename, buf.getvalue(), yanked, upload_time)

    def _publish(self, project: str, filename: str, data: bytes, yanked: bool, upload_time: str) -> None:
        """Serve ``data`` as ``filename`` and list it among ``project``'s files, as the JSON API does."""
        import hashlib

        self.files[filename] = data
        base = self.url.rsplit("/simple", 1)[0]
        self.projects.setdefault(project, []).append({
            "filename": filename, "url": f"{base}/files/{filename}", "size": len(data),
            "hashes": {"sha256": hashlib.sha256(data).hexdigest()}, "upload-time": upload_time,
            "yanked": yanked,
        })

    def add_sdist(self, project: str, version: str, build_backend: str, yanked: bool = False,
                  layout: str = "tar") -> str:
        """One sdist of ``project==version`` whose pyproject.toml names ``build_backend``
        (``wheel_stub.buildapi``: the layout of a wheel stub, as cuda-tile 1.6.0rc5's on PyPI). ``layout``:
        ``tar`` (NAME-VERSION/... in a tar.gz), ``tar-dot`` (./NAME-VERSION/..., as some tools write)
        or ``zip``. Returns the file name."""
        import io
        import tarfile
        import zipfile

        dist = project.replace("-", "_")
        files = {"pyproject.toml": f'[build-system]\nrequires = ["x"]\nbuild-backend = "{build_backend}"\n',
                 "PKG-INFO": f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n"}
        top = f"{'./' if layout == 'tar-dot' else ''}{dist}-{version}"
        buf = io.BytesIO()
        if layout == "zip":
            filename = f"{dist}-{version}.zip"
            with zipfile.ZipFile(buf, "w") as zf:
                for name, text in files.items():
                    zf.writestr(f"{top}/{name}", text)
        else:
            filename = f"{dist}-{version}.tar.gz"
            with tarfile.open(fileobj=buf, mode="w:gz") as tar:
                for name, text in files.items():
                    info = tarfile.TarInfo(f"{top}/{name}")
                    info.size = len(text.encode())
                    tar.addfile(info, io.BytesIO(text.encode()))
        self._publish(project, filename, buf.getvalue(), yanked, "2026-08-06T00:00:00Z")
        return filename

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_index():
    """A :class:`FakeIndex`, served for the test and shut down after it."""
    index = FakeIndex()
    yield index
    index.close()


@pytest.fixture
def environment() -> Iterator[None]:
    """os.environ as it was before the test, put back after it: the shims write into it directly, as they
    do for the engines they start."""
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)
