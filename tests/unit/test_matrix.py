"""matrix.yaml: the real file expands to every supported release; bad files fail at file:line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from rollout_matrix.errors import UserError
from rollout_matrix.matrix.load import MatrixError, load_matrix

ROOT = Path(__file__).resolve().parents[2]

def test_real_matrix_expands_every_release_consistently():
    """Checked from the data, so adding a release needs no edit here; the values below are facts of
    releases that are in the matrix for good."""
    matrix = load_matrix(ROOT / "matrix.yaml")
    names = [e.name for e in matrix]
    assert len(names) == len(set(names))
    for entry in matrix:
        assert entry.stack.base_image.startswith(f"nvidia/cuda:{entry.cuda}."), entry.name
        assert re.fullmatch(r"3\.\d+", entry.python)
        expected = entry.expected_versions()
        assert expected[entry.package] == entry.version
        assert expected["torch"] == entry.torch and expected["torch.cuda"] == entry.cuda
    sg = matrix.get("sglang-0.5.2")
    assert sg.requirement == "sglang[srt,torch-memory-saver]==0.5.2" and sg.torch == "2.8.0" and sg.python == "3.10"
    assert sg.expected_versions()["sgl-kernel"] == "0.3.9.post2"
    assert sg.expected_versions()["flashinfer-python"] == "0.3.1"
    assert sg.readable_tag == "sglang-0.5.2-cu128"
    assert (matrix.get("sglang-0.4.6.post5").torch, matrix.get("vllm-0.8.5.post1").torch) == ("2.6.0", "2.6.0")
    assert matrix.get("sglang-0.4.4").unavailable and not matrix.get("sglang-0.4.6.post1").unavailable


def test_unknown_entry_suggests_the_nearest():
    matrix = load_matrix(ROOT / "matrix.yaml")
    with pytest.raises(UserError, match=r"unknown matrix entry 'sglang-0\.4\.11'.*did you mean .*sglang-0\.4\.1"):
        matrix.get("sglang-0.4.11")


GOOD = """\
schema: 1
stacks:
  cu124:
    cuda: "12.4"
    base_image: nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04
    python: "3.10"
engines:
  vllm:
    package: vllm
    requirement: "vllm=={version}"
    bands:
      - torch: "2.6.0"
        stack: cu124
        releases:
          "0.8.5": {}
"""


def _load(tmp_path: Path, text: str):
    path = tmp_path / "matrix.yaml"
    path.write_text(text)
    return load_matrix(path)


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        ('    cuda: "12.4"', "    cuda: 12.4", 4, 'must be quoted (YAML reads 12.4 as a number): write "12.4"'),
        ("      - torch: \"2.6.0\"", "      - torch: \"2.6.00\"", 12, "is not in normal form; write '2.6.0'"),
        ("        stack: cu124", "        stack: cu999", 13, "stack 'cu999' is not defined under stacks (known: cu124)"),
        ("    package: vllm", "    packge: vllm", 9, "unknown key 'packge'; did you mean 'package'?"),
        ('          "0.8.5": {}', '          "0.8.5": {}\n          "0.8.5": {}', 16, "duplicate key '0.8.5'"),
        ('    requirement: "vllm=={version}"', '    requirement: "vllm==0.8.5"', 10, "must contain {version}"),
        # a brace other than {version}: str.format raised KeyError or ValueError, a traceback from every command
        ('    requirement: "vllm=={version}"', '    requirement: "vllm=={version}; python_version >= {py}"', 10,
         "requirement gives 'vllm==0.8.5; python_version >= {py}'"),
        ('    requirement: "vllm=={version}"', '    requirement: "vllm=={version}{"', 10, "requirement gives 'vllm==0.8.5{'"),
        ('          "0.8.5": {}', '          "0.8.5": {torch: "two"}', 15, "is not a PEP 440 version"),
        ("schema: 1", "schema: 2", 1, "schema 2 is not supported"),
        ('    python: "3.10"', '    python: "python3"', 6, "is not valid; expected something like '3.10'"),
        ("    base_image: nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04\n", "", 4, "stacks.cu124: missing key 'base_image'; add it"),
        ("      - torch", "      -  torch: [\n      - torch", 13, "not valid YAML"),
        ('      - torch: "2.6.0"\n        stack: cu124', "      - stack: cu124", 12, "missing key 'torch'"),
        ('          "0.8.5": {}', "          {}", 15, "engines.vllm.bands[0].releases is empty; list at least one"),
        ("        stack: cu124\n", '        stack: cu124\n        requirement: "vllm[x]==1"\n', 14,
         "engines.vllm.bands[0].requirement must contain {version}"),
        ("        stack: cu124\n", "        stack: cu124\n        system_packages: [ffmpeg; rm -rf /]\n", 14,
         "system_packages: 'ffmpeg; rm -rf /' is not a Debian/Ubuntu package name"),
        ("        stack: cu124\n", "        stack: cu124\n        system_packages: []\n", 14,
         "must be a non-empty list of distro package names, e.g. [ffmpeg]"),
    ],
)
def test_bad_matrix_names_file_line_and_fix(tmp_path, old, new, line, message):
    assert old in GOOD
    with pytest.raises(MatrixError) as err:
        _load(tmp_path, GOOD.replace(old, new, 1))
    text = str(err.value)
    assert text.startswith(f"{tmp_path / 'matrix.yaml'}:{line}: "), text
    assert message in text
    assert "\n" not in text


def test_good_fixture_loads(tmp_path):
    matrix = _load(tmp_path, GOOD)
    assert [e.name for e in matrix] == ["vllm-0.8.5"]


def test_a_band_may_carry_its_own_requirement(tmp_path):
    # SGLang 0.5.3 dropped the srt extra: its band installs the plain package, the others keep the template
    text = GOOD.replace('          "0.8.5": {}\n', '          "0.8.5": {}\n      - torch: "2.6.0"\n        stack: cu124\n'
                        '        requirement: "vllm[audio]=={version}"\n        releases:\n          "0.9.0": {}\n')
    matrix = _load(tmp_path, text)
    assert [e.requirement for e in matrix] == ["vllm==0.8.5", "vllm[audio]==0.9.0"]


def test_a_bands_system_packages_reach_its_image_build_and_change_its_content_hash(tmp_path):
    import shutil

    from rollout_matrix.images.options import BuildOptions
    from rollout_matrix.images.plan import plan_build

    shutil.copytree(Path(__file__).resolve().parents[2] / "docker", tmp_path / "docker")  # the build context
    plain = _load(tmp_path, GOOD).get("vllm-0.8.5")
    with_ffmpeg = _load(tmp_path, GOOD.replace("        stack: cu124\n",
                                               "        stack: cu124\n        system_packages: [ffmpeg, libsox3]\n"))
    entry = with_ffmpeg.get("vllm-0.8.5")
    assert entry.system_packages == ("ffmpeg", "libsox3") and plain.system_packages == ()
    assert entry.digest() != plain.digest()
    plan = plan_build(with_ffmpeg, entry, BuildOptions(locked=False))
    assert plan.buildargs()["SYSTEM_PACKAGES"] == "ffmpeg libsox3"


def test_an_engines_system_packages_come_first_and_a_band_adds_its_own(tmp_path):
    text = GOOD.replace('    requirement: "vllm=={version}"\n',
                        '    requirement: "vllm=={version}"\n    system_packages: [libnuma1]\n')
    assert _load(tmp_path, text).get("vllm-0.8.5").system_packages == ("libnuma1",)
    text = text.replace("        stack: cu124\n", "        stack: cu124\n        system_packages: [ffmpeg, libnuma1]\n")
    assert _load(tmp_path, text).get("vllm-0.8.5").system_packages == ("libnuma1", "ffmpeg")


def test_cli_reports_malformed_matrix_in_one_line(tmp_path):
    path = tmp_path / "matrix.yaml"
    path.write_text(GOOD.replace("    cuda: \"12.4\"", "    cuda: 12.4"))
    proc = subprocess.run([sys.executable, "-m", "rollout_matrix.cli", "--matrix", str(path), "list"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"rollout-matrix: error: {path}:4: stacks.cu124.cuda must be quoted "
                                   '(YAML reads 12.4 as a number): write "12.4"')


def test_cli_list_json_covers_the_matrix():
    import json

    proc = subprocess.run([sys.executable, "-m", "rollout_matrix.cli", "list", "--json"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == len(load_matrix(ROOT / "matrix.yaml"))
    row = next(r for r in rows if r["name"] == "vllm-0.8.5.post1")
    assert row["content_tag"].startswith("rollout-matrix:vllm-0.8.5.post1-cu124-")
    assert row["torch"] == "2.6.0" and row["cuda"] == "12.4"


def test_a_stand_in_is_expected_from_the_lock_and_the_published_pin_from_an_unlocked_build(tmp_path):
    """A locked image installs the stand-in; ``--no-lock`` (a site index that has the awaited pin)
    installs the release as published, and its image is checked for that pin, not for the stand-in."""
    import json
    import shutil

    from rollout_matrix.images.options import BuildOptions
    from rollout_matrix.images.plan import LABEL_PREFIX, plan_build

    shutil.copytree(Path(__file__).resolve().parents[2] / "docker", tmp_path / "docker")  # the build context
    text = GOOD.replace('        releases:\n          "0.8.5": {}\n',
                        '        awaits: "flashinfer-python==0.2.2"\n        stand_in: "flashinfer-python==0.2.3"\n'
                        '        releases:\n          "0.8.5": {flashinfer-python: "0.2.2"}\n')
    matrix = _load(tmp_path, text)
    entry = matrix.get("vllm-0.8.5")
    assert entry.expected_versions()["flashinfer-python"] == "0.2.3"
    unlocked = plan_build(matrix, entry, BuildOptions(locked=False))
    assert json.loads(unlocked.labels()[f"{LABEL_PREFIX}.expected"])["flashinfer-python"] == "0.2.2"
    assert "flashinfer" not in unlocked.requirements_text  # the published requirement, no override


def test_a_late_pin_is_expected_in_the_lock_and_the_image(tmp_path):
    """A late pin lets its package past the release's date; only its own version may come in."""
    text = GOOD.replace('        releases:\n', '        late_pin: "flashinfer-python==0.2.3"\n        releases:\n')
    entry = _load(tmp_path, text).get("vllm-0.8.5")
    assert entry.expected_versions()["flashinfer-python"] == "0.2.3"
    assert entry.expected_versions(locked=False)["flashinfer-python"] == "0.2.3"


def test_a_late_stand_in_is_the_locks_alone_and_an_unlocked_build_expects_the_awaited_pin(tmp_path):
    """sglang 0.4.5.post3's shape: sgl-kernel 0.1.0 stands in, uploaded after the release. A ``--no-lock``
    build from a site index installs the release as published (0.0.9.post2), and is checked for that."""
    text = GOOD.replace('        releases:\n          "0.8.5": {}\n',
                        '        awaits: "flashinfer-python==0.2.2"\n        stand_in: "flashinfer-python==0.2.3"\n'
                        '        late_pin: "flashinfer-python==0.2.3"\n'
                        '        releases:\n          "0.8.5": {flashinfer-python: "0.2.2"}\n')
    entry = _load(tmp_path, text).get("vllm-0.8.5")
    assert entry.late_pin == entry.stand_in == "flashinfer-python==0.2.3"
    assert entry.expected_versions()["flashinfer-python"] == "0.2.3"
    assert entry.expected_versions(locked=False)["flashinfer-python"] == "0.2.2"
