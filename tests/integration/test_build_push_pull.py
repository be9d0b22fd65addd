"""Build, check, tag, push, pull and skip against the real Docker engine and a real registry.

The 'engine' here is the tiny PyPI package six on the Debian base image, so the whole path (context,
Dockerfile, install script, extra CA, post-build version check, tags, labels, registry round trip)
runs in about a minute. The real engine image is built in test_real_engine.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rollout_matrix.errors import RegistryError, UserError
from rollout_matrix.images.build import build
from rollout_matrix.images.docker_api import image_exists
from rollout_matrix.images.options import BuildOptions
from rollout_matrix.images.plan import plan_build
from rollout_matrix.images.registry import pull, push
from rollout_matrix.matrix.load import load_matrix
from rollout_matrix.progress import Reporter

from .conftest import CA_BUNDLE, write_fixture_checkout

pytestmark = pytest.mark.docker


def _options(**kw) -> BuildOptions:
    return BuildOptions(locked=False, extra_ca_cert=Path(CA_BUNDLE), **kw)


def test_build_labels_check_push_pull_and_skip(tmp_path, test_base, unique_repo, docker_client, cleanup_images):
    matrix = load_matrix(write_fixture_checkout(
        tmp_path, repository=unique_repo, base=test_base,
        releases={"1.16.0": {"packaging": "24.1"}}, extra_requirements=["packaging==24.1"]))
    entry = matrix.get("six-1.16.0")
    plan = plan_build(matrix, entry, _options())
    cleanup_images.extend(plan.refs)

    result = build(plan, Reporter("t"))
    assert result.skipped is None and result.image_id
    image = docker_client.images.get(plan.content_ref)
    assert docker_client.images.get(plan.readable_ref).id == image.id
    labels = image.labels
    assert labels["io.rollout-matrix.entry"] == "six-1.16.0"
    assert labels["io.rollout-matrix.release"] == "1.16.0"
    assert labels["io.rollout-matrix.content-hash"] == plan.content_hash
    assert plan.content_hash[:12] in plan.content_ref
    assert labels["org.opencontainers.image.version"] == "1.16.0"
    assert json.loads(labels["io.rollout-matrix.expected"]) == {"six": "1.16.0", "packaging": "24.1"}

    # The registry round trip: push, forget the local copy, pull back by content tag, same digest.
    digest = push(plan, Reporter("t"))
    assert digest.startswith("sha256:")
    for ref in plan.refs:
        docker_client.images.remove(ref, force=True)
    assert not image_exists(plan.content_ref)

    # A second build of the unchanged entry is skipped because the registry has its content tag.
    again = build(plan, Reporter("t"))
    assert again.skipped == "registry"
    assert not image_exists(plan.content_ref)

    pulled_digest = pull(plan, Reporter("t"))
    assert pulled_digest == digest
    pulled = docker_client.images.get(plan.content_ref)
    assert f"{unique_repo}@{digest}" in pulled.attrs["RepoDigests"]
    assert pulled.id == image.id

    # ... and, with the image local again, skipped locally.
    assert build(plan, Reporter("t")).skipped == "local"


def test_version_mismatch_fails_with_a_diff_and_leaves_no_tag(tmp_path, test_base, unique_repo, cleanup_images):
    # The entry claims packaging 24.2 but installs 24.1: the image must be rejected.
    matrix = load_matrix(write_fixture_checkout(
        tmp_path, repository=unique_repo, base=test_base,
        releases={"1.16.0": {"packaging": "24.2"}}, extra_requirements=["packaging==24.1"]))
    plan = plan_build(matrix, matrix.get("six-1.16.0"), _options())
    cleanup_images.extend(plan.refs)
    with pytest.raises(UserError) as err:
        build(plan, Reporter("t"))
    message = str(err.value)
    assert "version check failed for six-1.16.0" in message
    assert "packaging" in message and "expected 24.2" in message and "image has 24.1" in message
    assert not image_exists(plan.content_ref)
    assert not image_exists(plan.readable_ref)


def test_failing_build_step_leaves_no_tag(tmp_path, test_base, unique_repo, cleanup_images):
    matrix = load_matrix(write_fixture_checkout(
        tmp_path, repository=unique_repo, base=test_base, releases={"1.16.0": {}},
        extra_requirements=["rollout-matrix-no-such-package-on-any-index==1.0"]))
    plan = plan_build(matrix, matrix.get("six-1.16.0"), _options())
    cleanup_images.extend(plan.refs)
    with pytest.raises(UserError) as err:
        build(plan, Reporter("t"))
    assert "build of six-1.16.0 failed: No solution found when resolving dependencies" in str(err.value)
    assert "nothing was tagged" in str(err.value)
    assert not image_exists(plan.content_ref)
    assert not image_exists(plan.readable_ref)


def test_a_bands_system_packages_are_in_its_image(tmp_path, test_base, unique_repo, docker_client, cleanup_images):
    matrix = load_matrix(write_fixture_checkout(tmp_path, repository=unique_repo, base=test_base,
                                                releases={"1.16.0": {}}, system_packages=["jq"]))
    plan = plan_build(matrix, matrix.get("six-1.16.0"), _options())
    cleanup_images.extend(plan.refs)
    build(plan, Reporter("t"))
    out = docker_client.containers.run(plan.content_ref, ["sh", "-c", "echo '{\"a\": 7}' | jq .a"], remove=True)
    assert out.decode().strip() == "7"


def test_an_unknown_system_package_fails_the_build_naming_it(tmp_path, test_base, unique_repo, cleanup_images):
    matrix = load_matrix(write_fixture_checkout(tmp_path, repository=unique_repo, base=test_base,
                                                releases={"1.16.0": {}}, system_packages=["rollout-matrix-no-such-deb"]))
    plan = plan_build(matrix, matrix.get("six-1.16.0"), _options())
    cleanup_images.extend(plan.refs)
    with pytest.raises(UserError) as err:
        build(plan, Reporter("t"))
    assert "Unable to locate package rollout-matrix-no-such-deb" in str(err.value)
    assert not any(image_exists(ref) for ref in plan.refs)


def test_missing_base_image_is_a_clear_error(tmp_path, test_base, unique_repo):
    matrix = load_matrix(write_fixture_checkout(tmp_path, repository=unique_repo, base=test_base,
                                                releases={"1.16.0": {}}))
    plan = plan_build(matrix, matrix.get("six-1.16.0"), _options(base_image="127.0.0.1:5000/no/such-base:1"))
    with pytest.raises(RegistryError) as err:  # a failed pull: exit 6, as docs/ci.md says
        build(plan, Reporter("t"))
    message = str(err.value)
    assert "base image 127.0.0.1:5000/no/such-base:1 is neither local nor pullable" in message
    # the fix in the forms the nox sessions take (they read no flags)
    assert 'base_image = "deb=IMAGE"' in message and "rollout-matrix.toml" in message
    assert "ROLLOUT_MATRIX_BASE_IMAGE=deb=IMAGE" in message
    assert not image_exists(plan.content_ref)


def test_push_to_unreachable_registry_fails(tmp_path, test_base, cleanup_images):
    # Port 9 (discard) on loopback: nothing listens there.
    matrix = load_matrix(write_fixture_checkout(tmp_path, repository="127.0.0.1:9/rm-test", base=test_base,
                                                releases={"1.16.0": {}}))
    plan = plan_build(matrix, matrix.get("six-1.16.0"), _options())
    cleanup_images.extend(plan.refs)
    build(plan, Reporter("t"))
    with pytest.raises(UserError) as err:
        push(plan, Reporter("t"))
    message = str(err.value)
    assert message.startswith(f"push of {plan.content_ref} failed")
    assert "reachable" in message


def test_credentials_in_index_url_are_refused_before_building():
    with pytest.raises(UserError) as err:
        BuildOptions(index_url="https://user:s3cret@mirror.example/simple").validate()
    assert "credentials" in str(err.value) and "s3cret" not in str(err.value)


def test_extra_ca_is_trusted_and_history_holds_no_secret(tmp_path, test_base, unique_repo, docker_client,
                                                          cleanup_images):
    """The extra CA goes into the trust store (a file layer), not into the history, which shows only
    the build arguments."""
    matrix = load_matrix(write_fixture_checkout(tmp_path, repository=unique_repo, base=test_base,
                                                releases={"1.16.0": {}}))
    plan = plan_build(matrix, matrix.get("six-1.16.0"), _options())
    cleanup_images.extend(plan.refs)
    build(plan, Reporter("t"))
    image = docker_client.images.get(plan.content_ref)
    history = json.dumps(image.history())
    assert "PIP_INDEX_URL=https://pypi.org/simple" in history
    ca = Path(CA_BUNDLE).read_text()
    assert ca[:200] not in history
    # The check runs in the container and prints one word: reading back the whole 200 KB bundle through
    # the container's log once came back cut short (a CI flake), which looked like a missing CA.
    last_cert_line = ca.strip().split("-----BEGIN CERTIFICATE-----")[-1].split()[1]
    probe = f"grep -qxF '{last_cert_line}' /etc/ssl/certs/ca-certificates.crt && echo TRUSTED || echo MISSING"
    answer = docker_client.containers.run(image.id, ["sh", "-c", probe], entrypoint=[], remove=True).decode()
    assert answer.strip() == "TRUSTED", f"the extra CA's last certificate is not in the image's trust store: {answer}"
