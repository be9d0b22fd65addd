"""Bad input and faults of ``bundle``, ``syslibs``, ``watch`` and ``gpu-lock``: one line naming cause and fix,
the exit code docs/ci.md gives the class (errors.py), nothing left behind, never a traceback.

Each test runs the real CLI in a subprocess (or, where the fault needs a dead server or a file that
cannot be written, the real function that meets it) against real files and a real closed port.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from rollout_matrix.bundles import syslibset
from rollout_matrix.bundles.bundle import fetch
from rollout_matrix.errors import RegistryError, UserError
from rollout_matrix.locks.pypi import IndexFile

CHECKOUT = Path(__file__).resolve().parents[2]
DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, so any request through it is refused
OFFLINE = {name: DEAD_PROXY for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}
"""An environment in which the CLI reaches no server: a refusal must come before any request."""


def cli(*args: str, env: dict[str, str] | None = None, drop: tuple[str, ...] = (),
        cwd: Path = CHECKOUT) -> subprocess.CompletedProcess[str]:
    """``rollout-matrix ARGS`` as a user runs it, with ``env`` added and the variables ``drop`` removed."""
    environ = {k: v for k, v in os.environ.items() if k not in drop} | (env or {})
    return subprocess.run([sys.executable, "-m", "rollout_matrix.cli", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, check=False, timeout=120)


def one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The error line, after checking the exit code, that it is the only line past the checkout's, and
    that no traceback leaked (as tests/integration/test_cli_faults.py checks)."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("rollout-matrix: checkout ")]
    assert len(lines) == 1 and lines[0].startswith("rollout-matrix: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


# -- A. bundle: a download that fails is the index's fault, exit 6 ---------------------------------------


@pytest.mark.parametrize("broken", ["closed port", "HTTP 503"])
def test_a_failed_download_is_a_registry_error_and_leaves_nothing_in_the_cache(
        fake_index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str) -> None:
    fake_index.add("tiny", "1.0")
    listed = fake_index.projects["tiny"][0]
    if broken == "closed port":
        fake_index.close()
    else:
        fake_index.fail_with = 503
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    file = IndexFile(listed["filename"], listed["url"], listed["hashes"]["sha256"], listed["size"], None, None)
    cache = tmp_path / "cache"
    (cache / "files").mkdir(parents=True)
    with pytest.raises(RegistryError, match=rf"^download of {file.filename} failed \(.*\); check the network") as err:
        fetch(file, cache)
    assert err.value.exit_code == 6  # docs/ci.md: `bundle` ... the package index could not be read
    assert list((cache / "files").iterdir()) == []  # no .part, no empty files/<sha256>/ folder


@pytest.fixture(scope="module")
def pypi_direct() -> None:
    """Skips unless pypi.org answers without a proxy: the test below cuts only the file host off."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        opener.open("https://pypi.org/simple/zstandard/", timeout=15).close()
    except OSError:
        pytest.skip("pypi.org is not reachable without a proxy")


def test_bundle_whose_wheel_host_is_unreachable_exits_6_and_writes_no_bundle(pypi_direct: None, tmp_path: Path) -> None:
    """The reviewer's reproduction: the index answers (no_proxy), files.pythonhosted.org does not."""
    out = tmp_path / "bx"
    proc = cli("--matrix", str(CHECKOUT / "matrix.yaml"), "bundle", "vllm-0.8.5.post1", "--python", "3.12",
               "--out", str(out), env={**OFFLINE, "no_proxy": "pypi.org", "NO_PROXY": "pypi.org",
                                       "ROLLOUT_MATRIX_CACHE": str(tmp_path / "cache")})
    line = one_line_error(proc, RegistryError.exit_code)
    assert "download of zstandard-0.23.0-" in line and "Connection refused" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no bundle, no hidden .bx.partial-*
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


# -- B. bundle: a cache that cannot be written is one line naming ROLLOUT_MATRIX_CACHE ------------------


@pytest.mark.parametrize("setting", ["ROLLOUT_MATRIX_CACHE", "HOME", "files/"])
def test_an_unwritable_cache_is_one_line_before_any_download(tmp_path: Path, setting: str) -> None:
    """ROLLOUT_MATRIX_CACHE naming a regular file; a home under which ~/.cache cannot be made (a file
    stands for HOME=/nonexistent, which root could create); a cache whose downloads folder is a file:
    exit 2 with no request made, no bundle, and nothing created (not even the cache)."""
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    cache = {"ROLLOUT_MATRIX_CACHE": afile, "HOME": afile / ".cache" / "rollout-matrix", "files/": tmp_path}[setting]
    env = {**OFFLINE, "HOME": str(afile)} if setting == "HOME" else {**OFFLINE, "ROLLOUT_MATRIX_CACHE": str(cache)}
    if setting == "files/":
        afile.rename(tmp_path / "files")
        afile = tmp_path / "files"
    proc = cli("--matrix", str(CHECKOUT / "matrix.yaml"), "bundle", "vllm-0.8.5.post1", "--python", "3.12",
               "--out", str(tmp_path / "bx"), env=env, drop=("ROLLOUT_MATRIX_CACHE",), cwd=tmp_path)
    line = one_line_error(proc, UserError.exit_code)
    assert line == (f"rollout-matrix: error: the bundle cache {cache} cannot be written ({afile} is not a folder); "
                    "set ROLLOUT_MATRIX_CACHE to a writable folder (default ~/.cache/rollout-matrix)")
    assert sorted(p.name for p in tmp_path.iterdir()) == [afile.name] and afile.read_text() == "not a folder"


def test_a_cache_under_a_file_met_by_fetch_names_the_cache_not_the_index(tmp_path: Path) -> None:
    """fetch() is also called with a cache nobody checked (tools, tests): its write error is still one
    line (exit 2) naming the setting, never a NotADirectoryError nor a network error (exit 6)."""
    afile = tmp_path / "afile"
    afile.write_text("")
    file = IndexFile("tiny-1.0-py3-none-any.whl", f"{DEAD_PROXY}/tiny-1.0-py3-none-any.whl", "ab" * 32, 1, None, None)
    with pytest.raises(UserError, match=r"bundle cache .*afile cannot be written .*ROLLOUT_MATRIX_CACHE") as err:
        fetch(file, afile)
    assert err.value.exit_code == UserError.exit_code and not isinstance(err.value, RegistryError)


# -- C. syslibs: only matrix.yaml's system_packages, and a write that fails leaves nothing --------------


@pytest.fixture
def syslibs_checkout(tmp_path: Path, tiny_engine_matrix) -> Path:
    """A checkout whose one engine lists two system packages (and no pinned sets yet)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    text = tiny_engine_matrix("3.12").replace("    bands:\n", "    system_packages: [libnuma1, ffmpeg]\n    bands:\n", 1)
    (repo / "matrix.yaml").write_text(text)
    return repo


@pytest.mark.parametrize("name", ["ffmpge", "../../../escaped", "ABSOLUTE"])
def test_syslibs_refuses_a_name_matrix_yaml_does_not_list_before_any_request(syslibs_checkout: Path, name: str) -> None:
    """A typo, a relative and an absolute path (ABSOLUTE: one beside the checkout) are all refused."""
    name = str(syslibs_checkout.parent / "evil") if name == "ABSOLUTE" else name
    proc = cli("--matrix", str(syslibs_checkout / "matrix.yaml"), "syslibs", name, "--roots", "libnuma1",
               env=OFFLINE, cwd=syslibs_checkout)
    line = one_line_error(proc, UserError.exit_code)
    assert line == (f"rollout-matrix: error: syslibs {name!r}: not a system_packages name of matrix.yaml; "
                    "choose one of: ffmpeg, libnuma1")
    written = [p for p in syslibs_checkout.parent.rglob("*") if p.is_file()]
    assert written == [syslibs_checkout / "matrix.yaml"]  # no stray set, in the checkout or outside it


@pytest.mark.parametrize("blocked", ["folder under a file", "target is a folder"])
def test_a_set_that_cannot_be_written_is_one_line_and_leaves_no_tmp(tmp_path: Path, blocked: str) -> None:
    """A read-only checkout (tests run as root, so a file in the way stands for the missing permission):
    a UserError naming the file, and no ``.tmp`` beside it."""
    if blocked == "folder under a file":
        (tmp_path / "afile").write_text("")
        path = tmp_path / "afile" / "syslibs" / "ffmpeg-bookworm-amd64.txt"
    else:
        path = tmp_path / "syslibs" / "ffmpeg-bookworm-amd64.txt"
        path.mkdir(parents=True)  # the rename onto it fails after the temporary file is written
    with pytest.raises(UserError, match=rf"^{path}: cannot be written \(.+\); run syslibs in a writable checkout$"):
        syslibset.write_set(path, "# roots: ffmpeg\n")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == \
        (["afile"] if blocked == "folder under a file" else ["syslibs", "syslibs/ffmpeg-bookworm-amd64.txt"])


# -- D. watch: a malformed --index-url is bad input ------------------------------------------------------


@pytest.mark.parametrize("url", ["not-a-url", "ftp://mirror.example/simple", "http://", "http://[::1/simple"])
def test_watch_with_a_malformed_index_url_is_exit_2_in_one_line(url: str) -> None:
    proc = cli("--matrix", str(CHECKOUT / "matrix.yaml"), "watch", "--index-url", url, env=OFFLINE)
    line = one_line_error(proc, UserError.exit_code)
    assert line == (f"rollout-matrix: error: --index-url {url!r}: not an http(s) URL; give the index's simple "
                    "API, e.g. https://pypi.org/simple")
    assert proc.stdout == ""


# -- E. gpu-lock: a malformed run.json names the file and the field --------------------------------------


@pytest.mark.parametrize(("text", "says"), [
    ("[]", "holds a list, not a JSON object with 'started' and 'seconds'"),
    ('{"started": 5}', "'started' is 5, not an ISO 8601 time"),
    ("{}", "has no 'started'"),
    ('{"started": "yesterday"}', "'started' is 'yesterday', not an ISO 8601 time"),
    ('{"started": "9999-12-31T23:59:00", "seconds": 3600}', "'started' is '9999-12-31T23:59:00', not an ISO 8601"),
    ('{"started": "2026-12-04T10:00:00+00:00", "seconds": NaN}', "'seconds' is nan, not a duration in seconds"),
    ('{"started": "2026-12-04T10:00:00+00:00", "seconds": [1]}', "'seconds' is a list, not a duration in seconds"),
    ("{", "not a JSON run record"),
])
def test_gpu_lock_on_a_malformed_run_json_is_exit_2_naming_file_and_field(tmp_path: Path, text: str, says: str) -> None:
    run = tmp_path / "vllm-9.0.0" / "run.json"
    run.parent.mkdir()
    run.write_text(text)
    line = one_line_error(cli("gpu-lock", str(tmp_path)), UserError.exit_code)
    assert f"gpu-lock {tmp_path}: {run}: {says}" in line
    assert "pass a folder of <entry>/run.json" in line



def test_gpu_lock_on_a_damaged_share_line_names_the_log_and_its_line(tmp_path: Path) -> None:
    """A `[share]` line whose span is not a time said only what strptime saw, not which file held it."""
    run = tmp_path / "vllm-9.0.0" / "run.json"
    run.parent.mkdir()
    run.write_text('{"started": "2026-12-04T10:00:00+00:00", "seconds": 60}')
    (run.parent / "pytest.log").write_text(
        "collected 3 items\n[share] this process waited 1.5s in all for the GPU lock and held it alone 9.0s over "
        "1 engine start(s) (10:00:01-29:99:99)\n")
    line = one_line_error(cli("gpu-lock", str(tmp_path)), UserError.exit_code)
    assert f"{run.parent / 'pytest.log'}:2: a [share] line that does not read (time data '29:99:99'" in line
