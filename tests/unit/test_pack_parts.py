"""Bundle parts are packed entry by entry, so the GPU machine can test the first entry while the rest
of the batch is still arriving (the device tool carries one part per call)."""

from __future__ import annotations

import itertools
import random

from rollout_matrix.bundles.manifest import pack_parts

MIB = 1 << 20


def _groups(seed: int) -> list[dict[str, int]]:
    rng = random.Random(seed)
    groups, n = [], 0
    for _ in range(rng.randrange(1, 6)):
        group = {}
        for _ in range(rng.randrange(0, 25)):
            group[f"c{n}"] = rng.choice([58 * MIB, rng.randrange(1, 58 * MIB)])
            n += 1
        groups.append(group)
    return groups


def test_every_chunk_once_and_parts_within_the_limit() -> None:
    for seed in range(200):
        groups = _groups(seed)
        parts = pack_parts(groups, 58 * MIB)
        names = [c for part in parts for c in part]
        assert sorted(names) == sorted(c for g in groups for c in g)
        sizes = {c: s for g in groups for c, s in g.items()}
        assert all(sum(sizes[c] for c in part) <= 58 * MIB for part in parts)


def test_an_entry_is_complete_before_the_next_entry_s_parts_begin() -> None:
    for seed in range(200):
        groups = _groups(seed)
        parts = pack_parts(groups, 58 * MIB)
        where = {c: i for i, part in enumerate(parts) for c in part}
        spans = [(min(where[c] for c in g), max(where[c] for c in g)) for g in groups if g]
        for (_, last), (first, _) in itertools.pairwise(spans):
            assert last <= first  # at most the one part where they meet is shared


def test_small_chunks_fill_the_previous_entry_s_last_part() -> None:
    parts = pack_parts([{"a": 50 * MIB}, {"b": 5 * MIB, "c": 40 * MIB}], 58 * MIB)
    assert parts == [["a", "b"], ["c"]]
