"""Keys of a development installation, kept in the data folder.

In development (the demo, a laptop) a missing key is generated once and kept in
`<data_dir>/keys/` with owner-only permissions: the server's Ed25519 announce-signing key, an
RSA key pair standing in for the payment backend's, the device master key and the field keys.
Production gives explicit key files and refuses to start without them (see `settings`). Nothing here is ever committed.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from firmware_protocols.credentials import SECRET_BYTES
from firmware_protocols.signing import encode_public_key
from fleet_server.contacts.cipher import FieldKeys
from fleet_server.errors import FieldCryptError
from fleet_server.identity.certs import write_private
from haodian.errors import HaodianError
from haodian.settings import Settings


class KeyFileError(HaodianError):
    """A key file is missing or unreadable."""


def read_signing_key(path: Path) -> Ed25519PrivateKey:
    try:
        return Ed25519PrivateKey.from_private_bytes(base64.b64decode(path.read_bytes().strip(), validate=True))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read Ed25519 signing key {path}: {exc}") from exc


def read_rsa_public_key(path: Path) -> RSAPublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read RSA public key {path}: {exc}") from exc
    if not isinstance(key, RSAPublicKey):
        raise KeyFileError(f"{path} is not an RSA public key")
    return key


def read_rsa_private_key(path: Path) -> RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read RSA private key {path}: {exc}") from exc
    if not isinstance(key, RSAPrivateKey):
        raise KeyFileError(f"{path} is not an RSA private key")
    return key


@dataclass(frozen=True)
class ServerKeys:
    signing_key: Ed25519PrivateKey
    backend_public_key: RSAPublicKey
    device_master_key: bytes
    field_keys: FieldKeys

    @property
    def server_public_key_b64(self) -> str:
        return encode_public_key(self.signing_key.public_key())


def dev_key_paths(data_dir: Path) -> tuple[Path, Path, Path]:
    folder = data_dir / "keys"
    return folder / "server-signing.ed25519", folder / "backend.rsa.pem", folder / "backend.rsa.pub.pem"


def dev_trust_paths(data_dir: Path) -> tuple[Path, Path]:
    """The development device master key and field keys."""
    folder = data_dir / "keys"
    return folder / "device-master.key", folder / "field-keys.json"


def read_device_master_key(path: Path) -> bytes:
    try:
        key = base64.b64decode(path.read_bytes().strip(), validate=True)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read device master key {path}: {exc}") from exc
    if len(key) < SECRET_BYTES:
        raise KeyFileError(f"device master key {path} must be at least {SECRET_BYTES} bytes, not {len(key)}")
    return key


def ensure_dev_trust_keys(data_dir: Path) -> None:
    master, field_keys = dev_trust_paths(data_dir)
    if not master.exists():
        write_private(master, base64.b64encode(os.urandom(SECRET_BYTES)) + b"\n")
    if not field_keys.exists():
        write_private(field_keys, FieldKeys.generate().dumps().encode())


def ensure_dev_keys(data_dir: Path) -> None:
    """Create the development keys that do not exist yet."""
    signing, backend_private, backend_public = dev_key_paths(data_dir)
    if not signing.exists():
        raw = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        write_private(signing, base64.b64encode(raw) + b"\n")
    if not backend_private.exists() or not backend_public.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        write_private(
            backend_private,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        backend_public.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )


def load_server_keys(settings: Settings) -> ServerKeys:
    """The keys the server runs with: explicit files, or in development the generated ones."""
    signing, _, backend_public = dev_key_paths(settings.data_dir)
    if settings.signing_key_file is None or settings.backend_public_key_file is None:
        ensure_dev_keys(settings.data_dir)
    master, field_keys = dev_trust_paths(settings.data_dir)
    if settings.device_master_key_file is None or settings.field_keys_file is None:
        ensure_dev_trust_keys(settings.data_dir)
    try:
        fields = FieldKeys.load(settings.field_keys_file or field_keys)
    except FieldCryptError as exc:
        raise KeyFileError(str(exc)) from exc
    return ServerKeys(
        signing_key=read_signing_key(settings.signing_key_file or signing),
        backend_public_key=read_rsa_public_key(settings.backend_public_key_file or backend_public),
        device_master_key=read_device_master_key(settings.device_master_key_file or master),
        field_keys=fields,
    )
