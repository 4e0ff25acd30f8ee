"""The byte buffer every serial decoder reads from: what has been fed, and where it sits in the stream."""

from __future__ import annotations

from firmware_protocols.errors import CodecError


class ByteStream:
    """Bytes fed but not yet decoded; `offset` is the stream position of the first of them."""

    __slots__ = ("_buf", "offset")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.offset = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def __len__(self) -> int:
        return len(self._buf)

    def __getitem__(self, index: int) -> int:
        return self._buf[index]

    def peek(self, size: int) -> bytes:
        return bytes(self._buf[:size])

    def find(self, byte: int, start: int = 0) -> int:
        return self._buf.find(bytes((byte,)), start)

    def take(self, size: int) -> bytes:
        """Remove and return the first `size` bytes."""
        out = bytes(self._buf[:size])
        del self._buf[:size]
        self.offset += len(out)
        return out

    def skip_to(self, byte: int, reason: str) -> CodecError:
        """Drop bytes up to the next `byte` (or all of them); return the error describing the skip."""
        at = self.offset
        found = self.find(byte, 1)
        skipped = len(self._buf) if found < 0 else found
        self.take(skipped)
        return CodecError(at, f"{reason}; skipped {skipped} byte(s) to resynchronise")
