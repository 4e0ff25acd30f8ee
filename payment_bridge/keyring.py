"""Platform keys from configuration files, rotated without a restart.

    keys = PlatformKeys(alipay_public_key_file=..., wechatpay_keys_dir=..., wechatpay_apiv3_key_file=...)
    keys.alipay()            # the Alipay public keys in force (a file may hold several PEM blocks)
    keys.wechatpay(serial)   # the WeChat Pay platform key for a Wechatpay-Serial, or None
    keys.apiv3_key()         # the merchant's APIv3 key (32 bytes)

Files are read again when they change: every lookup compares the files' (mtime, size) at most
once per `check_interval_s`, so a new key dropped into place (written to a temporary name and
renamed, as deployment tools do) is in force within a second, and the old one stops working
when its file goes. A file that cannot be read or parsed keeps the keys already loaded and is
logged; a key that was never loaded is simply absent, and notifications that need it are
refused with a clear code.

WeChat Pay platform keys are a folder of PEM files: platform certificates (any name; the key is
the certificate's serial number, as `Wechatpay-Serial` carries it in hex) and platform public
keys (named after their id, `PUB_KEY_ID_....pem`, the newer scheme WeChat Pay moved to).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

log = structlog.get_logger(__name__)

PUBLIC_KEY_ID_PREFIX = "PUB_KEY_ID_"
_Loader = Callable[[list[Path]], None]
_PEM_BLOCK = "-----BEGIN "


def _stamp(paths: list[Path]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            continue
        out.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(out)


def _pem_blocks(text: str) -> list[bytes]:
    """Each PEM block of a file (a file may hold a key and its successor during a rotation)."""
    return [(_PEM_BLOCK + part).encode() for part in text.split(_PEM_BLOCK)[1:]]


def _rsa_public_key(block: bytes) -> RSAPublicKey:
    is_certificate = b"CERTIFICATE" in block.split(b"\n", 1)[0]
    key = x509.load_pem_x509_certificate(block).public_key() if is_certificate else load_pem_public_key(block)
    if not isinstance(key, RSAPublicKey):
        # A ValueError like every other unusable file: the caller keeps the previous keys.
        raise ValueError(f"not an RSA key: {type(key).__name__}")  # noqa: TRY004 - see above.
    return key


def _wechatpay_entry(path: Path, block: bytes) -> tuple[str, RSAPublicKey]:
    """(the Wechatpay-Serial it answers to, the key) for one PEM block of the keys folder."""
    if b"CERTIFICATE" in block.split(b"\n", 1)[0]:
        certificate = x509.load_pem_x509_certificate(block)
        key = certificate.public_key()
        if not isinstance(key, RSAPublicKey):
            raise ValueError("the certificate's key is not RSA")
        return f"{certificate.serial_number:X}", key
    if not path.stem.startswith(PUBLIC_KEY_ID_PREFIX):
        raise ValueError(f"a platform public key file must be named {PUBLIC_KEY_ID_PREFIX}<id>.pem")
    return path.stem, _rsa_public_key(block)


@dataclass(slots=True)
class _Watched:
    """Some files, and what was last loaded from them."""

    stamp: tuple[tuple[str, int, int], ...] = ()
    checked_at: float = float("-inf")
    loaded: bool = False


@dataclass(slots=True)
class PlatformKeys:
    """The platforms' keys, and who we are on each: the WeChat Pay merchant ids that are ours
    (`sp_mchid` in partner mode, `mchid` in direct mode) and our Alipay `app_id`s. A
    notification for another provider is refused; empty: not checked (development)."""

    alipay_public_key_file: Path | None = None
    wechatpay_keys_dir: Path | None = None
    wechatpay_apiv3_key_file: Path | None = None
    wechatpay_mchids: frozenset[str] = frozenset()
    alipay_app_ids: frozenset[str] = frozenset()
    # UnionPay's root and intermediate (middle) certificates, which its signing certificate,
    # sent in each notification, must chain to.
    unionpay_root_cert_file: Path | None = None
    unionpay_middle_cert_file: Path | None = None
    check_interval_s: float = 1.0
    _alipay: list[RSAPublicKey] = field(default_factory=list)
    _wechatpay: dict[str, RSAPublicKey] = field(default_factory=dict)
    _apiv3: bytes | None = None
    _unionpay: list[x509.Certificate] = field(default_factory=list)
    _watch: dict[str, _Watched] = field(default_factory=dict)

    def alipay(self) -> list[RSAPublicKey]:
        if self.alipay_public_key_file is not None:
            self._refresh("alipay", [self.alipay_public_key_file], self._load_alipay)
        return self._alipay

    def wechatpay(self, serial: str) -> RSAPublicKey | None:
        if self.wechatpay_keys_dir is not None:
            self._refresh("wechatpay", sorted(self.wechatpay_keys_dir.glob("*.pem")), self._load_wechatpay)
        if serial.startswith(PUBLIC_KEY_ID_PREFIX):
            return self._wechatpay.get(serial)
        return self._wechatpay.get(serial.upper().lstrip("0") or "0")

    def apiv3_key(self) -> bytes | None:
        if self.wechatpay_apiv3_key_file is not None:
            self._refresh("apiv3", [self.wechatpay_apiv3_key_file], self._load_apiv3)
        return self._apiv3

    def unionpay_chain(self) -> list[x509.Certificate]:
        """[intermediate, root], or [] when not configured."""
        if self.unionpay_root_cert_file is not None and self.unionpay_middle_cert_file is not None:
            paths = [self.unionpay_middle_cert_file, self.unionpay_root_cert_file]
            self._refresh("unionpay", paths, self._load_unionpay)
        return self._unionpay

    def _refresh(self, name: str, paths: list[Path], load: _Loader) -> None:
        watched = self._watch.setdefault(name, _Watched())
        now = time.monotonic()
        if watched.loaded and now - watched.checked_at < self.check_interval_s:
            return
        watched.checked_at = now
        stamp = _stamp(paths)
        if watched.loaded and stamp == watched.stamp:
            return
        try:
            load(paths)
        except (OSError, ValueError) as exc:
            # Keep serving with the keys already loaded; the next change of the files retries.
            log.error("platform keys not reloaded; keeping the previous ones", keys=name, error=str(exc))  # noqa: TRY400 - the reason is the message; no traceback.
            watched.stamp = stamp
            return
        watched.stamp, watched.loaded = stamp, True
        log.info("platform keys loaded", keys=name, files=len(stamp))

    def _load_alipay(self, paths: list[Path]) -> None:
        keys = [_rsa_public_key(block) for block in _pem_blocks(paths[0].read_text(encoding="ascii"))]
        if not keys:
            raise ValueError(f"{paths[0]}: no PEM public key in it")
        self._alipay = keys

    def _load_wechatpay(self, paths: list[Path]) -> None:
        keys: dict[str, RSAPublicKey] = {}
        for path in paths:
            for block in _pem_blocks(path.read_text(encoding="ascii")):
                try:
                    serial, key = _wechatpay_entry(path, block)
                except ValueError as exc:
                    raise ValueError(f"{path}: {exc}") from exc
                keys[serial] = key
        self._wechatpay = keys

    def _load_unionpay(self, paths: list[Path]) -> None:
        self._unionpay = [x509.load_pem_x509_certificate(path.read_bytes()) for path in paths]

    def _load_apiv3(self, paths: list[Path]) -> None:
        key = paths[0].read_text(encoding="ascii").strip().encode()
        if len(key) != 32:
            raise ValueError(f"{paths[0]}: an APIv3 key is 32 characters, this one has {len(key)}")
        self._apiv3 = key
