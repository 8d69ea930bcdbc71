"""The message store: each accepted message's raw bytes, kept until its state no longer needs
them. One interface (``MessageStore``), two backends chosen by ``store.backend``:

- ``DirectoryStore`` (``local``, the default): one file per message under ``spool_dir``. A write
  goes to a temporary file in the same directory, is fsynced, renamed into place and the
  directory fsynced, so a file either exists whole or not at all, and survives a power cut once
  ``write`` returns. Writes run on a pool of threads of their own (``_writer_pool``), so every
  write in flight has its fsyncs running at once and the file system's journal commits them
  together. Files are spread over 256 subdirectories by the id's last two characters
  (the random part of the ULID) so no directory grows too large. A temporary file is named after
  the host and process writing it, so that a process starting up can tell the leftovers of a
  dead one on its own host from a write in progress elsewhere.
- ``S3Store`` (``s3``, ``moat/s3store.py``): one object per message in an S3-compatible bucket,
  for hosts (Kubernetes pods) that share no disk. ``write`` returns once the PUT has completed,
  which S3 answers only after the object is stored durably; an object exists whole or not at
  all, so there are no temporary leftovers.

Both keep the ``write`` promise ingress relies on: durable before the 250. A copy lives as long
as its message's state needs it (``lifecycle.NO_COPY_NEEDED``): delivery removes it once a
message is delivered or bounced, retention (``moat/retention.py``) when quarantined mail is
purged, and cleans up what crashes left behind. A missing copy is ``FileNotFoundError`` from
every backend; a store that cannot be reached is an ``OSError`` (``StoreUnavailable``), an
outage to the services (``moat.services.is_outage``).
"""

from __future__ import annotations

import abc
import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from moat.settings import Settings

INLINE_READ_LIMIT = 256 * 1024
_CHUNK = 64 * 1024
_SUFFIX = ".eml"
_TEMPORARY = ".tmp"
_HOST = socket.gethostname().replace("/", "_")


class StoreUnavailable(OSError):
    """The store could not be reached or refused the operation (not: the copy is missing)."""


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class Copy:
    """An open raw copy: opened before it is streamed, so a delete meanwhile cannot cut it
    (a file stays readable once open; an S3 GET that has begun is answered whole)."""

    def __init__(self, handle: Readable, size: int) -> None:
        self.handle = handle
        self.size = size

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while chunk := await asyncio.to_thread(self.handle.read, _CHUNK):
                yield chunk
        finally:
            self.handle.close()

    async def read_all(self) -> bytes:
        try:
            return await asyncio.to_thread(self.handle.read)
        finally:
            self.handle.close()


def check_id(message_id: str) -> str:
    if not message_id.isalnum():
        raise ValueError(f"not a message id: {message_id!r}")
    return message_id


class MessageStore(abc.ABC):
    """Where raw messages are kept. Every service reads, writes, removes and lists copies
    through this interface only."""

    @abc.abstractmethod
    async def write(self, message_id: str, data: bytes) -> None:
        """Store ``data`` durably: once this returns, the copy survives a crash."""

    @abc.abstractmethod
    async def read(self, message_id: str) -> bytes:
        """The whole copy; ``FileNotFoundError`` if there is none."""

    @abc.abstractmethod
    async def head(self, message_id: str, size: int) -> bytes:
        """The first ``size`` bytes of the copy (enough for its header)."""

    @abc.abstractmethod
    async def open(self, message_id: str) -> Copy:
        """The copy, opened for streaming; ``FileNotFoundError`` if there is none."""

    @abc.abstractmethod
    async def exists(self, message_id: str) -> bool: ...

    @abc.abstractmethod
    async def delete(self, message_id: str) -> None:
        """Remove the copy; removing one that is gone is no error."""

    @abc.abstractmethod
    def free_bytes(self) -> int:
        """Bytes free for us in the store (ingress refuses MAIL below ``spool_min_free``)."""

    @abc.abstractmethod
    def stored(self) -> Iterator[tuple[str, float]]:
        """Every message in the store: its id and the time its copy was written (blocking:
        call it in a thread)."""

    @abc.abstractmethod
    def sweep_temporary(self, older_than: float) -> int:
        """Remove what interrupted writes left behind (blocking); returns how many."""


class DirectoryStore(MessageStore):
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, message_id: str) -> Path:
        check_id(message_id)
        return self.root / message_id[-2:].lower() / f"{message_id}{_SUFFIX}"

    async def write(self, message_id: str, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(_writer_pool(), self._write, message_id, data)

    async def read(self, message_id: str) -> bytes:
        path = self.path(message_id)
        fd = _open_for_reading(path)
        try:
            size = os.fstat(fd).st_size
            if size <= INLINE_READ_LIMIT:
                return _read_all(fd, size)  # from the page cache: cheaper than a thread hop
        finally:
            os.close(fd)
        # A big one in a thread, opened there again: a cancelled wait must not close a
        # descriptor the thread still reads.
        return await asyncio.to_thread(_read_file, path)

    async def head(self, message_id: str, size: int) -> bytes:
        def read() -> bytes:
            with self.path(message_id).open("rb") as file:
                return file.read(size)

        return await asyncio.to_thread(read)

    async def open(self, message_id: str) -> Copy:
        handle = await asyncio.to_thread(open, self.path(message_id), "rb")
        return Copy(handle, os.fstat(handle.fileno()).st_size)

    async def exists(self, message_id: str) -> bool:
        return self.path(message_id).exists()

    async def delete(self, message_id: str) -> None:
        # On the event loop: an unlink on a local file system takes microseconds, a hop to a
        # thread and back cost more than that in context switches (docs/performance.md).
        self.path(message_id).unlink(missing_ok=True)

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
        # Asked at every MAIL: a mkdir each time was 7% of ingress's profile (docs/performance.md).
        try:
            stat = os.statvfs(self.root)
        except FileNotFoundError:
            self.root.mkdir(parents=True, exist_ok=True)
            stat = os.statvfs(self.root)
        return stat.f_bavail * stat.f_frsize

    def stored(self) -> Iterator[tuple[str, float]]:
        for path in self._files("*" + _SUFFIX):
            try:
                yield path.name.removesuffix(_SUFFIX), path.stat().st_mtime
            except FileNotFoundError:
                continue

    def sweep_temporary(self, older_than: float) -> int:
        """Temporary files of processes of this host that are gone, and any older than
        ``older_than`` seconds (no write takes that long; a younger one of another host may be
        a write in progress)."""
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


# Writes in flight at once. The group commit is the file system's: on ext4 and XFS, fsyncs that
# run concurrently share one journal commit (the journal thread commits everything pending),
# so N writes in flight cost about two commits (the files, then the directories), not 2N.
# That needs them to be in flight together: on the default executor (min(32, cores + 4)
# threads: 6 on 2 cores, shared with the database's transactions and file reads) they queued
# behind each other and behind the database. 32 covers the sessions a busy ingress holds
# at once; a thread costs only its stack while idle. docs/performance.md, "Time to 250",
# has the measurements, and those of a single flusher thread that fsynced a batch one file
# after the other (5x slower here: the journal commits each fsync on its own then).
WRITER_THREADS = 32
_WRITER_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _writer_pool() -> ThreadPoolExecutor:
    """The process's pool for spool writes (made again in a child made by fork: the parent's
    threads did not come along)."""
    global _WRITER_POOL
    if _WRITER_POOL is None or _WRITER_POOL[0] != os.getpid():
        _WRITER_POOL = (
            os.getpid(),
            ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="spool-write"),
        )
    return _WRITER_POOL[1]


# The scanner and delivery each read every message once, soon after ingress wrote it: with
# the default ``relatime`` the first read of a file updates its access time, a metadata write
# per read (and per process) that nothing here uses. O_NOATIME is allowed to the file's owner,
# which the services are (they share the spool's user); anyone else gets EPERM, and a plain
# open then.
_NOATIME = getattr(os, "O_NOATIME", 0)


def _open_for_reading(path: Path) -> int:
    if _NOATIME:
        try:
            return os.open(path, os.O_RDONLY | _NOATIME)
        except PermissionError:
            pass
    return os.open(path, os.O_RDONLY)


def _read_all(fd: int, size: int) -> bytes:
    """Everything from ``fd`` on: usually one read of the ``size`` fstat gave, then the empty
    read that says the end."""
    chunks: list[bytes] = []
    while chunk := os.read(fd, size + 1 if not chunks else _CHUNK):
        chunks.append(chunk)
    return b"".join(chunks)


def _read_file(path: Path) -> bytes:
    fd = _open_for_reading(path)
    try:
        return _read_all(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


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


def open_store(settings: Settings) -> MessageStore:
    """The store ``settings.store.backend`` names: built once in a service's ``main``."""
    if settings.store.backend == "s3":
        from moat.s3store import S3Store  # boto3 is imported only where it is used

        return S3Store(settings.store.s3)
    return DirectoryStore(settings.spool_dir)
