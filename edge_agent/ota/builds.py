"""An agent build: the agent software as an update carries it, and how a slot is made from one.

A build is a zip file (the artifact a release manifest signs) holding the agent's own packages
(`edge_agent`, with its voice pack, `firmware_protocols`, `mqtt_link`) and, at its root,
`haodian-build.json`: the format, the version, the build id (SHA-256 over every file's name and
bytes, so two builds of the same sources have the same id), and the versions of the libraries
it was built against. Installing one unpacks it into the slot's `app/` folder; the launcher
(`edge_agent.launcher`) then starts `python -m edge_agent` with that folder first on the path,
so what runs after the update is the code the update brought.

The libraries (pydantic, cryptography, httpx ...) come from the device's base system, the part
a board's root file system provides and an application update leaves alone; `requires` says
which versions the build was made with, for whoever builds the next base image.

    haodian ota build --version 1.5.0 --out dist/agent-1.5.0.zip      # from this checkout
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Awaitable, Callable, Iterator
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from edge_agent.errors import AgentError
from firmware_protocols.ota import Version

BUILD_FILE = "haodian-build.json"
STAMP_FILE = "BUILD.json"  # inside edge_agent/: how the running code knows its own build
FORMAT = "haodian-agent/1"
PACKAGES = ("edge_agent", "firmware_protocols", "mqtt_link")
APP_DIR = "app"
# The libraries the agent imports, from the base system.
LIBRARIES = ("pydantic", "httpx", "cryptography", "structlog", "aiomqtt", "pyserial")
# A fixed time for every entry: the same sources make the same bytes.
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


class BuildError(AgentError):
    """Not an agent build, or not the one its manifest names: it must not be installed."""


class BuildManifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    format: str
    version: str
    build_id: str
    python: str
    requires: dict[str, str] = {}
    files: int


def build_agent(source: Path, version: str, out: Path) -> BuildManifest:
    """Write the build of the packages under `source` (a checkout, or site-packages) as `version`
    to `out`."""
    Version(version)  # a malformed version is refused before anything is written
    files = sorted(_sources(source))
    if not files:
        raise BuildError(f"no agent packages ({', '.join(PACKAGES)}) under {source}")
    digest = hashlib.sha256()
    for name, path in files:
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    manifest = BuildManifest(
        format=FORMAT,
        version=version,
        build_id=digest.hexdigest()[:16],
        python="3.11",
        requires={lib: _installed(lib) for lib in LIBRARIES},
        files=len(files),
    )
    stamp = json.dumps(manifest.model_dump(), indent=1).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        _add(archive, BUILD_FILE, stamp)
        _add(archive, f"edge_agent/{STAMP_FILE}", stamp)
        for name, path in files:
            _add(archive, name, path.read_bytes())
    tmp.replace(out)
    return manifest


def read_build(artifact: Path, version: str | None = None) -> BuildManifest:
    """The build manifest of `artifact` (of `version`, if given), or BuildError if it is not an
    agent build (of that version), or a name in it would land outside its slot."""
    try:
        with zipfile.ZipFile(artifact) as archive:
            data = json.loads(archive.read(BUILD_FILE))
            for name in archive.namelist():
                _safe_name(name)
        manifest = BuildManifest.model_validate(data)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, ValidationError) as exc:
        raise BuildError(f"not an agent build ({type(exc).__name__}: {str(exc)[:80]})") from exc
    if manifest.format != FORMAT:
        raise BuildError(f"build format {manifest.format!r}, this device runs {FORMAT!r}")
    if version is not None and manifest.version != version:
        raise BuildError(f"the artifact is a build of {manifest.version}; the manifest says {version}")
    return manifest


async def unpack(artifact: Path, folder: Path, on_file: Callable[[int], Awaitable[None]] | None = None) -> int:
    """Unpack the build `artifact` into `folder` (made empty by the caller), each file on the
    flash before this returns; `on_file(bytes so far)` after each. Returns the bytes written."""
    written = 0
    with zipfile.ZipFile(artifact) as archive:
        members = [(info, folder / _safe_name(info.filename)) for info in archive.infolist()]  # all, first
        for info, target in members:
            if info.is_dir():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, target.open("wb") as out:
                while chunk := source.read(64 * 1024):
                    out.write(chunk)
                    written += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            if on_file is not None:
                await on_file(written)
    _sync_folders(folder)
    return written


def running_build() -> dict[str, Any] | None:
    """The build the running code came from (its `BUILD.json`), or None for an installed package."""
    try:
        data = json.loads((Path(__file__).parent.parent / STAMP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _sync_folders(folder: Path) -> None:
    """Every folder's entries on the flash, deepest first."""
    for path in sorted({p for p in folder.rglob("*") if p.is_dir()} | {folder}, reverse=True):
        handle = os.open(path, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def _sources(root: Path) -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        base = root / package
        if not (base / "__init__.py").is_file():
            continue
        for path in base.rglob("*"):
            relative = path.relative_to(root)
            if not path.is_file() or "__pycache__" in relative.parts or path.suffix in (".pyc", ".pyo"):
                continue
            if relative.name == STAMP_FILE and relative.parent.name == "edge_agent":
                continue  # a build made from a build: the new stamp replaces the old
            yield relative.as_posix(), path


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def _safe_name(name: str) -> Path:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise BuildError(f"unsafe path in the build: {name!r}")
    return Path(*path.parts)


def _installed(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "?"
