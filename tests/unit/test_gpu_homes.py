"""An entry's run-time builds carried from one GPU machine to the next (gpu/homes.py): what
``pack-homes`` writes on one machine, ``seed-homes`` puts back on another, byte for byte and with the
files' times (FlashInfer's ninja decides by them, gpu/kernel_cache.py), and nothing else."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from rollout_matrix.errors import UserError
from rollout_matrix.gpu import homes, store

REPO = Path(__file__).resolve().parents[2]
OLD_NS = 1_700_000_000 * 10**9  # a build's time, long before the copy


def machine(monkeypatch: pytest.MonkeyPatch, root: Path) -> Path:
    monkeypatch.setattr(store, "ROOT", root)
    return root / "homes"


def build(home: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = home / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, ns=(OLD_NS, OLD_NS))


def tree(home: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(home)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(home.rglob("*")) if p.is_file()}


def test_a_home_packed_here_is_seeded_there_byte_for_byte_with_its_times(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    first = machine(monkeypatch, tmp_path / "first")
    jit = os.urandom(3 * homes.MIB)  # random: gzip leaves it as large, so it spans pieces of 1 MiB
    build(first / "sglang-0.5.23", {".cache/sglang/jit/sm90a/kv/deps-1/kv.so": jit,
                                    ".triton/cache/ABC/kernel.cubin": b"cubin",
                                    ".cache/torchinductor/fx/graph": b"graph",
                                    ".config/pip/pip.conf": b"not a build"})
    os.chmod(first / "sglang-0.5.23/.cache/sglang/jit/sm90a/kv/deps-1/kv.so", 0o755)
    build(first / "vllm-0.34.0", {".cache/flashinfer/0.7.4/90a/rollout-matrix-lock.json": b"{}"})
    out = tmp_path / "out"
    pieces = homes.pack(out, piece_mib=1)
    sgl = sorted(out.glob("home-sglang-0.5.23.tgz.*"))
    assert len(sgl) >= 3 and all(p.stat().st_size <= homes.MIB for p in sgl)
    assert sorted(pieces) == sorted(out.iterdir())

    second = machine(monkeypatch, tmp_path / "second")
    build(second / "sglang-0.5.23", {".triton/cache/ABC/kernel.cubin": b"stale"})  # replaced
    done = homes.seed([out])
    assert done["sglang-0.5.23"] == {".cache/sglang": 1, ".triton": 1, ".cache/torchinductor": 1}
    assert done["vllm-0.34.0"] == {".cache/flashinfer": 1}
    want = tree(first / "sglang-0.5.23")
    del want[".config/pip/pip.conf"]  # not a build cache: not carried
    assert tree(second / "sglang-0.5.23") == want
    assert os.access(second / "sglang-0.5.23/.cache/sglang/jit/sm90a/kv/deps-1/kv.so", os.X_OK)
    assert tree(second / "vllm-0.34.0") == tree(first / "vllm-0.34.0")


def test_links_and_other_files_are_left_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = machine(monkeypatch, tmp_path / "first")
    build(first / "e", {".triton/cache/a": b"a"})
    (first / "e/.triton/cache/link").symlink_to("/etc/passwd")
    homes.pack(tmp_path / "out")
    with tarfile.open(tmp_path / "out/home-e.tgz.00") as tar:
        assert sorted(tar.getnames()) == [".triton", ".triton/cache", ".triton/cache/a"]


def test_a_home_past_the_calls_limit_is_named_and_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    first = machine(monkeypatch, tmp_path / "first")
    build(first / "a-small", {".triton/x": os.urandom(homes.MIB // 2)})  # random: gzip leaves it as large
    build(first / "b-fits-alone", {".cache/vllm/blob": os.urandom(homes.MIB * 6 // 10)})  # 0.6 alone, 1.1 with a
    build(first / "c-never-fits", {".cache/vllm/blob": os.urandom(2 * homes.MIB)})
    written = homes.pack(tmp_path / "out", call_mib=1)
    assert [p.name for p in written] == ["home-a-small.tgz.00"] and os.listdir(tmp_path / "out") == ["home-a-small.tgz.00"]
    said = capsys.readouterr().out
    assert "b-fits-alone: not packed" in said and "in a call of its own: pack-homes OUT b-fits-alone" in said
    assert "c-never-fits: not packed" in said and "more than one call brings back: nothing of it can come back" in said


def test_no_more_pieces_than_a_call_brings_back_beside_its_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    first = machine(monkeypatch, tmp_path / "first")
    for n in range(homes.CALL_PIECES + 1):
        build(first / f"e{n}", {".triton/x": b"x"})
    written = homes.pack(tmp_path / "out", ["e0", "e0", *(f"e{n}" for n in range(1, homes.CALL_PIECES + 1))])
    assert [p.name for p in written] == [f"home-e{n}.tgz.00" for n in range(homes.CALL_PIECES)]  # e0 once
    assert f"e{homes.CALL_PIECES}: not packed" in capsys.readouterr().out


def test_sub_second_times_come_back_rounded_down_never_later(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tar writes sub-second times as decimal fractions; one that came back nanoseconds later than the
    build's record would make ninja build it again (gpu/kernel_cache.py)."""
    first = machine(monkeypatch, tmp_path / "first")
    build(first / "e", {f".cache/flashinfer/{n}.o": b"o" for n in range(50)})
    for n in range(50):
        os.utime(first / f"e/.cache/flashinfer/{n}.o", ns=(OLD_NS + 123_456_789 * n % 10**9,) * 2)
    homes.pack(tmp_path / "out")
    second = machine(monkeypatch, tmp_path / "second")
    homes.seed([tmp_path / "out"])
    for n in range(50):
        was = (first / f"e/.cache/flashinfer/{n}.o").stat().st_mtime_ns
        assert (second / f"e/.cache/flashinfer/{n}.o").stat().st_mtime_ns == was // 10**9 * 10**9 <= was


def test_whatever_stands_in_the_way_is_replaced_and_nothing_is_written_through_a_link(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = machine(monkeypatch, tmp_path / "first")
    build(first / "e", {".triton/cache/k/a.cubin": b"a", ".triton/cache/k/b.cubin": b"b",
                        ".cache/sglang/jit/x.so": b"x", ".nv/ComputeCache/index": b"i"})
    homes.pack(tmp_path / "out")
    second = machine(monkeypatch, tmp_path / "second")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep")
    home = second / "e"
    (home / ".triton/cache/k").mkdir(parents=True)
    (home / ".triton/cache/k/a.cubin").symlink_to(outside / "victim")  # a link where a file goes
    (home / ".triton/cache/k/b.cubin").mkdir()  # a folder where a file goes
    (home / ".cache").mkdir()
    (home / ".cache/sglang").write_text("a file where a folder goes")
    (home / ".nv").symlink_to(outside)  # a link where a folder goes
    homes.seed([tmp_path / "out"])
    assert tree(home) == tree(first / "e")
    assert not any(p.is_symlink() for p in home.rglob("*"))
    assert sorted(os.listdir(outside)) == ["victim"] and (outside / "victim").read_text() == "keep"
    assert not [p for p in second.iterdir() if p.name.startswith(".seeding")]  # the staging folder is gone


def archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(("bad", "why"), [
    (member("/etc/cron.d/x"), "a path outside the home"),
    (member(".triton/../../escape"), "a path outside the home"),
    (member(".triton/link", tarfile.SYMTYPE, "/etc/passwd"), "not a file or a folder"),
    (member(".bashrc"), "outside the build caches"),
    (member(".triton"), "outside the build caches"),  # a file in place of a whole cache folder
])
def test_an_archive_with_one_refused_member_unpacks_nothing(bad: tarfile.TarInfo, why: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    there = machine(monkeypatch, tmp_path / "there")
    piece = tmp_path / "home-e.tgz.00"
    archive(piece, [(member(".triton/good"), b"good"), (bad, b"bad")])
    with pytest.raises(UserError, match=rf"home-e.tgz \(1 piece\): {re.escape(bad.name)}: {why}.*; nothing of it unpacked"):
        homes.seed([piece])
    assert not (there / "e").exists()


def test_a_missing_piece_or_a_stranger_is_refused_before_anything_is_unpacked(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, tmp_path / "there")
    for name in ("home-e.tgz.00", "home-e.tgz.02"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(UserError, match=r"home-e.tgz: piece .01 missing"):
        homes.seed([tmp_path / "home-e.tgz.00", tmp_path / "home-e.tgz.02"])
    with pytest.raises(UserError, match=r"gone: no such file or folder here; carry the pieces"):
        homes.seed([tmp_path / "gone"])
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(UserError, match=r"notes\.txt: not a piece of a home"):
        homes.seed([tmp_path / "notes.txt"])


def test_a_cut_archive_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    there = machine(monkeypatch, tmp_path / "there")
    whole = tmp_path / "whole.tgz"
    archive(whole, [(member(".triton/a"), os.urandom(100_000))])
    (tmp_path / "home-e.tgz.00").write_bytes(whole.read_bytes()[:50_000])
    with pytest.raises(UserError, match=r"home-e.tgz \(1 piece\): does not read whole"):
        homes.seed([tmp_path / "home-e.tgz.00"])
    assert not (there / "e").exists()


def test_an_archive_damaged_in_its_middle_is_refused_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tarfile's streaming gzip read a stream damaged in its middle as a shorter archive (4 files of
    10 unpacked, exit 0); gzip's CRC over the whole stream says it is damaged."""
    first = machine(monkeypatch, tmp_path / "first")
    build(first / "e", {f".cache/flashinfer/{n}.o": os.urandom(50_000) for n in range(10)})
    homes.pack(tmp_path / "out")
    piece = tmp_path / "out/home-e.tgz.00"
    data = bytearray(piece.read_bytes())
    data[len(data) // 2:len(data) // 2 + 200] = bytes(b ^ 0xFF for b in data[len(data) // 2:len(data) // 2 + 200])
    piece.write_bytes(bytes(data))
    there = machine(monkeypatch, tmp_path / "there")
    with pytest.raises(UserError, match=r"home-e.tgz \(1 piece\): does not read whole"):
        homes.seed([piece])
    assert os.listdir(there) == []


def test_the_commands_say_what_they_did_and_refuse_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "ROLLOUT_MATRIX_GPU_ROOT": str(tmp_path / "first"), "PYTHONPATH": str(REPO / "src")}
    build(tmp_path / "first/homes/sglang-0.5.23", {".cache/sglang/jit/k.so": b"so"})

    def gpuenv(*args: str, root: str = "first") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "rollout_matrix.gpuenv", *args], capture_output=True, text=True,
                              env={**env, "ROLLOUT_MATRIX_GPU_ROOT": str(tmp_path / root)}, check=False)

    packed = gpuenv("pack-homes", str(tmp_path / "out"))
    assert packed.returncode == 0, packed.stderr
    assert "sglang-0.5.23: .cache/sglang 0.0 MiB -> home-sglang-0.5.23.tgz.00" in packed.stdout
    seeded = gpuenv("seed-homes", str(tmp_path / "out"), root="second")
    assert seeded.returncode == 0, seeded.stderr
    assert "sglang-0.5.23: home seeded from home-sglang-0.5.23.tgz (1 piece): .cache/sglang 1 files" in seeded.stdout
    assert (tmp_path / "second/homes/sglang-0.5.23/.cache/sglang/jit/k.so").read_bytes() == b"so"
    refused = gpuenv("pack-homes", str(tmp_path / "out"), "vllm-0.34.0")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("gpuenv: error: no home here for vllm-0.34.0 (homes: sglang-0.5.23)")


def test_what_a_killed_seed_left_is_ignored_by_pack_and_cleared_by_the_next_seed(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    first = machine(monkeypatch, tmp_path / "first")
    build(first / "e", {".triton/a": b"a"})
    build(first / "f", {".triton/b": b"b"})
    build(first / ".seeding-e", {".triton/junk": b"half of an earlier seed"})
    assert [p.name for p in homes.pack(tmp_path / "out")] == ["home-e.tgz.00", "home-f.tgz.00"]
    second = machine(monkeypatch, tmp_path / "second")
    build(second / ".seeding-e", {".triton/junk": b"left by a killed seed"})
    (second / ".seeding-f").write_text("a file in the staging folder's place")
    homes.seed([tmp_path / "out"])
    assert sorted(os.listdir(second)) == ["e", "f"] and tree(second / "e") == tree(first / "e")


def test_a_failed_seed_leaves_no_staging_folder_and_says_so_in_one_line(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    first = machine(monkeypatch, tmp_path / "first")
    build(first / "e", {".triton/a": b"a"})
    homes.pack(tmp_path / "out")
    second = machine(monkeypatch, tmp_path / "second")

    def full_disk(staged: Path, home: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(homes, "_merge", full_disk)
    with pytest.raises(UserError, match=r"home-e.tgz \(1 piece\): cannot unpack it into .*No space left on device"):
        homes.seed([tmp_path / "out"])
    assert os.listdir(second) == ["e"] and not os.listdir(second / "e")


@pytest.mark.parametrize("linked", ["", ".cache"])
def test_a_home_or_its_cache_folder_that_is_a_link_is_not_written_through(linked: str, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    first = machine(monkeypatch, tmp_path / "first")
    build(first / "e", {".cache/vllm/a": b"a"})
    homes.pack(tmp_path / "out")
    second = machine(monkeypatch, tmp_path / "second")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = second / "e" / linked if linked else second / "e"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(elsewhere)
    with pytest.raises(UserError, match=r"is a link; seed-homes writes into the home's own folders only"):
        homes.seed([tmp_path / "out"])
    assert not os.listdir(elsewhere)


def test_a_cache_folder_that_is_a_link_is_not_packed_nor_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    first = machine(monkeypatch, tmp_path / "first")
    build(tmp_path / "kernels", {"k.cubin": b"k"})
    build(first / "e", {".cache/sglang/jit/x.so": b"x"})
    (first / "e/.triton").symlink_to(tmp_path / "kernels")
    homes.pack(tmp_path / "out")
    assert ".triton" not in capsys.readouterr().out
    with tarfile.open(tmp_path / "out/home-e.tgz.00") as tar:
        assert not [n for n in tar.getnames() if n.startswith(".triton")]


def test_a_home_of_more_pieces_than_a_call_brings_back_can_never_come_back(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    first = machine(monkeypatch, tmp_path / "first")
    build(first / "e", {".cache/vllm/blob": os.urandom(3 * homes.MIB)})
    monkeypatch.setattr(homes, "CALL_PIECES", 2)
    assert homes.pack(tmp_path / "out", piece_mib=1) == [] and not os.listdir(tmp_path / "out")
    assert "e: not packed" in (said := capsys.readouterr().out) and "nothing of it can come back" in said


def test_a_home_too_large_to_seed_beside_a_part_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    first = machine(monkeypatch, tmp_path / "first")
    build(first / "e", {".cache/vllm/blob": os.urandom(homes.MIB)})
    monkeypatch.setattr(homes, "SEED_MIB", 0)
    assert len(homes.pack(tmp_path / "out")) == 1
    assert "more than 0 MiB: seed it in a call of its own" in capsys.readouterr().out


def test_a_pack_that_cannot_write_leaves_no_piece_and_says_so_in_one_line(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    first = machine(monkeypatch, tmp_path / "first")
    build(first / "e", {".cache/vllm/blob": os.urandom(3 * homes.MIB)})
    out = tmp_path / "out"
    (out / "home-e.tgz.02").mkdir(parents=True)  # the third piece cannot be opened
    with pytest.raises(UserError, match=r"pack-homes: cannot pack e's home into .*out"):
        homes.pack(out, piece_mib=1)
    assert os.listdir(out) == ["home-e.tgz.02"]  # the two written before it are gone again
