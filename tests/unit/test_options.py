"""Site options: what would leak a secret into an image or fail late is refused in one line that does
not repeat the secret; the site file holds them once for the CLI and nox alike."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rollout_matrix.errors import UserError
from rollout_matrix.images.options import SITE_ENV, BuildOptions
from rollout_matrix.matrix.repository import check_repository

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3tP4ssw0rd"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ROLLOUT_MATRIX_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv(SITE_ENV, str(ROOT / "tests" / "no-site.toml"))  # not the checkout's own site file


@pytest.mark.parametrize(("url", "message"), [
    (f"https://user:{SECRET}@mirror.example.com/simple", "carries credentials"),
    (f"ftp://user:{SECRET}@mirror.example.com/simple", r"must be http\(s\)"),
    (f"https://mirror.example.com/simple?token={SECRET}", "has a query or fragment"),
    ("https://mirror.example.com/pypi/AbCdEf0123456789GhIjKlMn/simple", "looks like a token"),
])
def test_index_urls_that_would_leak_a_secret_are_refused_without_repeating_it(url: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        BuildOptions.from_env(index_url=url)
    assert SECRET not in str(info.value) and "AbCdEf0123456789" not in str(info.value)


def test_a_plain_mirror_url_is_fine() -> None:
    assert BuildOptions.from_env(index_url="https://mirror.example.com/pypi/simple").index_url.endswith("/simple")


def test_a_ca_bundle_holding_a_private_key_is_refused(tmp_path: Path) -> None:
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
                   "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n")
    with pytest.raises(UserError, match="also holds a PRIVATE KEY"):
        BuildOptions.from_env(extra_ca_cert=str(pem))


@pytest.mark.parametrize("repository", ["ghcr.io/OWNER/rollout-matrix", "Rollout-Matrix", "host:port/x", "a//b"])
def test_repositories_docker_would_refuse_are_refused_first(repository: str) -> None:
    with pytest.raises(UserError, match="is not a valid image repository"):
        check_repository(repository)


@pytest.mark.parametrize("repository", ["rollout-matrix", "127.0.0.1:5000/rm-test-1", "ghcr.io/acme/rollout-matrix",
                                        "localhost/a_b/c.d"])
def test_valid_repositories(repository: str) -> None:
    assert check_repository(repository) == repository


def test_upper_case_repository_names_the_lower_case_fix() -> None:
    with pytest.raises(UserError, match=r"Docker needs lower case: ghcr\.io/owner/rollout-matrix"):
        BuildOptions.from_env(repository="ghcr.io/OWNER/rollout-matrix")


def test_site_file_is_read_below_variables_and_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site.toml"
    site.write_text('[site]\nbase_image = "rollout-matrix-test/debian:bookworm"\npython = "3.11"\n'
                    'repository = "127.0.0.1:5000/acme"\n')
    monkeypatch.setenv(SITE_ENV, str(site))
    opts = BuildOptions.from_env()
    assert (opts.base_image, opts.python, opts.repository) == ("rollout-matrix-test/debian:bookworm", "3.11",
                                                               "127.0.0.1:5000/acme")
    monkeypatch.setenv("ROLLOUT_MATRIX_PYTHON", "3.12")
    assert BuildOptions.from_env().python == "3.12"
    assert BuildOptions.from_env(python="3.10").python == "3.10"


@pytest.mark.parametrize(("text", "message"), [
    ("[site]\nbase-imag = 'x'\n", "unknown keys base_imag"),
    ("[other]\nx = 1\n", "unknown keys other"),
    ("[site\n", "not a readable TOML site file"),
])
def test_bad_site_files_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str) -> None:
    site = tmp_path / "site.toml"
    site.write_text(text)
    monkeypatch.setenv(SITE_ENV, str(site))
    with pytest.raises(UserError, match=message):
        BuildOptions.from_env()


def test_the_cli_reads_the_site_file_too(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text('[site]\nbase_image = "rollout-matrix-test/debian:bookworm"\npython = "3.11"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOUT_MATRIX_")}
    proc = subprocess.run([sys.executable, "-m", "rollout_matrix.cli", "list", "--json", "--compact"],
                          env={**env, SITE_ENV: str(site)}, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert '"base_image": "rollout-matrix-test/debian:bookworm"' in proc.stdout and '"python": "3.11"' in proc.stdout


# -- reliability round 2: no URL error prints a credential, site file values have their types -------------


@pytest.mark.parametrize(("url", "message"), [
    # a credential and no @: the token lands in the "port" (a ValueError traceback printed it)
    (f"https://__token__:pypi-{SECRET}/simple", "has no valid host name"),
    # a password holding '/': its first part used to be shown as the port
    (f"https://user:1234/{SECRET}@mirror.example.com/simple", "carries credentials"),
    (f"https://{SECRET}@mirror.example.com/simple", "carries credentials"),
    ("https://mirror.example.com:99999/simple", "port that is not a number from 1 to 65535"),
    (f"https://mirror.example.com:{SECRET}/simple", "port that is not a number from 1 to 65535"),
    ("https://mirror.example.com:0/simple", "port that is not a number from 1 to 65535"),
    (f"https://[{SECRET}/simple", "not a valid URL"),
    (f"{SECRET}://mirror.example.com/simple", r"\?://\.\.\. must be http\(s\)"),
    (f"https://mirror.example.com/simple {SECRET}", "is not a URL"),
])
def test_malformed_index_urls_with_secrets_are_one_line_that_never_repeats_them(url: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        BuildOptions.from_env(index_url=url)
    assert SECRET not in str(info.value) and "1234" not in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("token", ["pypi-AgEIcHlw", "ghp_abc12345", "glpat-xY12zz", "0123456789abcdef",
                                   "a1B2c3D4e5F6g7H8", "AbCdEf0123456789GhIjKlMn"])
def test_tokens_shorter_than_24_characters_in_the_path_are_found(token: str) -> None:
    with pytest.raises(UserError, match=rf"looks like a token \({len(token)} characters\)") as info:
        BuildOptions.from_env(index_url=f"https://pypi.fury.io/{token}/acme/simple")
    assert token not in str(info.value)


@pytest.mark.parametrize("path", ["/simple", "/pypi/simple", "/repository/pypi-proxy/simple", "/whl/cu128",
                                  "/api/pypi/pypi-remote/simple", "/root/pypi/+simple", "/devpi/Company-Mirror/simple",
                                  "/artifactory/api/pypi/python-virtual-2024/simple"])
def test_mirror_paths_are_not_mistaken_for_tokens(path: str) -> None:
    assert BuildOptions.from_env(index_url=f"https://mirror.example.com:8443{path}").index_url.endswith(path)


@pytest.mark.parametrize(("line", "message"), [
    ("python = 3.11", r"\[site\] python = 3\.11 must be a string in quotes, e\.g\. python = \"3\.11\""),
    ("repository = 42", r"\[site\] repository = 42 must be a string in quotes"),
    ("locked = \"no\"", r"\[site\] locked = 'no' must be true or false"),
    ("index_url = [\"https://x\"]", r"\[site\] index_url = a list must be a string in quotes"),
    ("python = \"3.x\"", r"--python '3\.x' must look like 3\.11"),
    ("index_url = \"https://mirror.example.com:99999/simple\"", "port that is not a number"),
])
def test_site_file_values_of_the_wrong_type_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         line: str, message: str) -> None:
    site = tmp_path / "site.toml"
    site.write_text(f"[site]\n{line}\n")
    monkeypatch.setenv(SITE_ENV, str(site))
    with pytest.raises(UserError, match=message) as info:
        BuildOptions.from_env()
    assert "\n" not in str(info.value)


def test_a_site_file_or_matrix_that_never_ends_is_refused_not_read_whole(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SITE_ENV, "/dev/zero")
    with pytest.raises(UserError, match=r"^/dev/zero: over 256 KiB, not a site file"):
        BuildOptions.from_env()
    monkeypatch.setenv(SITE_ENV, str(tmp_path))
    with pytest.raises(UserError, match="is a directory, not a site file"):
        BuildOptions.from_env()
    from rollout_matrix.matrix.load import load_matrix

    with pytest.raises(UserError, match=r"^/dev/zero: over 8 MiB, not a matrix file"):
        load_matrix("/dev/zero")


@pytest.mark.parametrize(("kwargs", "env", "message"), [
    ({}, {"ROLLOUT_MATRIX_LOCKED": "maybe"}, "ROLLOUT_MATRIX_LOCKED='maybe' is neither 1 nor 0"),
    ({"registry_mirror": "https://mirror.example.com"}, {}, "--registry-mirror is not HOST"),
    ({"registry_mirror": f"user:{SECRET}@mirror.example.com"}, {}, "--registry-mirror is not HOST"),
    ({"registry_mirror": "mirror example"}, {}, "--registry-mirror is not HOST"),
    ({"extra_ca_cert": "/proc"}, {}, "extra CA certificate /proc is not a file"),
])
def test_other_options_out_of_their_shape_are_one_line(monkeypatch: pytest.MonkeyPatch, kwargs: dict, env: dict,
                                                       message: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=message) as info:
        BuildOptions.from_env(**kwargs)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(("value", "locked"), [("0", False), ("false", False), ("No", False), ("1", True), ("yes", True)])
def test_locked_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str, locked: bool) -> None:
    monkeypatch.setenv("ROLLOUT_MATRIX_LOCKED", value)
    assert BuildOptions.from_env().locked is locked
