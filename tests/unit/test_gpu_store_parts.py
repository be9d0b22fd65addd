"""Which parts a hold sends next (gpu/store.py): the last line of every ``receive`` names the parts that
hold an entry's missing chunks, so a machine that already holds some of them (another entry's bundle
brought torch and the CUDA libraries) is sent only the rest. On 2026-12-06 vllm-0.34.0 after
sglang-0.5.23 needed 21 of its 44 parts, found by hand from the two bundle.json."""

from __future__ import annotations

from rollout_matrix.bundles.manifest import Manifest
from rollout_matrix.gpu import store

A, B, C, D, E, F, G = (c * 64 for c in "abcdef0")  # seven chunk names (64 hex digits each)


def manifest(parts: list[list[str]], created: str = "2026-12-06T00:00:00") -> Manifest:
    """A manifest whose part-001... hold ``parts``' chunks (part-000 holds the manifest only)."""
    named = [{"name": "part-000", "bytes": 0, "chunks": []}]
    named += [{"name": f"part-{n:03d}", "bytes": 1, "chunks": chunks} for n, chunks in enumerate(parts, start=1)]
    return Manifest(format=1, created=created, python="3.12", payload="zstd", part_mib=61, entries={},
                    chunks={}, parts=named, tools=[])


def test_the_parts_holding_missing_chunks_are_named_with_their_runs_joined() -> None:
    bundle = manifest([[A], [B, C], [D], [E], [F]])
    assert store._parts_holding(bundle, {A, B, C, D, E, F}) == "in part-001 - part-005"
    assert store._parts_holding(bundle, {A, C, D, F}) == "in part-001 - part-003, part-005"
    assert store._parts_holding(bundle, {E}) == "in part-004"


def test_chunks_no_part_holds_are_counted_and_the_earlier_bundle_is_asked_for() -> None:
    """A bundle made ``--after`` another ships only what that one did not: a machine without the earlier
    bundle's parts misses chunks none of this bundle's parts hold."""
    bundle = manifest([[A], [B]])
    assert store._parts_holding(bundle, {B, G}) == (
        "in part-002; 1 in no part of this bundle: send the bundle it was made --after")
    assert store._parts_holding(bundle, {G}) == "1 in no part of this bundle: send the bundle it was made --after"


def test_parts_are_named_with_their_bundles_folder_where_it_is_known() -> None:
    """Two bundles in one hold (sgl, then vllm-after made --after it): "part-001 - part-016" alone did
    not say whose parts (2026-12-06)."""
    sgl = manifest([[A], [B]], created="2026-12-06T01:00:00")
    after = manifest([[C], [D]], created="2026-12-06T02:00:00")
    folders = {sgl.created: "sgl", after.created: "vllm-after"}
    assert store._parts_holding(after, {C, D}, [sgl, after], folders) == "in vllm-after/part-001 - vllm-after/part-002"
    assert store._parts_holding(after, {D, A, B}, [sgl, after], folders) == (
        "in vllm-after/part-002; 2 in sgl/part-001 - sgl/part-002")


def test_chunks_neither_bundle_holds_are_still_asked_for() -> None:
    sgl = manifest([[A]], created="2026-12-06T01:00:00")
    after = manifest([[C]], created="2026-12-06T02:00:00")
    assert store._parts_holding(after, {A, G}, [sgl, after], {sgl.created: "sgl"}) == (
        "1 in sgl/part-001; 1 in no part of a bundle received here: send the bundle it was made --after")


def test_a_received_manifest_remembers_its_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(store, "ROOT", tmp_path)
    bundle = manifest([[A]])
    store._note_folder(bundle, "sgl")
    store._note_folder(manifest([[B]], created="2026-12-06T03:00:00"), "vllm-after")
    assert store._bundle_folders() == {bundle.created: "sgl", "2026-12-06T03:00:00": "vllm-after"}
    (tmp_path / store.FOLDERS).write_text("{cut sho")  # a damaged file names parts without folders, no more
    assert store._bundle_folders() == {}
