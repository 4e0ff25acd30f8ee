"""Signed release manifests: what a device checks before it installs an update. Pure, I/O-free.

    manifest = sign_manifest(ReleaseManifest(name=..., version="1.5.0", models=["HD-S1"], ...), release_key)
    check_manifest(manifest, trusted=release_keys, model="HD-S1", current="1.4.2", now_ms=...)
    digest = ArtifactDigest(); digest.update(chunk) ...; check_artifact(manifest, digest)

A manifest names the package, its version, the device models it is for, the oldest version it
may be installed over, the artifact's size and SHA-256, and when it stops being valid; it is
signed with an Ed25519 **release key**, kept offline and separate from the server keys that sign
announces, so a compromised fleet server cannot push firmware. The signature covers the same
canonical JSON as every signed message (`signing.canonical_bytes`: keys sorted, compact, UTF-8,
everything but `sig`).

A device refuses a manifest that is not signed by a release key it was provisioned with, one for
another model, one whose version is not newer than what it runs (rollback attack: an old,
vulnerable release re-signed long ago stays refused), one it cannot be installed over
(`min_version`), and one past `expires_at` (freeze attack: a stale manifest withheld and replayed
later). The artifact must then have exactly the size and SHA-256 the manifest states; the digest
is computed incrementally, so a download resumed at any byte is checked as a whole.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from functools import total_ordering
from typing import Annotated, Literal, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from firmware_protocols.errors import ManifestError
from firmware_protocols.fields import EpochMs
from firmware_protocols.signing import canonical_bytes, key_id_of

_VERSION = re.compile(r"^(0|[1-9]\d{0,5})\.(0|[1-9]\d{0,5})\.(0|[1-9]\d{0,5})$")
VersionText = Annotated[str, StringConstraints(pattern=_VERSION.pattern)]
MAX_ARTIFACT_BYTES = 512 * 1024 * 1024


@total_ordering
class Version:
    """MAJOR.MINOR.PATCH, compared as numbers (1.10.0 is newer than 1.9.9)."""

    __slots__ = ("parts",)

    def __init__(self, text: str) -> None:
        match = _VERSION.match(text)
        if match is None:
            raise ManifestError(f"version {text!r} is not MAJOR.MINOR.PATCH")
        self.parts = (int(match[1]), int(match[2]), int(match[3]))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self.parts == other.parts

    def __lt__(self, other: Version) -> bool:
        return self.parts < other.parts

    def __hash__(self) -> int:
        return hash(self.parts)

    def __str__(self) -> str:
        return ".".join(map(str, self.parts))

    def __repr__(self) -> str:
        return f"Version({str(self)!r})"


class ReleaseManifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    v: Literal[1] = 1
    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
    version: VersionText
    models: Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=32)]], Field(min_length=1)]
    min_version: VersionText | None = None
    size: Annotated[int, Field(gt=0, le=MAX_ARTIFACT_BYTES)]
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    issued_at: EpochMs
    expires_at: EpochMs
    key_id: Annotated[str, StringConstraints(min_length=1, max_length=32)] = ""
    sig: Annotated[str, StringConstraints(max_length=128)] = ""

    @model_validator(mode="after")
    def _expires_after_issue(self) -> Self:
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be after issued_at")
        return self

    def describe(self) -> str:
        return f"release {self.name} {self.version}"


def sign_manifest(manifest: ReleaseManifest, release_key: Ed25519PrivateKey) -> ReleaseManifest:
    """`manifest` with the release key's id and a fresh signature."""
    fields = manifest.model_dump(mode="json", exclude_none=True)
    fields["key_id"] = key_id_of(release_key.public_key())
    fields["sig"] = base64.b64encode(release_key.sign(canonical_bytes(fields))).decode()
    return ReleaseManifest.model_validate(fields)


def check_signature(manifest: ReleaseManifest, trusted: Mapping[str, Ed25519PublicKey]) -> None:
    key = trusted.get(manifest.key_id)
    if key is None:
        raise ManifestError(f"{manifest.describe()}: signed by {manifest.key_id!r}, not a trusted release key")
    try:
        signature = base64.b64decode(manifest.sig, validate=True)
        key.verify(signature, canonical_bytes(manifest.model_dump(mode="json", exclude_none=True)))
    except (binascii.Error, InvalidSignature):
        raise ManifestError(f"{manifest.describe()}: signature does not verify") from None


def check_manifest(
    manifest: ReleaseManifest,
    *,
    trusted: Mapping[str, Ed25519PublicKey],
    model: str,
    current: str,
    now_ms: int,
) -> None:
    """Raise `ManifestError` unless a device of `model` running `current` may install this now."""
    check_signature(manifest, trusted)
    what = manifest.describe()
    if now_ms >= manifest.expires_at:
        raise ManifestError(f"{what}: expired (freeze attack or a stale campaign)")
    if model not in manifest.models:
        raise ManifestError(f"{what}: for models {', '.join(manifest.models)}, not {model}")
    running = Version(current)
    if Version(manifest.version) <= running:
        raise ManifestError(f"{what}: not newer than the running {running} (rollback refused)")
    if manifest.min_version is not None and running < Version(manifest.min_version):
        raise ManifestError(f"{what}: needs at least {manifest.min_version} installed, this runs {running}")


class ArtifactDigest:
    """SHA-256 and size of an artifact, fed in pieces (a resumed download feeds the bytes it
    already has first)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def check_artifact(manifest: ReleaseManifest, digest: ArtifactDigest) -> None:
    what = manifest.describe()
    if digest.size != manifest.size:
        raise ManifestError(f"{what}: artifact is {digest.size} bytes, the manifest says {manifest.size}")
    if digest.hexdigest() != manifest.sha256:
        raise ManifestError(f"{what}: artifact SHA-256 {digest.hexdigest()} is not the manifest's {manifest.sha256}")
