"""The message store: each accepted message's raw bytes in one file under the spool directory.

A write goes to a temporary file in the same directory, is fsynced, renamed into place and the
directory fsynced, so a file either exists whole or not at all, and survives a power cut once
``write`` returns. Files are spread over 256 subdirectories by the id's last two characters (the
random part of the ULID) so no directory grows too large.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

INLINE_READ_LIMIT = 256 * 1024


class MessageStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, message_id: str) -> Path:
        if not message_id.isalnum():
            raise ValueError(f"not a message id: {message_id!r}")
        return self.root / message_id[-2:].lower() / f"{message_id}.eml"

    async def write(self, message_id: str, data: bytes) -> None:
        await asyncio.to_thread(self._write, message_id, data)

    async def read(self, message_id: str) -> bytes:
        path = self.path(message_id)
        if path.stat().st_size <= INLINE_READ_LIMIT:
            return path.read_bytes()  # from the page cache: cheaper than a hop to a thread
        return await asyncio.to_thread(path.read_bytes)

    async def delete(self, message_id: str) -> None:
        await asyncio.to_thread(self.path(message_id).unlink, True)

    def _write(self, message_id: str, data: bytes) -> None:
        final = self.path(message_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = final.with_suffix(f".tmp{os.getpid()}")
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        directory = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
