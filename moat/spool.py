"""The message store: each accepted message's raw bytes in one file under the spool directory.

A write goes to a temporary file in the same directory, is fsynced, renamed into place and the
directory fsynced, so a file either exists whole or not at all, and survives a power cut once
``write`` returns. Files are spread over 256 subdirectories by the id's last two characters (the
random part of the ULID) so no directory grows too large.

A file lives as long as its message's state needs it (``lifecycle.NO_COPY_NEEDED``): delivery
removes it once a message is delivered or bounced, retention (``moat/retention.py``) when
quarantined mail is purged, and cleans up what crashes left behind. A temporary file is named
after the host and process writing it, so that a process starting up can tell the leftovers of
a dead one on its own host from a write in progress elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

INLINE_READ_LIMIT = 256 * 1024
_SUFFIX = ".eml"
_TEMPORARY = ".tmp"
_HOST = socket.gethostname().replace("/", "_")


class MessageStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, message_id: str) -> Path:
        if not message_id.isalnum():
            raise ValueError(f"not a message id: {message_id!r}")
        return self.root / message_id[-2:].lower() / f"{message_id}{_SUFFIX}"

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
        temporary = final.with_name(f"{final.stem}{_TEMPORARY}-{_HOST}-{os.getpid()}")
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

    def free_bytes(self) -> int:
        """Bytes free for us on the spool's file system."""
        self.root.mkdir(parents=True, exist_ok=True)
        stat = os.statvfs(self.root)
        return stat.f_bavail * stat.f_frsize

    def stored(self) -> Iterator[tuple[str, float]]:
        """Every message in the spool: its id and the time its file was written."""
        for path in self._files("*" + _SUFFIX):
            try:
                yield path.name.removesuffix(_SUFFIX), path.stat().st_mtime
            except FileNotFoundError:
                continue

    def sweep_temporary(self, older_than: float) -> int:
        """Remove what interrupted writes left behind: temporary files of processes of this
        host that are gone, and any older than ``older_than`` seconds (no write takes that
        long; a younger one of another host may be a write in progress). Returns how many
        were removed."""
        cutoff = time.time() - older_than
        removed = 0
        for path in self._files(f"*{_TEMPORARY}*"):
            try:
                if path.stat().st_mtime <= cutoff or _writer_is_gone(path.name):
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def _files(self, pattern: str) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for directory in sorted(self.root.iterdir()):
            if directory.is_dir():
                yield from directory.glob(pattern)


def _writer_is_gone(name: str) -> bool:
    """Whether the temporary file ``name`` was written by a process of this host that no
    longer runs."""
    host, _, pid = name.partition(_TEMPORARY + "-")[2].rpartition("-")
    if host != _HOST or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False
