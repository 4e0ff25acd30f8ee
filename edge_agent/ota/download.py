"""A resumable, throttled download of one artifact over HTTP(S).

    await download(client, url, dest, size=manifest.size, etag=f'"{manifest.sha256}"', max_rate_bps=...)

What is already in `dest` and on the flash is kept: the request asks for the rest (`Range: bytes=N-`) and only if
the server's copy is still the same artifact (`If-Range` with its ETag, the SHA-256), so a cut at
any byte costs only the bytes after it, across reconnects and restarts. A server that answers
200 instead of 206 (no ranges, or another artifact) is read from the start. The throttle keeps
the average rate under `max_rate_bps`, so an update never starves announcements on a thin 4G
link. Network failures raise `httpx.TransportError` (the caller retries); an answer that can
never succeed (404, a wrong length) raises `DownloadRefused`.

The file is put on the flash as it grows (fsync every `SYNC_BYTES` or `SYNC_S`, whichever comes
first), and after each fsync `<dest>.synced` records how many bytes are there. A power cut keeps
what was synced and may leave anything after it (zeros, old blocks); the next attempt resumes
from the recorded length, not from the file's size, so what it appends follows bytes that are
truly the artifact's.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO

import httpx

from edge_agent.errors import AgentError
from edge_agent.state_files import write_atomically

CHUNK_BYTES = 16 * 1024
SYNC_BYTES = 256 * 1024
SYNC_S = 2.0


class DownloadRefused(AgentError):
    """The server's answer cannot give the artifact (not found, wrong size): retrying won't help."""


async def download(
    client: httpx.AsyncClient,
    url: str,
    dest: Path,
    *,
    size: int,
    etag: str,
    max_rate_bps: int | None = None,
    on_progress: Callable[[int], Awaitable[None]] | None = None,
) -> None:
    """Complete `dest` to `size` bytes from `url`; return when it has them all."""
    have = _resume_point(dest, size)
    if have == size:
        return
    headers = {"Range": f"bytes={have}-", "If-Range": etag}
    async with client.stream("GET", url, headers=headers) as response:
        have = _start_of(response, url, dest, have, size)
        got = 0
        with dest.open("r+b" if have else "wb") as out:
            out.seek(have)
            out.truncate()
            started = synced_at = time.monotonic()
            unsynced = 0
            try:
                async for chunk in response.aiter_bytes(CHUNK_BYTES):
                    out.write(chunk)
                    got += len(chunk)
                    unsynced += len(chunk)
                    if unsynced >= SYNC_BYTES or time.monotonic() - synced_at >= SYNC_S:
                        _sync(out, dest, have + got)
                        unsynced, synced_at = 0, time.monotonic()
                    if on_progress is not None:
                        await on_progress(have + got)
                    ahead = got / max_rate_bps - (time.monotonic() - started) if max_rate_bps else 0
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            finally:
                # What arrived stays, on the flash, for the next attempt to resume after.
                _sync(out, dest, have + got)
    if have + got != size:
        raise httpx.RemoteProtocolError(f"{url}: connection ended after {have + got} of {size} bytes")


def discard(dest: Path) -> None:
    """Remove a partial download and its record."""
    dest.unlink(missing_ok=True)
    _mark(dest).unlink(missing_ok=True)


def synced(dest: Path) -> int:
    """How many bytes of `dest` are recorded as on the flash (0: none, or no record)."""
    try:
        return max(int(_mark(dest).read_text(encoding="ascii")), 0)
    except (OSError, ValueError):
        return 0


def _mark(dest: Path) -> Path:
    return dest.with_name(dest.name + ".synced")


def _sync(out: IO[bytes], dest: Path, length: int) -> None:
    out.flush()
    os.fsync(out.fileno())
    write_atomically(_mark(dest), str(length).encode(), durable=True)


def _resume_point(dest: Path, size: int) -> int:
    have = min(dest.stat().st_size, synced(dest)) if dest.exists() else 0
    if have > size:  # not a prefix of this artifact
        discard(dest)
        return 0
    return have


def _start_of(response: httpx.Response, url: str, dest: Path, have: int, size: int) -> int:
    """Where the body of `response` starts in the artifact, or raise why it cannot be used."""
    if response.status_code == 416:  # nothing after `have`: the file on disk is not ours
        discard(dest)
        raise httpx.RemoteProtocolError(f"{url}: range {have}- not satisfiable; starting again")
    if response.status_code not in (200, 206):
        raise DownloadRefused(f"{url}: HTTP {response.status_code}")
    if response.status_code == 200:
        have = 0  # the whole artifact is coming
    elif not response.headers.get("content-range", "").startswith(f"bytes {have}-"):
        raise DownloadRefused(f"{url}: asked for bytes {have}-, got {response.headers.get('content-range')!r}")
    length = int(response.headers.get("content-length", size - have))
    if have + length != size:
        raise DownloadRefused(f"{url}: the server has {have + length} bytes, the manifest says {size}")
    return have
