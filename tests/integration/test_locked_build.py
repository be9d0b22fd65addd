"""Images install exactly their lock, hash-checked (issue #6), through the real build path.

A fixture 'engine' (six 1.16.0) is locked against real PyPI with the project's locking code, built
from that lock on the Debian base, and the installed set inside the image must equal the lock. A
lock whose hashes for six were tampered with must fail the build with the installer's hash error and leave no tag.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rollout_matrix.errors import UserError
from rollout_matrix.images.build import build
from rollout_matrix.images.docker_api import image_exists
from rollout_matrix.images.options import BuildOptions
from rollout_matrix.images.plan import plan_build
from rollout_matrix.images.verify import report_versions
from rollout_matrix.locks.locking import lock_entry, locks_dir_for, read_lock
from rollout_matrix.matrix.load import load_matrix
from rollout_matrix.progress import Reporter

from .conftest import CA_BUNDLE, write_fixture_checkout

pytestmark = pytest.mark.docker


@pytest.fixture
def locked_fixture(tmp_path, test_base, unique_repo):
    matrix = load_matrix(write_fixture_checkout(
        tmp_path, repository=unique_repo, base=test_base,
        # six 1.16.0 is from 2021, older than the pinned test tools: resolve as of a later date.
        releases={"1.16.0": {"packaging": "24.1", "exclude_newer": "2025-04-01T00:00:00Z"}},
        extra_requirements=["packaging==24.1"]))
    entry = matrix.get("six-1.16.0")
    result = lock_entry(entry, None, locks_dir_for(matrix))
    assert result.ok, result.error
    return matrix, entry, result.path


def test_image_installs_exactly_its_lock(locked_fixture, docker_client, cleanup_images):
    matrix, entry, lock_file = locked_fixture
    plan = plan_build(matrix, entry, BuildOptions(extra_ca_cert=Path(CA_BUNDLE)))
    assert plan.lock_file == lock_file
    cleanup_images.extend(plan.refs)
    build(plan, Reporter("t"))
    assert docker_client.images.get(plan.content_ref).labels["io.rollout-matrix.locked"] == "true"
    installed = report_versions(plan.content_ref, []).distributions
    assert installed == read_lock(lock_file).versions
    assert installed["six"] == "1.16.0" and installed["pytest"] == "8.3.5"


def test_tampered_hash_fails_the_build_and_leaves_no_tag(locked_fixture, cleanup_images):
    matrix, entry, lock_file = locked_fixture
    text = lock_file.read_text()
    # Every hash of six (wheel and sdist) replaced by wrong ones: the download can match none.
    block = re.search(r"^six==1\.16\.0(?: \\\n\s+--hash=sha256:[0-9a-f]{64})+", text, re.M)
    assert block, text[:2000]
    tampered = re.sub(r"[0-9a-f]{64}", "0" * 64, block.group(0))
    lock_file.write_text(text.replace(block.group(0), tampered))
    plan = plan_build(matrix, entry, BuildOptions(extra_ca_cert=Path(CA_BUNDLE)))
    cleanup_images.extend(plan.refs)
    with pytest.raises(UserError) as err:
        build(plan, Reporter("t"))
    assert "build of six-1.16.0 failed" in str(err.value) and "nothing was tagged" in str(err.value)
    assert not image_exists(plan.content_ref) and not image_exists(plan.readable_ref)


def test_lock_content_is_part_of_the_content_hash(locked_fixture):
    matrix, entry, lock_file = locked_fixture
    before = plan_build(matrix, entry, BuildOptions()).content_hash
    lock_file.write_text(lock_file.read_text() + "\n")
    after = plan_build(matrix, entry, BuildOptions()).content_hash
    assert before != after
