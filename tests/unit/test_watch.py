"""`rollout-matrix watch` as a user runs it (the real CLI in a subprocess), against a fake index on
127.0.0.1 that serves the JSON simple API and real wheels (tests/conftest.py: FakeIndex), so what it
reports, writes and exits with is checked offline. The expected lines are written by hand from the
fake index's releases below, not computed by the code under test. Against the real PyPI:
tests/integration/test_watch.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rollout_matrix.matrix.load import load_matrix

MATRIX = """\
schema: 1
lock_pythons: ["3.11"]
stacks:
  cu130:
    cuda: "13.0"
    base_image: nvidia/cuda:13.0.1-cudnn-devel-ubuntu24.04
    python: "3.12"
engines:
  vllm:
    package: vllm
    requirement: "vllm=={version}"
    left_out:
      "0.31.0": "its wheel was broken (a test reason)"
    bands:
      - torch: "2.13.0"
        stack: cu130
        releases:
          "0.29.0": {flashinfer-python: "0.6.18"}
          # a comment that belongs to 0.30.0
          "0.30.0": {flashinfer-python: "0.6.18.post1"}
      - torch: "2.14.0"
        stack: cu130
        releases:
          "0.33.0": {flashinfer-python: "0.7.2.post1"}
      - torch: "2.14.0"
        stack: cu130
        unavailable: "a pin left the index (a test reason)"
        releases:
          "0.33.1": {flashinfer-python: "0.7.2.post2"}
      - torch: "2.14.0"
        stack: cu130
        # 0.33.2 pins flashinfer-python==0.7.3, which the index
        # does not have yet (a test reason)
        unavailable: "flashinfer-python==0.7.3 is not on the index"
        awaits: "flashinfer-python==0.7.3"
        releases:
          "0.33.2": {flashinfer-python: "0.7.3"}
"""

VLLM = {  # version -> Requires-Dist of its wheel
    "0.28.0": ["torch==2.13.0"],  # older than the matrix's oldest: ignored
    "0.29.0": ["torch==2.13.0", "flashinfer-python==0.6.18"],
    "0.30.0": ["torch==2.13.0", "flashinfer-python==0.6.18.post1"],
    "0.31.0": ["torch==2.13.0", "flashinfer-python==0.7.0.post1"],  # left out on purpose
    "0.32.0": ["torch==2.13.0", "flashinfer-python==0.7.0.post1", "quack-kernels==0.6.5", "numpy>=2",
               "b12x==1.5.1; extra == 'b12x'"],
    "0.33.0": ["torch==2.14.0", "flashinfer-python==0.7.2.post1"],
    "0.33.1": ["torch==2.14.0", "flashinfer-python==0.7.2.post2"],  # listed, in an unavailable band
    "0.34.0": ["torch==2.14.0", "flashinfer-python==0.7.3", "humming-kernels[cu13]==0.1.19"],
    "0.34.0rc1": ["torch==2.14.0"],  # an old pre-release: not even mentioned
    "0.36.0": ["torch==2.15.0", "flashinfer-python==0.8.0"],  # a torch no band has
    "0.37.0rc2": ["torch==2.15.0"],  # newer than every final: reported on stderr, never added
    "0.37.0.dev3": ["torch==2.15.0"],
}
YANKED = {"0.35.0": ["torch==2.14.0"]}  # every file yanked: not a release to add

# by hand: the finals newer than 0.29.0 that matrix.yaml neither lists nor leaves out
EXPECTED_LINES = [
    "vllm 0.32.0 torch 2.13.0 band vllm-0.25",
    "vllm 0.34.0 torch 2.14.0 band vllm-0.25",
    "vllm 0.36.0 torch 2.15.0 band none",
]


LATE_PIN_LINES = ["        # flashinfer-python==0.7.3 reached the index after the release (`watch --write`): the lock lets",
                  "        # its files past the release's date limit.",
                  '        late_pin: "flashinfer-python==0.7.3"']


DEAD = "http://127.0.0.1:9"
PYPI_CUT_OFF = {"https_proxy": DEAD, "HTTPS_PROXY": DEAD, "http_proxy": DEAD, "HTTP_PROXY": DEAD}
"""PyPI unreachable: `--write` attempts the locks, and they fail offline (exit 2)."""


@pytest.fixture
def index(fake_index):
    for version, requires in VLLM.items():
        fake_index.add("vllm", version, requires)
    for version, requires in YANKED.items():
        fake_index.add("vllm", version, requires, yanked=True)
    return fake_index


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    (tmp_path / "matrix.yaml").write_text(MATRIX)
    (tmp_path / "docker" / "locks").mkdir(parents=True)
    return tmp_path


def watch(checkout: Path, index_url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "rollout_matrix.cli", "--matrix", str(checkout / "matrix.yaml"),
                           "watch", "--index-url", index_url, *args],
                          cwd=checkout, env=environ, capture_output=True, text=True, check=False, timeout=120)


def list_edited_matrix(path: Path, old: str, new: str) -> subprocess.CompletedProcess:
    """`rollout-matrix list` on ``MATRIX`` with ``old`` replaced by ``new``, written to ``path``: where a
    matrix.yaml error is reported."""
    assert old in MATRIX
    path.write_text(MATRIX.replace(old, new))
    return subprocess.run([sys.executable, "-m", "rollout_matrix.cli", "--matrix", str(path), "list"],
                          capture_output=True, text=True, check=False, timeout=60)


def test_reports_each_missing_final_release_once_and_the_rest_on_stderr(index, checkout) -> None:
    before = (checkout / "matrix.yaml").read_text()
    proc = watch(checkout, index.url, "--json", "found.json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == EXPECTED_LINES
    err = proc.stderr
    assert "watch: vllm: 7 final releases newer than 0.29.0 on the index; 3 missing from matrix.yaml" in err
    assert "1 left out on purpose (0.31.0)" in err and "1 yanked (0.35.0)" in err
    assert "pre-releases not added: 0.37.0.dev3, 0.37.0rc2" in err
    assert "0.34.0rc1" not in err and "0.28.0" not in err + proc.stdout
    assert (checkout / "matrix.yaml").read_text() == before  # without --write nothing is written
    found = json.loads((checkout / "found.json").read_text())
    assert [m["entry"] for m in found["missing"]] == ["vllm-0.32.0", "vllm-0.34.0", "vllm-0.36.0"]
    by_entry = {m["entry"]: m for m in found["missing"]}
    # new-release's own reading of the wheel: exact pins of tracked or kernel packages, not numpy or extras
    assert by_entry["vllm-0.32.0"]["pins"] == {"flashinfer-python": "0.7.0.post1", "quack-kernels": "0.6.5"}
    assert by_entry["vllm-0.34.0"]["matrix_band"] == {"torch": "2.14.0", "stack": "cu130"}
    assert by_entry["vllm-0.36.0"]["matrix_band"] is None and by_entry["vllm-0.36.0"]["shim"] is None


def test_prints_nothing_when_nothing_is_missing(fake_index, checkout) -> None:
    for version in ("0.29.0", "0.30.0", "0.33.0", "0.33.1", "0.34.0rc1"):
        fake_index.add("vllm", version, VLLM[version])
    proc = watch(checkout, fake_index.url)
    assert (proc.returncode, proc.stdout) == (0, "")
    assert "0 missing from matrix.yaml" in proc.stderr


@pytest.mark.parametrize("broken", ["closed port", "HTTP 503"])
def test_an_unreachable_index_is_exit_6_in_one_line(fake_index, checkout, broken) -> None:
    if broken == "closed port":
        url = fake_index.url
        fake_index.close()
    else:
        fake_index.fail_with = 503
        url = fake_index.url
    proc = watch(checkout, url)
    assert proc.returncode == 6, proc.stderr
    assert proc.stdout == ""
    checkout_line, line = proc.stderr.splitlines()  # the checkout it read, then the one fault line
    assert checkout_line == f"rollout-matrix: checkout {checkout} (matrix.yaml)"
    assert line.startswith("rollout-matrix: error: ") and "Traceback" not in proc.stderr
    assert ("retry later" if broken == "HTTP 503" else "check the network") in line


@pytest.mark.parametrize(("where", "message"), [
    ("a-folder", "is a directory; pass a file path"),
    ("no-such-folder/found.json", "its folder no-such-folder does not exist"),
])
def test_a_json_path_no_file_can_go_to_is_one_line_before_the_index_is_asked(checkout, where: str,
                                                                             message: str) -> None:
    """`watch --json DIR` read the whole index, then ended in an IsADirectoryError traceback. The index
    here does not answer: asked, it would make the exit 6."""
    (checkout / "a-folder").mkdir()
    proc = watch(checkout, "http://127.0.0.1:9/simple", "--json", where)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[1] == f"rollout-matrix: error: --json {where}: {message}" + (
        ", e.g. a-folder/watch.json" if where == "a-folder" else "; create it or pass another path")


def test_write_adds_lines_in_version_order_and_reports_what_it_could_not_do(index, checkout) -> None:
    # PyPI is made unreachable (a proxy on a closed port) so that locking fails offline, as it would
    # for a release whose pins PyPI lacks; the fake index stays reachable (no_proxy).
    proc = watch(checkout, index.url, "--write", "--json", "w.json",
                 env=PYPI_CUT_OFF)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.splitlines() == EXPECTED_LINES
    text = (checkout / "matrix.yaml").read_text().splitlines()
    i30 = text.index('          "0.30.0": {flashinfer-python: "0.6.18.post1"}')
    assert text[i30 + 1] == '          "0.32.0": {flashinfer-python: "0.7.0.post1", quack-kernels: "0.6.5"}'
    assert text[i30 - 1] == "          # a comment that belongs to 0.30.0"
    i33 = text.index('          "0.33.0": {flashinfer-python: "0.7.2.post1"}')
    assert text[i33 + 1] == ('          "0.34.0": {flashinfer-python: "0.7.3", humming-kernels: "0.1.19"}')
    assert text[i33 + 2] == "      - torch: \"2.14.0\""  # not into the unavailable band
    assert "0.36.0" not in "\n".join(text)
    matrix = load_matrix(checkout / "matrix.yaml")
    assert matrix.get("vllm-0.32.0").torch == "2.13.0" and matrix.get("vllm-0.34.0").torch == "2.14.0"
    result = json.loads((checkout / "w.json").read_text())
    assert result["written"] == ["vllm-0.32.0", "vllm-0.34.0"]
    (not_written,) = result["not_written"]
    assert not_written["entry"] == "vllm-0.36.0" and "torch 2.15.0" in not_written["why"]
    assert sorted((r["entry"], r["python"], r["ok"]) for r in result["locks"]) == [
        ("vllm-0.32.0", "3.11", False), ("vllm-0.32.0", "3.12", False),
        ("vllm-0.34.0", "3.11", False), ("vllm-0.34.0", "3.12", False)]
    assert not list((checkout / "docker" / "locks").iterdir())
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("rollout-matrix: error: vllm-0.36.0 not added; lock of vllm-0.32.0")
    # a second run finds the written ones listed and reports only what is still missing
    again = watch(checkout, index.url)
    assert (again.returncode, again.stdout.splitlines()) == (0, ["vllm 0.36.0 torch 2.15.0 band none"])


def test_left_out_must_not_also_be_listed(tmp_path: Path) -> None:
    path = tmp_path / "matrix.yaml"
    proc = list_edited_matrix(path, '"0.31.0": "its wheel', '"0.30.0": "its wheel')
    assert proc.returncode == 2
    assert f"{path}:13: vllm 0.30.0 is left out here but listed at line 20; remove one of the two" in proc.stderr


@pytest.mark.parametrize(("left_out", "message"), [
    ('"v0.31.0": "why"', "engines.vllm.left_out key 'v0.31.0' is not in normal form; write '0.31.0'"),
    ('"0.31.0": ""', "engines.vllm.left_out 0.31.0: say why it is left out"),
    ('"0.31.0": 3', "engines.vllm.left_out 0.31.0 must be quoted"),
])
def test_left_out_needs_a_version_and_a_reason(tmp_path: Path, left_out: str, message: str) -> None:
    proc = list_edited_matrix(tmp_path / "matrix.yaml", '"0.31.0": "its wheel was broken (a test reason)"', left_out)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_an_awaited_pin_not_on_the_index_is_said_on_stderr_only(index, checkout) -> None:
    index.add("flashinfer-python", "0.7.2.post2")
    index.add("flashinfer-python", "0.7.3", yanked=True)  # a yanked file is not an arrival
    proc = watch(checkout, index.url, "--json", "found.json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == EXPECTED_LINES
    assert "vllm-0.33.2 awaits flashinfer-python==0.7.3: not on the index yet" in proc.stderr
    (engine,) = json.loads((checkout / "found.json").read_text())["engines"]
    assert engine["awaited"] == [{"entry": "vllm-0.33.2", "awaits": "flashinfer-python==0.7.3", "arrived": False,
                                  "stand_in": None, "stub": False}]


def test_an_awaited_pin_the_index_has_only_as_a_wheel_stub_has_not_arrived(index, checkout) -> None:
    # cuda-tile 1.6.0rc5 on PyPI: one sdist whose build backend fetches the wheel from pypi.nvidia.com
    index.add_sdist("flashinfer-python", "0.7.3", "wheel_stub.buildapi")
    before = (checkout / "matrix.yaml").read_text()
    proc = watch(checkout, index.url, "--write", "--engine", "vllm", "--json", "w.json", env=PYPI_CUT_OFF)
    assert ("vllm-0.33.2 awaits flashinfer-python==0.7.3: on the index only as a wheel stub, which fetches it "
            "from another index") in proc.stderr, proc.stderr
    assert "is on the index: its band" not in proc.stderr
    result = json.loads((checkout / "w.json").read_text())
    assert result["engines"][0]["awaited"] == [{"entry": "vllm-0.33.2", "awaits": "flashinfer-python==0.7.3",
                                                "arrived": False, "stand_in": None, "stub": True}]
    assert "vllm-0.33.2" not in result["written"]
    after = (checkout / "matrix.yaml").read_text()
    assert 'awaits: "flashinfer-python==0.7.3"' in after and "late_pin" not in after  # the band still waits
    assert [line for line in before.splitlines() if line not in after.splitlines()] == []  # nothing of it removed


@pytest.mark.parametrize(("files", "arrived"), [
    ([("sdist", "wheel_stub.buildapi"), ("wheel", None)], True),  # the real wheel joined the stub
    ([("sdist", "setuptools.build_meta")], True),  # an sdist that builds here
    ([("sdist", "wheel_stub.buildapi"), ("wheel yanked", None)], False),  # a yanked wheel does not count
])
def test_an_awaited_pin_arrives_with_a_file_that_installs_from_the_index(index, checkout, files, arrived) -> None:
    for kind, backend in files:
        if kind.startswith("wheel"):
            index.add("flashinfer-python", "0.7.3", yanked=kind.endswith("yanked"))
        else:
            index.add_sdist("flashinfer-python", "0.7.3", backend)
    proc = watch(checkout, index.url, "--json", "w.json")
    assert proc.returncode == 0, proc.stderr
    (awaited,) = json.loads((checkout / "w.json").read_text())["engines"][0]["awaited"]
    assert (awaited["arrived"], awaited["stub"]) == (arrived, not arrived)


@pytest.mark.parametrize("layout", ["tar-dot", "zip"])
def test_a_wheel_stub_is_recognised_in_other_sdist_layouts(index, checkout, layout) -> None:
    index.add_sdist("flashinfer-python", "0.7.3", "wheel_stub.buildapi", layout=layout)
    proc = watch(checkout, index.url)
    assert proc.returncode == 0, proc.stderr
    assert "flashinfer-python==0.7.3: on the index only as a wheel stub" in proc.stderr


@pytest.mark.parametrize("fault", ["cut off", "gone"])
def test_an_sdist_that_cannot_be_read_whole_is_exit_6_not_an_arrival(index, checkout, fault) -> None:
    filename = index.add_sdist("flashinfer-python", "0.7.3", "wheel_stub.buildapi")
    if fault == "cut off":  # the index lists the whole file's sha256; half of it comes back
        index.files[filename] = index.files[filename][: len(index.files[filename]) // 2]
    else:  # listed, but the file answers 404
        del index.files[filename]
    before = (checkout / "matrix.yaml").read_text()
    proc = watch(checkout, index.url, "--write", env=PYPI_CUT_OFF)
    assert (proc.returncode, proc.stdout) == (6, ""), proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("rollout-matrix: error: ") and filename in last and "retry" in last, last
    assert "Traceback" not in proc.stderr
    assert (checkout / "matrix.yaml").read_text() == before


def test_an_awaited_project_the_index_does_not_have_at_all_is_not_an_error(index, checkout) -> None:
    proc = watch(checkout, index.url)
    assert proc.returncode == 0, proc.stderr
    assert "vllm-0.33.2 awaits flashinfer-python==0.7.3: not on the index yet" in proc.stderr


def test_write_makes_the_band_installable_on_the_day_its_pin_arrives(index, checkout) -> None:
    index.add("flashinfer-python", "0.7.3")
    before = (checkout / "matrix.yaml").read_text()
    proc = watch(checkout, index.url, "--write", "--engine", "vllm", "--json", "w.json",
                 env=PYPI_CUT_OFF)
    assert proc.returncode == 2, proc.stderr  # its lock failed (offline), and says so
    assert "vllm-0.33.2 awaits flashinfer-python==0.7.3: on the index now" in proc.stderr
    assert "vllm-0.33.2: flashinfer-python==0.7.3 is on the index: its band in matrix.yaml is installable now" in proc.stderr
    after = (checkout / "matrix.yaml").read_text()
    removed = [line for line in before.splitlines() if line not in after.splitlines()]
    assert removed == ["        # 0.33.2 pins flashinfer-python==0.7.3, which the index",
                       "        # does not have yet (a test reason)",
                       '        unavailable: "flashinfer-python==0.7.3 is not on the index"',
                       '        awaits: "flashinfer-python==0.7.3"']
    assert "\n".join(LATE_PIN_LINES) + "\n" in after
    matrix = load_matrix(checkout / "matrix.yaml")
    assert matrix.get("vllm-0.33.2").unavailable is None and matrix.get("vllm-0.33.2").awaits is None
    assert matrix.get("vllm-0.33.2").late_pin == "flashinfer-python==0.7.3"  # its lock may take the late files
    assert matrix.get("vllm-0.33.1").unavailable  # the other unavailable band waits for nothing: untouched
    result = json.loads((checkout / "w.json").read_text())
    assert result["written"][0] == "vllm-0.33.2"
    assert ("vllm-0.33.2", "3.12") in {(r["entry"], r["python"]) for r in result["locks"]}
    again = watch(checkout, index.url)  # listed and installable now: nothing awaited any more
    assert "awaits" not in again.stderr


@pytest.mark.parametrize(("awaits", "message"), [
    ('"flashinfer-python>=0.7.3"', "must be one exact pin"),
    ('"flashinfer-python"', "must be one exact pin"),
    ('"flashinfer-python[cu13]==0.7.3"', "must be one exact pin"),
])
def test_awaits_is_one_exact_pin(tmp_path: Path, awaits: str, message: str) -> None:
    proc = list_edited_matrix(tmp_path / "matrix.yaml", 'awaits: "flashinfer-python==0.7.3"', f"awaits: {awaits}")
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_awaits_needs_unavailable_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "matrix.yaml"
    proc = list_edited_matrix(path, '        unavailable: "flashinfer-python==0.7.3 is not on the index"\n', "")
    assert proc.returncode == 2, proc.stderr
    assert f"{path}:34: engines.vllm.bands[3].awaits needs `unavailable` or `stand_in` beside it" in proc.stderr  # 35 - 1


# the awaited band of MATRIX, locked meanwhile with another version of the pin it waits for
UNAVAILABLE_LINE = '        unavailable: "flashinfer-python==0.7.3 is not on the index"\n'
STAND_IN_LINE = '        stand_in: "flashinfer-python==0.7.4"\n'


@pytest.fixture
def stand_in_checkout(checkout: Path) -> Path:
    (checkout / "matrix.yaml").write_text(MATRIX.replace(UNAVAILABLE_LINE, STAND_IN_LINE))
    return checkout


def test_a_stand_in_band_is_installable_and_still_awaits_its_pin(index, stand_in_checkout) -> None:
    index.add("flashinfer-python", "0.7.4")
    listed = subprocess.run([sys.executable, "-m", "rollout_matrix.cli", "--matrix", str(stand_in_checkout / "matrix.yaml"),
                             "list", "--json"], capture_output=True, text=True, check=True, timeout=60)
    entry = next(e for e in json.loads(listed.stdout) if e["name"] == "vllm-0.33.2")
    assert (entry["unavailable"], entry["awaits"], entry["stand_in"]) == \
        (None, "flashinfer-python==0.7.3", "flashinfer-python==0.7.4")
    proc = watch(stand_in_checkout, index.url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == EXPECTED_LINES
    assert ("vllm-0.33.2 awaits flashinfer-python==0.7.3 (flashinfer-python==0.7.4 stands in): not on the index yet"
            in proc.stderr)


def test_write_drops_the_stand_in_on_the_day_its_pin_arrives(index, stand_in_checkout) -> None:
    index.add("flashinfer-python", "0.7.3")
    before = (stand_in_checkout / "matrix.yaml").read_text()
    proc = watch(stand_in_checkout, index.url, "--write", "--engine", "vllm",
                 env=PYPI_CUT_OFF)
    assert proc.returncode == 2, proc.stderr  # its lock failed (offline), and says so
    assert ("vllm-0.33.2: flashinfer-python==0.7.3 is on the index: its band in matrix.yaml is locked with it again, "
            "its stand-in dropped (vllm-0.33.2)") in proc.stderr
    after = (stand_in_checkout / "matrix.yaml").read_text()
    removed = [line for line in before.splitlines() if line not in after.splitlines()]
    assert removed == ["        # 0.33.2 pins flashinfer-python==0.7.3, which the index",
                       "        # does not have yet (a test reason)",
                       '        stand_in: "flashinfer-python==0.7.4"',
                       '        awaits: "flashinfer-python==0.7.3"']
    assert "\n".join(LATE_PIN_LINES) + "\n" in after
    entry = load_matrix(stand_in_checkout / "matrix.yaml").get("vllm-0.33.2")
    assert (entry.stand_in, entry.awaits, entry.expected_versions()["flashinfer-python"]) == (None, None, "0.7.3")
    assert entry.late_pin == "flashinfer-python==0.7.3" and entry.overrides() == []
    newer = load_matrix(stand_in_checkout / "matrix.yaml").get("vllm-0.34.0")  # added by the same --write
    assert newer.late_pin is None and newer.line < entry.line  # into 0.33.0's band, not the late pin's


LATE_STAND_IN_LINES = STAND_IN_LINE + '        late_pin: "flashinfer-python==0.7.4"\n'
"""A stand-in that reached the index after the release (sglang 0.4.5.post3's sgl-kernel 0.1.0)."""


def test_a_late_stand_in_lets_its_files_past_the_date_of_its_band_only(index, checkout) -> None:
    from rollout_matrix.locks.locking import exclude_newer_source, inputs_hash

    (checkout / "matrix.yaml").write_text(MATRIX.replace(UNAVAILABLE_LINE, STAND_IN_LINE))
    on_time = load_matrix(checkout / "matrix.yaml")
    (checkout / "matrix.yaml").write_text(MATRIX.replace(UNAVAILABLE_LINE, LATE_STAND_IN_LINES))
    late = load_matrix(checkout / "matrix.yaml")
    entry = late.get("vllm-0.33.2")
    assert (entry.awaits, entry.stand_in, entry.late_pin) == ("flashinfer-python==0.7.3", "flashinfer-python==0.7.4",
                                                              "flashinfer-python==0.7.4")
    assert entry.overrides() == ["flashinfer-python==0.7.4"] and entry.expected_versions()["flashinfer-python"] == "0.7.4"
    assert exclude_newer_source(entry).endswith(
        "; flashinfer-python: last upload of flashinfer-python==0.7.4 (it came after the release)")
    assert inputs_hash(entry) != inputs_hash(on_time.get("vllm-0.33.2"))  # its lock is another lock
    for other in on_time:  # every other entry's lock stays what it was
        if other.name != "vllm-0.33.2" and not other.unavailable:
            assert inputs_hash(other) == inputs_hash(late.get(other.name)), other.name
    proc = watch(checkout, index.url)
    assert proc.returncode == 0, proc.stderr
    assert "vllm-0.33.2 awaits flashinfer-python==0.7.3 (flashinfer-python==0.7.4 stands in)" in proc.stderr


def test_write_drops_a_late_stand_in_with_its_late_pin_on_the_day_the_awaited_pin_arrives(index, checkout) -> None:
    (checkout / "matrix.yaml").write_text(MATRIX.replace(UNAVAILABLE_LINE, LATE_STAND_IN_LINES))
    index.add("flashinfer-python", "0.7.3")
    proc = watch(checkout, index.url, "--write", "--engine", "vllm", env=PYPI_CUT_OFF)
    assert proc.returncode == 2, proc.stderr  # its lock failed (offline), and says so
    after = (checkout / "matrix.yaml").read_text()
    assert "\n".join(LATE_PIN_LINES) + "\n" in after and "0.7.4" not in after
    entry = load_matrix(checkout / "matrix.yaml").get("vllm-0.33.2")
    assert (entry.stand_in, entry.awaits, entry.late_pin) == (None, None, "flashinfer-python==0.7.3")


@pytest.mark.parametrize(("old", "new", "message"), [
    (UNAVAILABLE_LINE + '        awaits: "flashinfer-python==0.7.3"\n', STAND_IN_LINE,
     "engines.vllm.bands[3].stand_in needs `awaits` beside it"),
    (UNAVAILABLE_LINE, UNAVAILABLE_LINE + STAND_IN_LINE, "has both `unavailable` and `stand_in`"),
    (UNAVAILABLE_LINE, '        stand_in: "flashinfer-cubin==0.7.4"\n', "must be another version of the awaited package"),
    (UNAVAILABLE_LINE, '        stand_in: "flashinfer-python==0.7.3"\n', "must be another version of the awaited package"),
    (UNAVAILABLE_LINE, '        stand_in: "flashinfer-python>=0.7.4"\n', "must be one exact pin"),
    (UNAVAILABLE_LINE, STAND_IN_LINE + '        late_pin: "flashinfer-python==0.7.5"\n',
     "has both `late_pin` and `stand_in`, for different pins"),
])
def test_stand_in_is_another_exact_version_of_the_awaited_pin(tmp_path: Path, old: str, new: str, message: str) -> None:
    proc = list_edited_matrix(tmp_path / "matrix.yaml", old, new)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


@pytest.mark.parametrize("beside", [UNAVAILABLE_LINE, STAND_IN_LINE])
def test_a_late_pin_is_an_arrived_pin_and_stands_alone(tmp_path: Path, beside: str) -> None:
    arrived = '        late_pin: "flashinfer-python==0.7.3"\n'
    proc = list_edited_matrix(tmp_path / "matrix.yaml", UNAVAILABLE_LINE + '        awaits: "flashinfer-python==0.7.3"\n',
                              beside + arrived)
    assert proc.returncode == 2 and "has both `late_pin` and" in proc.stderr, proc.stderr
    proc = list_edited_matrix(tmp_path / "matrix.yaml", UNAVAILABLE_LINE + '        awaits: "flashinfer-python==0.7.3"\n',
                              arrived)
    assert proc.returncode == 0, proc.stderr


def test_write_drops_a_stand_in_written_after_awaits_too(index, checkout) -> None:
    """matrix.yaml's own vllm-0.34.0 band has `stand_in` below `awaits`: the comment that replaces the
    awaits line must not be taken for one that belongs to the stand-in (the first version dropped both)."""
    awaits = '        awaits: "flashinfer-python==0.7.3"\n'
    (checkout / "matrix.yaml").write_text(MATRIX.replace(UNAVAILABLE_LINE + awaits, awaits + STAND_IN_LINE))
    index.add("flashinfer-python", "0.7.3")
    proc = watch(checkout, index.url, "--write", "--engine", "vllm",
                 env=PYPI_CUT_OFF)
    assert proc.returncode == 2, proc.stderr  # its lock failed (offline), and says so
    after = (checkout / "matrix.yaml").read_text()
    assert "\n".join(LATE_PIN_LINES) + "\n" in after and "stand_in" not in after and "(a test reason)\n" not in after
    assert load_matrix(checkout / "matrix.yaml").get("vllm-0.33.2").late_pin == "flashinfer-python==0.7.3"


def test_write_frees_a_band_of_two_releases_once_and_reports_both_written(index, checkout) -> None:
    index.add("vllm", "0.33.3", ["torch==2.14.0", "flashinfer-python==0.7.3"])
    index.add("flashinfer-python", "0.7.3")
    two = '          "0.33.2": {flashinfer-python: "0.7.3"}\n'
    (checkout / "matrix.yaml").write_text(MATRIX.replace(two, two + '          "0.33.3": {flashinfer-python: "0.7.3"}\n'))
    proc = watch(checkout, index.url, "--write", "--engine", "vllm", "--json", "w.json", env=PYPI_CUT_OFF)
    assert proc.returncode == 2, proc.stderr  # the locks fail offline
    assert "still unavailable" not in proc.stderr
    result = json.loads((checkout / "w.json").read_text())
    assert result["written"][:2] == ["vllm-0.33.2", "vllm-0.33.3"]
    assert not [name for name, _ in result["not_written"] if name.startswith("vllm-0.33.")]
    matrix = load_matrix(checkout / "matrix.yaml")
    assert {matrix.get(n).late_pin for n in ("vllm-0.33.2", "vllm-0.33.3")} == {"flashinfer-python==0.7.3"}


def test_the_summary_names_the_releases_awaiting_one_pin_in_one_state_in_one_part() -> None:
    from rollout_matrix.locks.watch import Awaited, EngineWatch

    stub = [Awaited(f"sglang-0.5.{n}", "cuda-tile==1.6.0rc5", arrived=False, stand_in="cuda-tile==1.6.0rc7", stub=True)
            for n in (18, 19)]
    other = Awaited("sglang-0.5.30", "x==1", arrived=True)
    summary = EngineWatch("sglang", "sglang", "0.4.4", ("0.5.18",), (), (), (), (), (*stub, other)).summary()
    assert summary == ("watch: sglang: 1 final releases newer than 0.4.4 on the index; 0 missing from matrix.yaml; "
                       "sglang-0.5.18, sglang-0.5.19 await cuda-tile==1.6.0rc5 (cuda-tile==1.6.0rc7 stands in): "
                       "on the index only as a wheel stub, which fetches it from another index; "
                       "sglang-0.5.30 awaits x==1: on the index now (--write makes it installable and locks it)")


def test_write_frees_each_band_that_awaits_the_arrived_pin(index, checkout) -> None:
    # sglang 0.5.18 - 0.5.22: two bands (torch 2.13.0, 2.14.1) await the same cuda-tile pin, alike
    second_band = ('      - torch: "2.14.0"\n        stack: cu130\n        # 0.33.3 also pins it (a test reason)\n'
                   f'{UNAVAILABLE_LINE}        awaits: "flashinfer-python==0.7.3"\n'
                   '        releases:\n          "0.33.3": {flashinfer-python: "0.7.3"}\n')
    (checkout / "matrix.yaml").write_text(MATRIX + second_band)
    index.add("flashinfer-python", "0.7.3")
    proc = watch(checkout, index.url, "--write", "--engine", "vllm", "--json", "w.json", env=PYPI_CUT_OFF)
    assert proc.returncode == 2, proc.stderr  # the locks fail offline
    assert "vllm-0.33.2: flashinfer-python==0.7.3 is on the index: its band in matrix.yaml is installable now" \
        in proc.stderr
    assert ("vllm-0.33.3: flashinfer-python==0.7.3 is on the index: its band in matrix.yaml is installable now "
            "(vllm-0.33.3)") in proc.stderr
    matrix = load_matrix(checkout / "matrix.yaml")
    for name in ("vllm-0.33.2", "vllm-0.33.3"):
        e = matrix.get(name)
        assert (e.unavailable, e.awaits, e.stand_in, e.late_pin) == (None, None, None, "flashinfer-python==0.7.3")
    text = (checkout / "matrix.yaml").read_text()
    assert "a test reason)\n" not in text.split('"0.33.2"')[1]  # the second band's comment went with its stand-in
    assert json.loads((checkout / "w.json").read_text())["written"][:2] == ["vllm-0.33.2", "vllm-0.33.3"]
