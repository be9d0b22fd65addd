"""System libraries in bundles: the pinned set's parser, the closure over a Packages index, the manifest's
``debs`` records, reading real ``.deb`` files (built here with dpkg-deb) with and without dpkg-deb, and
the GPU side's library path (only names the host lacks, only for packages the machine lacks)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from rollout_matrix.bundles import debian, syslibset
from rollout_matrix.bundles.manifest import DebRecord, EntryRecord, Manifest, ManifestError
from rollout_matrix.errors import UserError
from rollout_matrix.gpu import debfile, syslibs

CHECKOUT = Path(__file__).resolve().parents[2]
SHA = "ab" * 32


def test_the_committed_ffmpeg_set_names_what_torchcodec_links() -> None:
    pinned = syslibset.read_set(CHECKOUT, "ffmpeg")
    names = {d.name for d in pinned.debs}
    # libtorchcodec_core5.so (FFmpeg 5, bookworm's) links these sonames' packages (readelf -d, torchcodec 0.14.0)
    assert {"libavutil57", "libavcodec59", "libavformat59", "libavdevice59", "libavfilter8", "libswscale6",
            "libswresample4"} <= names
    assert len(names) == len(pinned.debs)
    assert not names & syslibset.host_packages(CHECKOUT)
    assert all(d.filename.endswith(f"/{d.basename}") and d.basename.endswith(("_amd64.deb", "_all.deb"))
               for d in pinned.debs)


@pytest.mark.parametrize(("line", "says"), [
    ("libfoo 1.0 " + SHA + " 12", "not `name version sha256 size filename`"),
    ("LibFoo 1.0 " + SHA + " 12 pool/main/f/foo/foo_1.0_amd64.deb", "not a Debian package name"),
    ("libfoo 1.0 " + "ab" * 31 + " 12 pool/main/f/foo/foo_1.0_amd64.deb", "64 hex digits"),
    ("libfoo 1.0 " + SHA + " 12 pool/../../etc/passwd.deb", "not a pool/... .deb path"),
    ("libfoo 1.0 " + SHA + " 12 /etc/foo.deb", "not a pool/... .deb path"),
])
def test_a_damaged_set_line_is_one_line_naming_file_line_and_fix(line: str, says: str) -> None:
    text = "# roots: libfoo\nlibbar 1~2 " + SHA + " 3 pool/main/b/bar/libbar_1~2_amd64.deb\n" + line + "\n"
    with pytest.raises(UserError, match=rf"^x\.txt:3: .*{says}.*rollout-matrix syslibs foo`$"):
        syslibset.parse_set(text, "x.txt", "foo")


def test_a_set_whose_roots_it_lacks_is_refused_and_a_missing_set_says_how_to_make_one(tmp_path: Path) -> None:
    body = "libbar 1 " + SHA + " 3 pool/main/b/bar/libbar_1_amd64.deb\n"
    with pytest.raises(UserError, match="roots are not among them"):
        syslibset.parse_set("# roots: libfoo\n" + body, "x.txt", "foo")
    with pytest.raises(UserError, match=r"'ffmpeg' has no pinned set .*rollout-matrix syslibs ffmpeg --roots.*--no-syslibs"):
        syslibset.read_set(tmp_path, "ffmpeg")


def test_render_and_parse_round_trip() -> None:
    debs = [debian.Deb("libbar", "7:1.2-0+deb12u1", SHA, 3, "pool/main/b/bar/libbar_1.2-0+deb12u1_amd64.deb")]
    pinned = syslibset.SyslibSet("bar", ["libbar"], debs)
    back = syslibset.parse_set(syslibset.render(pinned, "cd" * 32), "x", "bar")
    assert (back.roots, back.debs, back.header["packages-sha256"]) == (["libbar"], debs, "cd" * 32)


PACKAGES = """\
Package: libroot1
Version: 1.0
Pre-Depends: libc6 (>= 2.36)
Depends: libleaf2 (>= 2), libvirt-user | libnotthere, debconf (>= 0.5) | debconf-2.0, libalt-a | libalt-b
Filename: pool/main/r/root/libroot1_1.0_amd64.deb
Size: 10
SHA256: {sha}

Package: libleaf2
Version: 2.1
Depends: libc6, libshared3:any
Filename: pool/main/l/leaf/libleaf2_2.1_amd64.deb
Size: 20
SHA256: {sha}

Package: libshared3
Version: 3
Filename: pool/main/s/shared/libshared3_3_amd64.deb
Size: 30
SHA256: {sha}

Package: libprovider
Version: 4
Provides: libvirt-user (= 4)
Filename: pool/main/p/provider/libprovider_4_amd64.deb
Size: 40
SHA256: {sha}

Package: libalt-b
Version: 5
Filename: pool/main/a/alt/libalt-b_5_amd64.deb
Size: 50
SHA256: {sha}

Package: libunrelated
Version: 6
Filename: pool/main/u/unrelated/libunrelated_6_amd64.deb
Size: 60
SHA256: {sha}
"""


def test_the_closure_follows_depends_virtuals_and_alternatives_and_stops_at_host_packages() -> None:
    index = debian.parse_packages(PACKAGES.format(sha=SHA))
    found = debian.closure(index, ["libroot1"], {"libc6", "debconf"})
    # libvirt-user: only provided (by libprovider); libalt-a is not in the index, so libalt-b; libc6 and
    # debconf are the host's; libunrelated is needed by nothing
    assert [d.name for d in found] == ["libalt-b", "libleaf2", "libprovider", "libroot1", "libshared3"]
    assert found[1] == debian.Deb("libleaf2", "2.1", SHA, 20, "pool/main/l/leaf/libleaf2_2.1_amd64.deb")
    with pytest.raises(UserError, match="libnope: not in the bookworm amd64 index"):
        debian.closure(index, ["libnope"], set())
    with pytest.raises(UserError, match="libroot1 depends on libleaf2, which the index does not have"):
        debian.closure({k: v for k, v in index.items() if k != "libleaf2"}, ["libroot1"], {"libc6", "debconf"})


# -- the manifest --------------------------------------------------------------------------------------


def _manifest(debs: list[DebRecord]) -> Manifest:
    entry = EntryRecord(entry="vllm-0.25.0", python="3.12", lock="docker/locks/vllm-0.25.0-py3.12.txt",
                        lock_sha256="sha256:" + SHA, inputs_hash="x", files=[], debs=debs)
    return Manifest(format=1, created="2026-12-01T00:00:00Z", python="3.12", payload="zstd", part_mib=56,
                    entries={"vllm-0.25.0": entry}, chunks={SHA: 3}, parts=[], tools=[])


def test_a_manifest_with_debs_round_trips_and_one_without_them_still_reads() -> None:
    deb = DebRecord("ffmpeg", "libavutil57", "7:5.1.9-0+deb12u1", "libavutil57_5.1.9-0+deb12u1_amd64.deb", SHA, 3,
                    [SHA])
    manifest = _manifest([deb])
    assert Manifest.from_json(manifest.to_json()) == manifest
    raw = json.loads(_manifest([]).to_json())
    del raw["entries"]["vllm-0.25.0"]["debs"]  # what bundles made before system libraries look like
    assert Manifest.from_json(json.dumps(raw)).entries["vllm-0.25.0"].debs == []


@pytest.mark.parametrize(("change", "says"), [
    ({"deb": "../../etc/cron.d/x.deb"}, "is not a .deb file name"),
    ({"sha256": "ab"}, "sha256 must be 64 hex digits"),
    ({"size": -1}, "size a byte count"),
    ({"system_package": "FFmpeg"}, "system_package must be a Debian package name"),
    ({"chunks": ["../x"]}, "chunks must be a list of chunk names"),
])
def test_a_damaged_deb_record_is_one_line_naming_the_field(change: dict, says: str) -> None:
    deb = DebRecord("ffmpeg", "libavutil57", "7:5.1", "libavutil57_5.1_amd64.deb", SHA, 3, [SHA])
    raw = json.loads(_manifest([deb]).to_json())
    raw["entries"]["vllm-0.25.0"]["debs"][0].update(change)
    with pytest.raises(ManifestError, match=rf"entries\['vllm-0\.25\.0'\]\.debs\[0\]: .*{says}"):
        Manifest.from_json(json.dumps(raw))


# -- reading .deb files --------------------------------------------------------------------------------


def _zstandard():
    import zstandard

    return zstandard


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A package tree: a library, its soname link, an absolute link and a doc file."""
    root = tmp_path / "pkg"
    lib = root / "usr/lib/x86_64-linux-gnu"
    lib.mkdir(parents=True)
    (lib / "libfoo.so.1.2.3").write_bytes(b"\x7fELF not really" * 100)
    (lib / "libfoo.so.1").symlink_to("libfoo.so.1.2.3")
    (lib / "libbar.so.9").symlink_to("/usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3")
    (root / "usr/share/doc/libfoo1").mkdir(parents=True)
    (root / "usr/share/doc/libfoo1/copyright").write_text("free\n")
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text("Package: libfoo1\nVersion: 1.2.3\nArchitecture: amd64\n"
                                         "Maintainer: t <t@example.org>\nDescription: test\n")
    return root


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (f"-> {os.readlink(p)}" if p.is_symlink() else p.read_bytes().hex()[:40])
            for p in sorted(root.rglob("*")) if p.is_symlink() or p.is_file()}


@pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="builds its .deb files with dpkg-deb (Debian/Ubuntu)")
@pytest.mark.parametrize("compression", ["xz", "zstd", "gzip", "none"])
def test_the_python_reader_unpacks_what_dpkg_deb_unpacks(tmp_path: Path, tree: Path, compression: str) -> None:
    deb = tmp_path / "libfoo1.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", str(tree), str(deb)],
                   check=True, capture_output=True)
    debfile.extract(deb, tmp_path / "dpkg", _zstandard)
    assert debfile.extract_python(deb, tmp_path / "python", _zstandard) >= 5
    assert _files(tmp_path / "python") == _files(tmp_path / "dpkg")
    assert "usr/lib/x86_64-linux-gnu/libfoo.so.1" in _files(tmp_path / "python")


def _ar(members: dict[str, bytes]) -> bytes:
    out = bytearray(debfile.AR_MAGIC)
    for name, data in members.items():
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode() + data + b"\n" * (len(data) & 1)
    return bytes(out)


def test_a_member_leaving_the_folder_is_never_written_and_garbage_is_one_line(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        for name in ("../escaped", "./usr/lib/libok.so.1"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    deb = tmp_path / "evil.deb"
    deb.write_bytes(_ar({"debian-binary": b"2.0\n", "control.tar.gz": b"", "data.tar.gz": data.getvalue()}))
    assert debfile.extract_python(deb, tmp_path / "out", _zstandard) == 1
    assert (tmp_path / "out/usr/lib/libok.so.1").read_bytes() == b"abc" and not (tmp_path / "escaped").exists()
    monkeypatch.setattr(shutil, "which", lambda name: None)  # a machine without dpkg-deb
    (tmp_path / "junk.deb").write_bytes(b"not an archive")
    with pytest.raises(UserError, match=r"^junk\.deb: cannot be unpacked \(not an ar archive\); receive its parts"):
        debfile.extract(tmp_path / "junk.deb", tmp_path / "junk", _zstandard)


# -- the GPU side --------------------------------------------------------------------------------------


def test_a_reassembled_deb_with_another_sha256_is_refused(tmp_path: Path) -> None:
    (tmp_path / SHA).write_bytes(b"abc")
    deb = DebRecord("ffmpeg", "libfoo1", "1", "libfoo1_1_amd64.deb", SHA, 3, [SHA])
    with pytest.raises(UserError, match=r"libfoo1_1_amd64\.deb: reassembled file has the wrong sha256"):
        syslibs.reassemble(deb, tmp_path, tmp_path)


def test_only_libraries_the_host_lacks_go_on_the_path_and_only_for_packages_it_lacks(tmp_path: Path,
                                                                                     tree: Path) -> None:
    env = tmp_path / "env"
    shutil.copytree(tree, env / "syslib" / "root", symlinks=True)
    (env / "syslib" / syslibs.STAMP).write_text("{}")
    record = EntryRecord(entry="e", python="3.12", lock="l", lock_sha256="s", inputs_hash="x",
                         debs=[DebRecord("ffmpeg", "libfoo1", "1.2.3", "libfoo1_1.2.3_amd64.deb", SHA, 1, [])])

    ld = syslibs.overlay(env / "syslib", {"libfoo.so.1.2.3"})
    # libfoo.so.1 links into the tree; the host has libfoo.so.1.2.3; libbar.so.9 points out of the tree
    assert sorted(p.name for p in ld.iterdir()) == ["libfoo.so.1"]
    assert (ld / "libfoo.so.1").resolve() == (env / "syslib/root/usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3").resolve()

    extra, states = syslibs.environment(record, env, {"ffmpeg": "installed", "libnuma1": "missing"}, lambda: set())
    assert (extra, states) == ({}, {"ffmpeg": "installed", "libnuma1": "missing"})
    extra, states = syslibs.environment(record, env, {"ffmpeg": "missing", "libnuma1": "missing"}, lambda: None)
    assert states == {"ffmpeg": "shipped", "libnuma1": "missing"}
    assert extra["LD_LIBRARY_PATH"].split(":")[0] == str(env / "syslib" / "ld")
    assert sorted(p.name for p in (env / "syslib" / "ld").iterdir()) == ["libfoo.so.1", "libfoo.so.1.2.3"]
    assert syslibs.versions(dataclasses.replace(record)) == {"ffmpeg": {"libfoo1": "1.2.3"}}
