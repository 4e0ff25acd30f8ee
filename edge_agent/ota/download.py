"""A resumable, throttled download of one artifact over HTTP(S).

    await download(client, url, dest, size=manifest.size, etag=f'"{manifest.sha256}"', max_rate_bps=...)

What is already in `dest` is kept: the request asks for the rest (`Range: bytes=N-`) and only if
the server's copy is still the same artifact (`If-Range` with its ETag, the SHA-256), so a cut at
any byte costs only the bytes after it, across reconnects and restarts. A server that answers
200 instead of 206 (no ranges, or another artifact) is read from the start. The throttle keeps
the average rate under `max_rate_bps`, so an update never starves announcements on a thin 4G
link. Network failures raise `httpx.TransportError` (the caller retries); an answer that can
never succeed (404, a wrong length) raises `DownloadRefused`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from edge_agent.errors import AgentError

CHUNK_BYTES = 16 * 1024


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
            started = time.monotonic()
            try:
                async for chunk in response.aiter_bytes(CHUNK_BYTES):
                    out.write(chunk)
                    got += len(chunk)
                    if on_progress is not None:
                        await on_progress(have + got)
                    ahead = got / max_rate_bps - (time.monotonic() - started) if max_rate_bps else 0
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            finally:
                # What arrived stays, on the flash, for the next attempt to resume after.
                out.flush()
                os.fsync(out.fileno())
    if have + got != size:
        raise httpx.RemoteProtocolError(f"{url}: connection ended after {have + got} of {size} bytes")


def _resume_point(dest: Path, size: int) -> int:
    have = dest.stat().st_size if dest.exists() else 0
    if have > size:  # not a prefix of this artifact
        dest.unlink()
        return 0
    return have


def _start_of(response: httpx.Response, url: str, dest: Path, have: int, size: int) -> int:
    """Where the body of `response` starts in the artifact, or raise why it cannot be used."""
    if response.status_code == 416:  # nothing after `have`: the file on disk is not ours
        dest.unlink(missing_ok=True)
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
