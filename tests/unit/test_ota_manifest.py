"""Release manifests: a device installs only a signed, current, newer release for its model, and
only the exact artifact the manifest names, however the download was cut and resumed."""

from __future__ import annotations

import hashlib
import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from firmware_protocols.ota import (
    ArtifactDigest,
    ManifestError,
    ReleaseManifest,
    Version,
    check_artifact,
    check_manifest,
    sign_manifest,
)
from firmware_protocols.signing import key_id_of

NOW = 1_790_000_000_000
DAY = 86_400_000
ARTIFACT = random.Random(7).randbytes(200_000)


@pytest.fixture(scope="module")
def release_key() -> Ed25519PrivateKey:
    """A release key made for this run: test-only."""
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def trusted(release_key):
    return {key_id_of(release_key.public_key()): release_key.public_key()}


def manifest(release_key, **over) -> ReleaseManifest:
    fields = {
        "name": "haodian-agent",
        "version": "1.5.0",
        "models": ["HD-S1", "HD-P2"],
        "min_version": "1.2.0",
        "size": len(ARTIFACT),
        "sha256": hashlib.sha256(ARTIFACT).hexdigest(),
        "issued_at": NOW - DAY,
        "expires_at": NOW + 7 * DAY,
    }
    fields.update(over)
    return sign_manifest(ReleaseManifest.model_validate(fields), release_key)


def check(m: ReleaseManifest, trusted, *, model: str = "HD-S1", current: str = "1.4.2", now_ms: int = NOW) -> None:
    check_manifest(m, trusted=trusted, model=model, current=current, now_ms=now_ms)


def test_a_signed_newer_release_for_the_model_is_accepted(release_key, trusted):
    check(manifest(release_key), trusted)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"version": "1.6.0"}, "signature does not verify"),
        ({"sha256": "0" * 64}, "signature does not verify"),
        ({"models": ["HD-S1", "HD-S9"]}, "signature does not verify"),
        ({"expires_at": NOW + 365 * DAY}, "signature does not verify"),
        ({"note": "unknown fields are signed too"}, "signature does not verify"),
    ],
)
def test_a_manifest_changed_after_signing_is_refused(release_key, trusted, change, why):
    signed = manifest(release_key)
    tampered = ReleaseManifest.model_validate({**signed.model_dump(), **change})
    with pytest.raises(ManifestError, match=why):
        check(tampered, trusted)


def test_a_manifest_signed_by_another_key_is_refused(trusted):
    # The server's own key, say: not a release key the device trusts.
    with pytest.raises(ManifestError, match="not a trusted release key"):
        check(manifest(Ed25519PrivateKey.generate()), trusted)


def test_an_unsigned_manifest_is_refused(release_key, trusted):
    unsigned = ReleaseManifest.model_validate({**manifest(release_key).model_dump(), "sig": ""})
    with pytest.raises(ManifestError, match="signature does not verify"):
        check(unsigned, trusted)


@pytest.mark.parametrize("current", ["1.5.0", "1.5.1", "2.0.0"])
def test_rollback_to_an_older_or_the_same_version_is_refused(release_key, trusted, current):
    with pytest.raises(ManifestError, match="rollback refused"):
        check(manifest(release_key), trusted, current=current)


def test_an_expired_manifest_is_refused(release_key, trusted):
    m = manifest(release_key)
    check(m, trusted, now_ms=m.expires_at - 1)
    with pytest.raises(ManifestError, match="expired"):
        check(m, trusted, now_ms=m.expires_at)


def test_another_model_and_a_too_old_base_are_refused(release_key, trusted):
    with pytest.raises(ManifestError, match="not HD-X"):
        check(manifest(release_key), trusted, model="HD-X")
    with pytest.raises(ManifestError, match=r"needs at least 1\.2\.0"):
        check(manifest(release_key), trusted, current="1.1.9")


def test_the_artifact_must_be_the_one_named(release_key):
    m = manifest(release_key)
    digest = ArtifactDigest()
    digest.update(ARTIFACT)
    check_artifact(m, digest)
    flipped = bytearray(ARTIFACT)
    flipped[12_345] ^= 0x01
    bad = ArtifactDigest()
    bad.update(bytes(flipped))
    with pytest.raises(ManifestError, match="SHA-256"):
        check_artifact(m, bad)
    short = ArtifactDigest()
    short.update(ARTIFACT[:-1])
    with pytest.raises(ManifestError, match="bytes"):
        check_artifact(m, short)


@given(cut=st.integers(min_value=0, max_value=len(ARTIFACT)), pieces=st.integers(min_value=1, max_value=50))
def test_a_download_cut_at_any_byte_and_resumed_checks_as_a_whole(cut, pieces):
    # What was written before the cut is fed first, then the rest as it arrives in pieces.
    digest = ArtifactDigest()
    digest.update(ARTIFACT[:cut])
    rest = ARTIFACT[cut:]
    step = max(1, len(rest) // pieces)
    for at in range(0, len(rest), step):
        digest.update(rest[at : at + step])
    assert (digest.size, digest.hexdigest()) == (len(ARTIFACT), hashlib.sha256(ARTIFACT).hexdigest())


@given(a=st.tuples(*[st.integers(0, 999)] * 3), b=st.tuples(*[st.integers(0, 999)] * 3))
def test_versions_compare_as_numbers(a, b):
    assert (Version(".".join(map(str, a))) < Version(".".join(map(str, b)))) == (a < b)


@pytest.mark.parametrize("text", ["1.2", "1.2.3.4", "01.2.3", "v1.2.3", "1.2.x", ""])
def test_a_malformed_version_is_refused(text):
    with pytest.raises(ManifestError):
        Version(text)
