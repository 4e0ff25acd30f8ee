"""Release artifacts on disk: files named by their SHA-256 under the artifacts folder
(content-addressed: the same bytes are stored once, and the name is the ETag).

An upload is streamed into a neighbour file, digested as it comes, and kept only if its size and
SHA-256 are the manifest's; the blocking writes and the fsync run on a worker thread, so a slow
disk never holds the event loop (and with it every request and device message of the process).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from fleet_server.errors import OtaError


class ArtifactFiles:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, sha256: str) -> Path | None:
        """The stored artifact with this digest, or None (also for anything not a digest)."""
        path = self.folder / sha256
        return path if len(sha256) == 64 and all(c in "0123456789abcdef" for c in sha256) and path.is_file() else None

    async def store(self, chunks: AsyncIterator[bytes], *, size: int, sha256: str) -> None:
        """Take a streamed artifact; keep it under its digest only if it is exactly `size` bytes
        with SHA-256 `sha256`, else `OtaError` ARTIFACT_MISMATCH and nothing is kept."""
        await asyncio.to_thread(self.folder.mkdir, parents=True, exist_ok=True)
        partial = self.folder / f".upload-{uuid.uuid4().hex}"
        digest, received = hashlib.sha256(), 0
        out = await asyncio.to_thread(partial.open, "wb")
        try:
            try:
                async for chunk in chunks:
                    received += len(chunk)
                    if received > size:
                        raise OtaError(
                            "ARTIFACT_MISMATCH",
                            f"artifact is larger than the manifest's {size} bytes",
                            f"文件大于清单中的 {size} 字节",
                        )
                    digest.update(chunk)
                    await asyncio.to_thread(out.write, chunk)
                await asyncio.to_thread(_flush_durably, out)
            finally:
                await asyncio.to_thread(out.close)
            if received != size or digest.hexdigest() != sha256:
                raise OtaError(
                    "ARTIFACT_MISMATCH",
                    f"artifact is {received} bytes with SHA-256 {digest.hexdigest()}; "
                    f"the manifest says {size} bytes, {sha256}",
                    f"文件与清单不符（大小 {received}，SHA-256 {digest.hexdigest()[:12]}…）",
                )
            await asyncio.to_thread(partial.replace, self.folder / sha256)
        finally:
            await asyncio.to_thread(partial.unlink, missing_ok=True)


def _flush_durably(out: BinaryIO) -> None:
    out.flush()
    os.fsync(out.fileno())
