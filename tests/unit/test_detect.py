"""Detection against package metadata written by the test (real importlib.metadata, no mocks).

Each case writes ``<name>-<version>.dist-info/METADATA`` into a fresh directory put first on
``sys.path``: exactly what ``pip install`` leaves behind, minus the code. The host venv has neither
engine installed, which ``test_host_has_no_engine`` asserts so these tests cannot pass by accident.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.version import Version

from rollout_matrix.matrix.load import load_matrix
from rollout_shims import FORCE_ENV, EngineNotFoundError, UnsupportedEngineError, detect
from rollout_shims.bands import load_bands
from rollout_shims.shims import SHIMS

SRC = Path(__file__).resolve().parents[2] / "src"

# Written by hand from the band boundaries read in the wheels (docs/shims.md), NOT computed from
# bands.yaml: a wrong edge in the table must make this test fail. Each band's first and last known
# release and the releases on either side of every boundary; the matrix itself is checked from data
# (every release of matrix.yaml lands in exactly one band), so adding a release needs no edit here.
EXPECTED: dict[tuple[str, str], str] = {
    ("sglang", "0.4.4"): "sglang-0.4.4",
    ("sglang", "0.4.5.post2"): "sglang-0.4.4",
    ("sglang", "0.4.5.post3"): "sglang-0.4.5.post3",
    ("sglang", "0.4.6.post5"): "sglang-0.4.5.post3",
    ("sglang", "0.4.7.post1"): "sglang-0.4.5.post3",
    ("sglang", "0.4.8"): "sglang-0.4.8",
    ("sglang", "0.4.10.post2"): "sglang-0.4.8",
    ("sglang", "0.5.1"): "sglang-0.5.1",
    ("sglang", "0.5.2"): "sglang-0.5.1",
    ("sglang", "0.5.3"): "sglang-0.5.3",
    ("sglang", "0.5.5.post3"): "sglang-0.5.3",
    ("sglang", "0.5.6"): "sglang-0.5.6",
    ("sglang", "0.5.9"): "sglang-0.5.6",
    ("sglang", "0.5.10"): "sglang-0.5.10",
    ("sglang", "0.5.13.post1"): "sglang-0.5.10",
    ("sglang", "0.5.14"): "sglang-0.5.14",
    ("sglang", "0.5.16+cu129"): "sglang-0.5.14",
    ("sglang", "0.5.19"): "sglang-0.5.14",
    ("sglang", "0.5.20"): "sglang-0.5.20",
    ("sglang", "0.5.21"): "sglang-0.5.21",
    ("sglang", "0.5.23"): "sglang-0.5.21",
    ("vllm", "0.8.5"): "vllm-0.8.5",
    ("vllm", "0.8.5.post1"): "vllm-0.8.5",
    ("vllm", "0.9.0"): "vllm-0.9",
    ("vllm", "0.10.0"): "vllm-0.9",
    ("vllm", "0.10.1"): "vllm-0.10.1",
    ("vllm", "0.10.2"): "vllm-0.10.1",
    ("vllm", "0.11.0"): "vllm-0.11",
    ("vllm", "0.11.2"): "vllm-0.11",
    ("vllm", "0.12.0"): "vllm-0.12",
    ("vllm", "0.13.0"): "vllm-0.13",
    ("vllm", "0.22.0"): "vllm-0.13",
    ("vllm", "0.24.0"): "vllm-0.13",
    ("vllm", "0.25.0"): "vllm-0.25",
    ("vllm", "0.33.0"): "vllm-0.25",
    ("vllm", "0.33.1"): "vllm-0.25",
    ("vllm", "0.34.0"): "vllm-0.25",
    ("vllm", "0.34.1"): "vllm-0.25",
}

# Versions no band may ever take: pre-releases and dev builds, below the oldest release, releases
# that do not exist as finals (SGLang 0.5.0), and far beyond today.
REFUSED = [
    ("sglang", "0.4.3"), ("sglang", "0.4.3.post4"), ("sglang", "0.4.4rc1"), ("sglang", "0.4.4.dev5"),
    ("sglang", "0.4.11"), ("sglang", "0.5.0"), ("sglang", "0.5.0rc2"), ("sglang", "0.5.2rc2"),
    ("sglang", "0.5.2.dev0"), ("sglang", "0.5.2.post1.dev1"), ("sglang", "0.5.3rc0"), ("sglang", "0.5.10rc0"),
    ("sglang", "0.5.24"), ("sglang", "0.0.0.dev1+g1234abc"),
    ("sglang", "99.0.0"), ("vllm", "0.8.4"), ("vllm", "0.8.5rc1"), ("vllm", "0.8.5.dev3"), ("vllm", "0.8.6"),
    ("vllm", "0.9.0rc1"), ("vllm", "0.22.0rc1"), ("vllm", "0.33.0rc1"), ("vllm", "0.34.0rc1"), ("vllm", "0.35.0"),
    ("vllm", "99.0.0"),
]


def install_metadata(root: Path, name: str, version: str) -> None:
    """What pip leaves for an installed distribution, without its code."""
    info = root / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh site directory first on sys.path; returns a function installing metadata into it."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(FORCE_ENV, raising=False)

    def install(name: str, version: str) -> None:
        install_metadata(tmp_path, name, version)

    return install


def test_host_has_no_engine() -> None:
    for dist in ("sglang", "vllm"):
        with pytest.raises(metadata.PackageNotFoundError):
            metadata.version(dist)


def test_every_band_has_a_release_in_the_matrix_and_every_release_a_band() -> None:
    entries = list(load_matrix())
    bands = load_bands()
    for band in bands:
        assert any(e.engine == band.engine and band.contains(Version(e.version)) for e in entries), (
            f"band {band.shim} has no release in matrix.yaml")
    for e in entries:
        holders = [b.shim for b in bands if b.engine == e.engine and b.contains(Version(e.version))]
        assert len(holders) == 1, (e.name, holders)


MATRIX_RELEASES = sorted(((e.engine, e.version) for e in load_matrix()), key=lambda k: (k[0], Version(k[1])))


@pytest.mark.parametrize(("engine", "version"), MATRIX_RELEASES)
def test_every_matrix_release_is_detected_from_its_metadata(site, engine: str, version: str) -> None:
    site(engine, version)
    found = detect()
    assert (found.engine, found.version, found.forced, found.release) == (engine, version, False, version)
    assert found.band.contains(Version(version)) and found.band.shim == found.shim
    if (engine, version) in EXPECTED:
        assert found.shim == EXPECTED[engine, version]


@pytest.mark.parametrize(("engine", "version"), sorted(EXPECTED, key=lambda k: (k[0], Version(k[1]))))
def test_hand_written_band_edges(site, engine: str, version: str) -> None:
    site(engine, version)
    assert detect().shim == EXPECTED[engine, version]


@pytest.mark.parametrize(("engine", "version", "shim"), [
    ("sglang", "0.5.2+cu126", "sglang-0.5.1"),
    ("sglang", "0.4.6.post5+cu124", "sglang-0.4.5.post3"),
    ("sglang", "0.4.5.post3+local.1", "sglang-0.4.5.post3"),
    ("sglang", "0.4.5.post2+cu124", "sglang-0.4.4"),
    ("vllm", "0.8.5.post1+cu124", "vllm-0.8.5"),
    ("vllm", "0.22.1", "vllm-0.13"),
    ("vllm", "0.33.1", "vllm-0.25"),
    ("vllm", "0.34.0+cu130", "vllm-0.25"),
])
def test_local_versions_and_later_patch_releases(site, engine: str, version: str, shim: str) -> None:
    site(engine, version)
    found = detect()
    assert found.shim == shim
    assert found.release == Version(version).public


def test_rlinf_and_verl_comparison_bugs_are_absent(site) -> None:
    # RLinf v0.1 guarded with `<= 0.5.2rc2`, which refuses the stock 0.5.2 it documented.
    site("sglang", "0.5.2")
    assert detect().shim == "sglang-0.5.1"


def test_string_order_is_not_version_order(site) -> None:
    # verl compared versions as strings: "0.4.10" < "0.4.8" as text.
    site("sglang", "0.4.10")
    assert detect().shim == "sglang-0.4.8"


@pytest.mark.parametrize(("engine", "version"), REFUSED)
def test_refused_versions_name_the_ranges_and_the_override(site, engine: str, version: str) -> None:
    site(engine, version)
    with pytest.raises(UnsupportedEngineError) as err:
        detect()
    message = str(err.value)
    assert f"{engine} {version}" in message
    assert FORCE_ENV in message and "force_shim" in message
    for band in load_bands():
        if band.engine == engine:
            assert band.text in message and band.shim in message


def test_prerelease_of_a_supported_final_is_called_a_prerelease(site) -> None:
    site("sglang", "0.5.2rc2")
    with pytest.raises(UnsupportedEngineError, match="pre-release"):
        detect()


def test_force_by_environment(site, monkeypatch: pytest.MonkeyPatch) -> None:
    site("sglang", "99.0.0")
    monkeypatch.setenv(FORCE_ENV, "sglang-0.5.1")
    found = detect()
    assert (found.shim, found.forced, found.version) == ("sglang-0.5.1", True, "99.0.0")


def test_force_by_argument_beats_nothing_and_works_on_prereleases(site) -> None:
    site("vllm", "0.9.0rc1")
    found = detect(force_shim="vllm-0.8.5")
    assert (found.shim, found.forced) == ("vllm-0.8.5", True)


def test_force_of_unknown_or_foreign_shim_fails(site, monkeypatch: pytest.MonkeyPatch) -> None:
    site("sglang", "99.0.0")
    with pytest.raises(UnsupportedEngineError, match="unknown shim 'sglang-9'"):
        detect(force_shim="sglang-9")
    monkeypatch.setenv(FORCE_ENV, "vllm-0.8.5")
    with pytest.raises(UnsupportedEngineError) as err:  # it named the clash, not the way out of it
        detect()
    assert str(err.value) == (
        "forced shim 'vllm-0.8.5' is for vllm, but the engine in use is sglang 99.0.0; set rollout.rollout_backend: "
        f"vllm if vllm is installed too, or force a sglang-* shim (or none: unset {FORCE_ENV} and rollout.force_shim)")


def test_both_installed_backend_picks(site) -> None:
    site("sglang", "0.4.6.post5")
    site("vllm", "0.8.5")
    assert detect("sglang").shim == "sglang-0.4.5.post3"
    assert detect("vllm").shim == "vllm-0.8.5"
    with pytest.raises(EngineNotFoundError, match="both engines are installed"):
        detect()


def test_requested_backend_not_installed(site) -> None:
    site("vllm", "0.8.5")
    with pytest.raises(EngineNotFoundError, match=r"'sglang' package is not installed.*vllm 0.8.5"):
        detect("sglang")
    with pytest.raises(EngineNotFoundError, match="unknown backend"):
        detect("trtllm")


def test_neither_installed(site) -> None:
    with pytest.raises(EngineNotFoundError, match="no rollout engine is installed"):
        detect()


def test_invalid_version_string_is_refused(site) -> None:
    site("vllm", "not.a.version")
    with pytest.raises(UnsupportedEngineError, match="not a valid version"):
        detect()


def test_bands_do_not_overlap_and_name_registered_shims() -> None:
    bands = load_bands()
    assert {b.shim for b in bands} == set(SHIMS)
    probes = {(b.engine, s.version) for b in bands for s in b.versions} | set(EXPECTED)
    for engine, text in probes:
        v = Version(text)
        for variant in (v, Version(f"{v.public}.post9") if not v.is_postrelease else v):
            holders = [b.shim for b in bands if b.engine == engine and b.contains(variant)]
            assert len(holders) <= 1, (engine, variant, holders)
    for a, b in itertools.combinations(bands, 2):
        assert a.shim != b.shim


def test_detect_in_a_fresh_interpreter_imports_no_engine_and_no_torch(tmp_path: Path) -> None:
    install_metadata(tmp_path, "sglang", "0.5.2")
    code = (
        "import rollout_shims, sys; d = rollout_shims.detect(); print(d.shim);"
        "heavy = [m for m in ('torch', 'sglang', 'vllm') if m in sys.modules]; assert not heavy, heavy"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(SRC)])}
    env.pop(FORCE_ENV, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "sglang-0.5.1"


# -- broken metadata: one UnsupportedEngineError naming the cause, never a guess ----------------------

def test_metadata_that_is_not_utf8_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "sglang-0.5.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_bytes(b"Metadata-Version: 2.1\nName: sglang\nVersion: 0.5.2\nSummary: caf\xe9\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UnsupportedEngineError, match=r"sglang package metadata is not UTF-8.*reinstall sglang"):
        detect()


@pytest.mark.parametrize("header", ["Version: \n", ""])
def test_metadata_without_a_version_is_named_and_forcing_does_not_crash(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        header: str) -> None:
    info = tmp_path / "sglang-0.5.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: sglang\n{header}")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UnsupportedEngineError, match=r"METADATA at .*sglang-0\.5\.2\.dist-info has no Version"):
        detect()


def test_a_forced_shim_on_an_unparsable_version_reports_it_as_is(site) -> None:
    site("vllm", "not.a.version")
    found = detect(force_shim="vllm-0.13")
    assert (found.shim, found.release, found.forced) == ("vllm-0.13", "not.a.version", True)


def test_two_installs_of_one_engine_are_refused_with_both_places(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for sub, version in (("a", "0.5.2"), ("b", "0.4.6.post5")):
        install_metadata(tmp_path / sub, "sglang", version)
        monkeypatch.syspath_prepend(str(tmp_path / sub))
    with pytest.raises(UnsupportedEngineError) as info:
        detect()
    assert "2 installs of sglang" in str(info.value)
    assert "0.5.2 at" in str(info.value) and "0.4.6.post5 at" in str(info.value)


def test_metadata_in_a_symlink_loop_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "sglang-0.5.2.dist-info"
    info.mkdir()
    (info / "METADATA").symlink_to(info / "METADATA")  # ELOOP on open
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UnsupportedEngineError, match=r"sglang package metadata at .*sglang-0\.5\.2\.dist-info cannot be "
                                                     r"read \(.*\); reinstall sglang"):
        detect()


@pytest.mark.parametrize("version", ["1" * 100_000, "0." * 5000 + "1"], ids=["100000-digits", "5000-parts"])
def test_a_version_of_thousands_of_digits_is_one_short_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            version: str) -> None:
    info = tmp_path / "sglang-0.dist-info"  # the folder name cannot hold such a version: METADATA does
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: sglang\nVersion: {version}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(FORCE_ENV, raising=False)
    with pytest.raises(UnsupportedEngineError) as info:
        detect()
    assert f"has a Version of {len(version)} characters, not a release" in str(info.value)
    assert len(str(info.value)) < 400
