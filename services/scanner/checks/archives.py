"""Opening archives safely: zip, 7z, rar, tar, gzip, bzip2 and xz, one level at a time, under
limits.

Nothing here trusts a declared size. A zip bomb is recognised from the archive's own metadata
(entry count, declared sizes and ratios, overlapping entries) before a byte is inflated; every
decompression then reads at most what is left of the message's byte budget, plus one byte to
tell "exactly full" from "too much". The caller recurses (and counts the depth).

rar is the one format whose decompression is not Python's: ``rarfile`` parses its headers
(pure Python) and reads stored members itself, and runs an external unpacker, ``unar``, for
compressed ones, in a subprocess bounded in time, memory and output.
"""

from __future__ import annotations

import bz2
import contextlib
import io
import itertools
import lzma
import math
import resource
import struct
import subprocess
import tarfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import py7zr
import py7zr.exceptions
import py7zr.helpers
import py7zr.io
import py7zr.py7zr
import rarfile  # type: ignore[import-untyped]  # ships no type hints

# A zip local file header is 30 bytes before its name and extra field.
_LOCAL_HEADER = 30


@dataclass(frozen=True)
class Limits:
    max_entries: int  # members looked at per message
    max_total_uncompressed: int  # bytes decompressed per message
    max_ratio: float  # uncompressed / compressed, above which a large member is a bomb
    bomb_min_size: int  # the ratio rule applies from this many uncompressed bytes
    # Seconds external unpackers (unar, for rar) may run per message, all runs together; the
    # check sets TOOL_SHARE of scanner.check_timeout, so a slow archive is a finding, not a retry.
    tool_seconds: float = 15.0


# Of the check's time budget (``scanner.check_timeout``), the part external unpackers may use:
# the rest is for the check's own work and the verdict.
TOOL_SHARE = 0.75


class Budget:
    """What is left for one message: members to look at, bytes to decompress, and seconds of
    external unpackers."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.entries = limits.max_entries
        self.bytes = limits.max_total_uncompressed
        self.tool_seconds = limits.tool_seconds

    def take_entry(self, where: str) -> None:
        if self.entries <= 0:
            raise LimitExceeded(f"{where}: more than {self.limits.max_entries} archive members")
        self.entries -= 1

    def take_bytes(self, where: str, count: int) -> None:
        if count > self.bytes:
            raise LimitExceeded(
                f"{where}: more than {self.limits.max_total_uncompressed} bytes uncompressed"
            )
        self.bytes -= count

    def cap(self) -> int:
        """How much one read may return: one byte over the budget reveals an overrun."""
        return self.bytes + 1


class ArchiveProblem(Exception):
    """The archive cannot be looked into completely; the message says where and why."""


class Bomb(ArchiveProblem):
    """The archive's own metadata says it would expand out of all proportion."""


class LimitExceeded(ArchiveProblem):
    """Opening the archive further would pass a limit: it cannot be scanned completely."""


class Corrupt(ArchiveProblem):
    """The archive cannot be read: truncated, malformed or an unsupported method."""


class Opaque(ArchiveProblem):
    """The archive's directory was read (its members were looked at by name) but some contents
    could not be extracted: no unpacker installed, or they are in another volume."""


@dataclass(frozen=True)
class Member:
    name: str
    data: bytes | None  # None: encrypted, only the name is known
    encrypted: bool = False


def _is_bomb(uncompressed: int, compressed: int, limits: Limits) -> bool:
    return uncompressed >= limits.bomb_min_size and uncompressed > limits.max_ratio * max(
        compressed, 1
    )


# --- zip ---------------------------------------------------------------------------------------


def open_zip(data: bytes, where: str, limits: Limits) -> zipfile.ZipFile:
    """Read the central directory only (no member is inflated). An end record declaring ten
    times more entries than the limit is a bomb before the directory is even parsed."""
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - 65_557))
    if end >= 0 and len(data) >= end + 12:
        (entries,) = struct.unpack("<H", data[end + 10 : end + 12])
        if entries != 0xFFFF and entries > 10 * limits.max_entries:
            raise Bomb(f"{where}: {entries} entries (limit {limits.max_entries})")
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as exc:
        raise Corrupt(f"{where}: unreadable zip ({exc})") from exc
    except (NotImplementedError, RuntimeError, struct.error, UnicodeDecodeError) as exc:
        raise Corrupt(f"{where}: unreadable zip ({type(exc).__name__})") from exc


def check_zip_metadata(
    archive: zipfile.ZipFile, size: int, where: str, limits: Limits, only: str | None = None
) -> None:
    """Raise ``Bomb`` (or ``LimitExceeded``) from the central directory alone. ``only``: the
    members that will be opened (as in ``zip_members``); the others are counted in no limit
    but must not overlap either."""
    every = archive.infolist()
    infos = [i for i in every if only is None or only in i.filename.lower()]
    if len(infos) > limits.max_entries:
        raise Bomb(f"{where}: {len(infos)} entries (limit {limits.max_entries})")
    declared = 0
    for info in infos:
        declared += info.file_size
        if _is_bomb(info.file_size, info.compress_size, limits):
            raise Bomb(
                f"{where}: {info.filename!r} declares {info.file_size} bytes from "
                f"{info.compress_size} (ratio over {limits.max_ratio:g})"
            )
    if _is_bomb(declared, size, limits):
        raise Bomb(
            f"{where}: declares {declared} bytes from {size} (ratio over {limits.max_ratio:g})"
        )
    if declared > limits.max_total_uncompressed:
        raise LimitExceeded(
            f"{where}: declares {declared} bytes uncompressed "
            f"(limit {limits.max_total_uncompressed})"
        )
    # Overlapping entries (several central records sharing local data) inflate one stream
    # many times over: the "non-recursive zip bomb". Each local record takes at least its
    # header and its compressed data; the next must start after that.
    spans = sorted((info.header_offset, info.compress_size, info.filename) for info in every)
    for (offset, length, name), (next_offset, _, next_name) in itertools.pairwise(spans):
        if next_offset < offset + _LOCAL_HEADER + length:
            raise Bomb(f"{where}: entries {name!r} and {next_name!r} overlap")


def zip_members(
    archive: zipfile.ZipFile, where: str, budget: Budget, only: str | None = None
) -> Iterator[Member]:
    """Every file member, inflated with bounded reads. ``only``: a name fragment that selects
    members (e.g. ``/embeddings/`` in an Office document)."""
    for info in archive.infolist():
        if info.is_dir() or (only is not None and only not in info.filename.lower()):
            continue
        budget.take_entry(where)
        if info.flag_bits & 0x1:
            yield Member(info.filename, None, encrypted=True)
            continue
        try:
            with archive.open(info) as stream:
                content = stream.read(budget.cap())
        except (
            zipfile.BadZipFile,
            ValueError,
            OSError,
            EOFError,
            zlib.error,
            lzma.LZMAError,
        ) as exc:
            raise Corrupt(f"{where}: {info.filename!r} unreadable ({exc})") from exc
        except (NotImplementedError, RuntimeError, struct.error) as exc:
            # RuntimeError: zipfile's "encrypted, password required" for other flags.
            raise Corrupt(f"{where}: {info.filename!r} unreadable ({exc})") from exc
        budget.take_bytes(where, len(content))
        yield Member(info.filename, content)


# --- tar ---------------------------------------------------------------------------------------


def tar_members(data: bytes, where: str, budget: Budget) -> Iterator[Member]:
    """Regular files of an uncompressed tar; headers read one at a time (stops at the limit)."""
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:")  # noqa: SIM115 closed below
    except (tarfile.TarError, ValueError, OSError, EOFError, UnicodeDecodeError) as exc:
        raise Corrupt(f"{where}: unreadable tar ({exc})") from exc
    with archive:
        while True:
            try:
                info = archive.next()
            except (tarfile.TarError, ValueError, OSError, EOFError, UnicodeDecodeError) as exc:
                raise Corrupt(f"{where}: unreadable tar ({exc})") from exc
            if info is None:
                return
            budget.take_entry(where)
            if not info.isfile():
                continue
            if info.size > budget.bytes:  # sparse members can declare far more than they hold
                budget.take_bytes(where, info.size)
            try:
                stream = archive.extractfile(info)
                content = stream.read(budget.cap()) if stream is not None else b""
            except (tarfile.TarError, ValueError, OSError, EOFError) as exc:
                raise Corrupt(f"{where}: {info.name!r} unreadable ({exc})") from exc
            budget.take_bytes(where, len(content))
            yield Member(info.name, content)


# --- 7z ----------------------------------------------------------------------------------------


class Encrypted(ArchiveProblem):
    """The archive's directory itself is encrypted: not even its member names can be read."""


# What an archive library's parser lets through on malformed input, besides its own errors.
_PARSER_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    OSError,
    EOFError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    NotImplementedError,
    RuntimeError,
    struct.error,
    UnicodeDecodeError,
    zlib.error,
)
# What py7zr raises on a malformed archive.
_7Z_ERRORS: tuple[type[Exception], ...] = (
    py7zr.exceptions.ArchiveError,
    py7zr.exceptions.AbsolutePathError,
    lzma.LZMAError,
    *_PARSER_ERRORS,
)


def sevenzip_members(data: bytes, where: str, budget: Budget) -> Iterator[Member]:
    """Every file member of a 7z archive. The header is read first and its declared sizes are
    checked (entry count, ratio per file, per solid block and overall, the byte budget) before
    anything is decompressed; decompression then writes into capped in-memory buffers and stops
    at the first byte over the budget, whatever the header declared. Before py7zr reads the
    header at all, ``check_7z_header`` bounds what reading it can cost."""
    limits = budget.limits
    check_7z_header(data, where)
    try:
        archive = py7zr.SevenZipFile(io.BytesIO(data), mode="r")
    except py7zr.exceptions.PasswordRequired as exc:
        raise Encrypted(f"{where}: encrypted 7z (member names hidden)") from exc
    except _7Z_ERRORS as exc:
        raise Corrupt(f"{where}: unreadable 7z ({exc or type(exc).__name__})") from exc
    with archive:
        entries = list(archive.files)
        if len(entries) > limits.max_entries:
            raise Bomb(f"{where}: {len(entries)} entries (limit {limits.max_entries})")
        _check_7z_sizes(entries, len(data), where, limits)
        files = [e for e in entries if not (e.is_directory or e.is_socket)]
        if archive.needs_password():
            for entry in files:
                budget.take_entry(where)
                yield Member(entry.filename, None, encrypted=True)
            return
        declared = sum(e.uncompressed or 0 for e in files)
        if declared > budget.bytes:
            raise LimitExceeded(
                f"{where}: declares {declared} bytes uncompressed "
                f"(limit {limits.max_total_uncompressed})"
            )
        for _ in files:
            budget.take_entry(where)
        # Every byte decompressed counts (py7zr also decompresses what it only verifies), and
        # what is written is capped: one byte over the budget stops the extraction.
        archive.max_extract_size = budget.bytes
        factory = _CappedFactory(budget.cap())
        try:
            archive.extractall(factory=factory)
        except _Overrun as exc:
            raise LimitExceeded(
                f"{where}: more than {limits.max_total_uncompressed} bytes uncompressed"
            ) from exc
        except py7zr.exceptions.DecompressionBombError as exc:
            raise LimitExceeded(
                f"{where}: more than {limits.max_total_uncompressed} bytes uncompressed"
            ) from exc
        except py7zr.exceptions.PasswordRequired as exc:
            raise Encrypted(f"{where}: encrypted 7z content") from exc
        except _7Z_ERRORS as exc:
            raise Corrupt(f"{where}: unreadable 7z ({exc or type(exc).__name__})") from exc
    names = _7z_output_names(files)
    if len(factory.products) != len(files) or set(factory.products) != set(names):
        raise Corrupt(f"{where}: unreadable 7z (members and directory disagree)")
    for key, product in factory.products.items():
        content = product.getvalue()
        budget.take_bytes(where, len(content))
        yield Member(names[key], content)


# py7zr reads (and, for an encoded header, decompresses) the whole header before any of our
# checks sees it; these bound that work first. 1,000 entries (max_entries) take about 150 KB of
# header; 7-Zip compresses headers with LZMA, so the decoded size is the one that costs.
MAX_7Z_HEADER = 1 << 20  # bytes of header as stored
MAX_7Z_DECODED_HEADER = 16 << 20  # bytes an encoded header declares it decodes to
_7Z_SIGNATURE = b"7z\xbc\xaf\x27\x1c"


def check_7z_header(data: bytes, where: str) -> None:
    """Read the 32-byte signature header (magic, version, start-header CRC, next-header offset,
    size and CRC) and refuse before py7zr runs: a next header outside the data or failing its
    CRC (``Corrupt``), larger than ``MAX_7Z_HEADER``, or encoded (kEncodedHeader, 0x17) with
    folders declaring more than ``MAX_7Z_DECODED_HEADER`` bytes decoded (``LimitExceeded``)."""
    if len(data) < 32 or data[:6] != _7Z_SIGNATURE:
        raise Corrupt(f"{where}: unreadable 7z (no signature header)")
    start_crc, offset, size, header_crc = struct.unpack_from("<IQQI", data, 8)
    if zlib.crc32(data[12:32]) != start_crc:
        raise Corrupt(f"{where}: unreadable 7z (bad signature header CRC)")
    begin = 32 + offset
    if begin > len(data) or size > len(data) - begin:
        raise Corrupt(
            f"{where}: unreadable 7z (its header, {size} bytes at {begin}, lies outside the "
            f"{len(data)} bytes)"
        )
    if size > MAX_7Z_HEADER:
        raise LimitExceeded(f"{where}: a 7z header of {size} bytes (limit {MAX_7Z_HEADER})")
    header = data[begin : begin + size]
    if zlib.crc32(header) != header_crc:
        raise Corrupt(f"{where}: unreadable 7z (bad header CRC)")
    if header[:1] == b"\x17":  # kEncodedHeader: StreamsInfo of the packed header follows
        declared = _encoded_header_size(_7zReader(header, 1, where))
        if declared > MAX_7Z_DECODED_HEADER:
            raise LimitExceeded(
                f"{where}: a 7z header declaring {declared} bytes decoded "
                f"(limit {MAX_7Z_DECODED_HEADER})"
            )


class _7zReader:
    """Bytes and 7z NUMBERs (a first byte whose leading one bits count the bytes that follow)
    from a header; running past its end is ``Corrupt``. Every loop over a declared count reads
    at least one byte an item, so a forged count ends at the header's end (at most 1 MiB)."""

    def __init__(self, data: bytes, position: int, where: str) -> None:
        self.data = data
        self.position = position
        self.where = where

    def take(self, count: int) -> bytes:
        if count > len(self.data) - self.position:
            raise Corrupt(f"{self.where}: unreadable 7z (truncated header)")
        chunk = self.data[self.position : self.position + count]
        self.position += count
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def number(self) -> int:
        first = self.byte()
        extra = 0
        while extra < 8 and first & (0x80 >> extra):
            extra += 1
        value = int.from_bytes(self.take(extra), "little")
        if extra < 8:
            value += (first & ((0x80 >> extra) - 1)) << (8 * extra)
        return value

    def expect(self, wanted: int, what: str) -> None:
        if self.byte() != wanted:
            raise Corrupt(f"{self.where}: unreadable 7z ({what} expected in the header)")

    def digests(self, count: int) -> None:
        defined = (
            count if self.byte() else sum(bin(b).count("1") for b in self.take(-(-count // 8)))
        )
        self.take(4 * defined)


def _encoded_header_size(reader: _7zReader) -> int:
    """The sum of every unpack size the encoded header's folders declare (as py7zr reads them:
    optional PackInfo 0x06, optional UnpackInfo 0x07, then SubStreamsInfo 0x08 or kEnd)."""
    property_id = reader.byte()
    if property_id == 0x06:  # PackInfo: pack position, stream count, sizes, CRCs
        reader.number()
        streams = reader.number()
        property_id = reader.byte()
        if property_id == 0x09:
            for _ in range(streams):
                reader.number()
            property_id = reader.byte()
            if property_id == 0x0A:
                reader.digests(streams)
                property_id = reader.byte()
        if property_id != 0x00:
            raise Corrupt(f"{reader.where}: unreadable 7z (end of PackInfo expected)")
        property_id = reader.byte()
    if property_id != 0x07:  # no UnpackInfo: nothing to decode (py7zr refuses it)
        return 0
    reader.expect(0x0B, "kFolder")
    folders = reader.number()
    reader.expect(0x00, "folders in the header")  # "external": not supported
    outputs = [_folder_outputs(reader) for _ in range(folders)]
    reader.expect(0x0C, "kCodersUnpackSize")
    return sum(reader.number() for count in outputs for _ in range(count))


def _folder_outputs(reader: _7zReader) -> int:
    """Skip one folder (its coders, bind pairs and packed streams); its output stream count."""
    inputs = outputs = 0
    for _ in range(reader.number()):
        flags = reader.byte()
        reader.take(flags & 0x0F)  # codec id
        if flags & 0x10:  # complex coder: stream counts
            inputs += reader.number()
            outputs += reader.number()
        else:
            inputs += 1
            outputs += 1
        if flags & 0x20:  # properties
            reader.take(reader.number())
    for _ in range(max(outputs - 1, 0)):  # bind pairs
        reader.number()
        reader.number()
    packed = inputs - max(outputs - 1, 0)
    if packed > 1:
        for _ in range(packed):
            reader.number()
    return outputs


def _7z_output_names(files: list[py7zr.py7zr.ArchiveFile]) -> dict[str, str]:
    """The name py7zr hands the writer factory for each member (sanitised, duplicates suffixed
    ``_0``, ``_1``...) mapped to the member's own name, as ``SevenZipFile._extract`` makes it.
    Members are created in extraction order (empty files first), not the directory's."""
    seen: dict[str, int] = {}
    names: dict[str, str] = {}
    for entry in files:
        if entry.filename in seen:
            output = f"{entry.filename}_{seen[entry.filename]}"
            seen[entry.filename] += 1
        else:
            output = entry.filename
            seen[entry.filename] = 0
        names[py7zr.helpers.get_sanitized_output_path(output, None).as_posix()] = entry.filename
    return names


def _check_declared_total(total: int, size: int, where: str, left: int, limits: Limits) -> None:
    """A whole archive's declared uncompressed size, against its own size (a bomb by ratio) and
    against the ``left`` bytes it may decompress."""
    if _is_bomb(total, size, limits):
        raise Bomb(f"{where}: declares {total} bytes from {size} (ratio over {limits.max_ratio:g})")
    if total > left:
        raise LimitExceeded(
            f"{where}: declares {total} bytes uncompressed (limit {limits.max_total_uncompressed})"
        )


def _check_7z_sizes(
    entries: list[py7zr.py7zr.ArchiveFile], size: int, where: str, limits: Limits
) -> None:
    """Ratios from the header alone: per file where its compressed size is known, per folder
    (a solid block: all its files come out of one stream), and for the whole archive."""
    folders: dict[int, tuple[int, int]] = {}  # id(folder) -> (declared, packed)
    total = 0
    for entry in entries:
        declared = entry.uncompressed or 0
        total += declared
        compressed = entry.compressed
        if compressed is not None and _is_bomb(declared, compressed, limits):
            raise Bomb(
                f"{where}: {entry.filename!r} declares {declared} bytes from {compressed} "
                f"(ratio over {limits.max_ratio:g})"
            )
        folder = entry.folder
        if folder is None:
            continue
        unpacked, packed = folders.get(id(folder), (0, 0))
        if compressed is not None:  # the first file of a folder carries the folder's packed size
            sizes = entry.file_properties().get("packsizes")  # every input stream (BCJ2: 4)
            packed += sum(sizes) if isinstance(sizes, list) and sizes else compressed
        folders[id(folder)] = (unpacked + declared, packed)
    for declared, packed in folders.values():
        if _is_bomb(declared, packed, limits):
            raise Bomb(
                f"{where}: a solid block declares {declared} bytes from {packed} "
                f"(ratio over {limits.max_ratio:g})"
            )
    _check_declared_total(total, size, where, limits.max_total_uncompressed, limits)


class _Overrun(Exception):
    """Raised from inside py7zr's extraction when the capped buffers are full."""


class _CappedWriter(py7zr.io.Py7zIO):
    """An in-memory member that refuses to grow past what is left of the shared cap."""

    def __init__(self, factory: _CappedFactory) -> None:
        self._factory = factory
        self._buffer = io.BytesIO()

    def write(self, s: bytes | bytearray) -> int:
        self._factory.left -= len(s)
        if self._factory.left < 0:
            raise _Overrun
        return self._buffer.write(s)

    def read(self, size: int | None = None) -> bytes:
        return self._buffer.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._buffer.seek(offset, whence)

    def flush(self) -> None:
        self._buffer.flush()

    def size(self) -> int:
        return self._buffer.getbuffer().nbytes

    def getvalue(self) -> bytes:
        return self._buffer.getvalue()


class _CappedFactory(py7zr.io.WriterFactory):
    """In-memory members by the name py7zr gives them, sharing one byte cap."""

    def __init__(self, cap: int) -> None:
        self.left = cap
        self.products: dict[str, _CappedWriter] = {}

    def create(self, filename: str) -> py7zr.io.Py7zIO:
        product = _CappedWriter(self)
        self.products[filename] = product
        return product


# --- rar ---------------------------------------------------------------------------------------

# The external unpacker for compressed members: unar (The Unarchiver; Debian's ``unar``, installed
# by ``make install``: scripts/ensure-rar-tool.sh). The only one in Debian main that rarfile
# drives for rar 2.9 ("rar4") and rar 5, every method, solid archives: Debian's 7-Zip is built
# without rar, unrar-free takes none of rarfile's options, and rarfile gives bsdtar a broken
# command line. The proprietary unrar is not used even where installed: one tool, the tested one.
RAR_TOOL = "unar"
# unar allocates the whole dictionary a member declares (RAR 5 allows 4 GiB: 4 GiB of memory and
# 11 s before one byte is written). WinRAR's default is 32 MiB (4 MiB for RAR 4).
MAX_RAR_DICTIONARY = 256 << 20
# A backstop on each unar run, set as it starts: address space (the dictionary plus unar's
# own ~100 MiB), and no file written (it writes to a pipe only).
_TOOL_MEMORY = 1 << 30
# What rarfile and the tool may raise on a malformed archive (its own errors, and what its
# parsers let through).
_RAR_ERRORS: tuple[type[Exception], ...] = (rarfile.Error, *_PARSER_ERRORS)
_RAR_SPLIT = rarfile.RAR_FILE_SPLIT_BEFORE | rarfile.RAR_FILE_SPLIT_AFTER


def rar_tool() -> bool:
    """Whether the unpacker runs (rarfile tries ``unar -version`` and remembers the answer once
    it is yes). Checked only when a compressed member needs it."""
    try:
        rarfile.tool_setup(unrar=False, unar=True, bsdtar=False, sevenzip=False, sevenzip2=False)
    except rarfile.RarCannotExec:
        return False
    return True


def rar_members(data: bytes, where: str, budget: Budget) -> Iterator[Member]:
    """Every file member of a rar archive (RAR 4 and RAR 5), judged from its headers before
    anything is extracted: entry count, each member's declared size against its packed size,
    the whole archive's, the byte budget, and each compressed member's dictionary. Encrypted
    members are named, not read; an encrypted directory is ``Encrypted``. Stored members are
    read by rarfile itself; compressed ones through unar, capped in bytes and time. Members that
    cannot be extracted (no unar; a split volume) are yielded by name only, then ``Opaque``."""
    limits = budget.limits
    headers = 0
    volume = False

    def count(header: Any) -> None:  # every header as rarfile parses it: bounds the parse
        nonlocal headers, volume
        headers += 1
        if headers > 10 * limits.max_entries:
            raise Bomb(f"{where}: more than {10 * limits.max_entries} rar headers")
        if header.type == rarfile.RAR_BLOCK_MAIN and header.flags & rarfile.RAR_MAIN_VOLUME:
            volume = True

    try:
        archive = rarfile.RarFile(
            io.BytesIO(data), errors="strict", part_only=True, info_callback=count
        )
        infos = list(archive.infolist())
        hidden = archive.needs_password() and not infos
    except _RAR_ERRORS as exc:
        raise Corrupt(f"{where}: unreadable rar ({exc or type(exc).__name__})") from exc
    if hidden:
        raise Encrypted(f"{where}: encrypted rar (member names hidden)")
    if len(infos) > limits.max_entries:
        raise Bomb(f"{where}: {len(infos)} entries (limit {limits.max_entries})")
    # Directories, links (their content is a path) and copies of another member are no files.
    files = [i for i in infos if i.is_file() and getattr(i, "file_redir", None) is None]
    _check_rar_headers(files, len(data), where, budget)
    not_extracted = ""
    for info in files:
        budget.take_entry(where)
        name = str(info.filename)
        if info.needs_password():
            yield Member(name, None, encrypted=True)
        elif volume or info.flags & _RAR_SPLIT:
            not_extracted = "part of a multi-volume rar, contents not extracted"
            yield Member(name, None)
        elif info.compress_type != rarfile.RAR_M0 and not rar_tool():
            not_extracted = f"contents not extracted: no rar tool installed ({RAR_TOOL})"
            yield Member(name, None)
        else:
            content = _read_rar_member(archive, info, where, budget)
            budget.take_bytes(where, len(content))
            yield Member(name, content)
    if not_extracted:
        raise Opaque(f"{where}: rar archive, {not_extracted}")


def _check_rar_headers(files: list[Any], size: int, where: str, budget: Budget) -> None:
    limits = budget.limits
    total = 0
    for info in files:
        declared, packed = int(info.file_size or 0), int(info.compress_size or 0)
        total += declared
        if getattr(info, "file_flags", 0) & rarfile.RAR5_FILE_FLAG_UNKNOWN_SIZE:
            # Unpackers then write all the data there is; rarfile reads the declared size only
            # (0 in a forged header), so what we would judge is not what the recipient gets.
            raise Corrupt(f"{where}: {info.filename!r} declares no size (unknown-size flag)")
        if _is_bomb(declared, packed, limits):
            raise Bomb(
                f"{where}: {info.filename!r} declares {declared} bytes from {packed} "
                f"(ratio over {limits.max_ratio:g})"
            )
        flags = getattr(info, "file_compress_flags", None)  # RAR 5: dictionary in bits 10-14
        if flags is not None and info.compress_type != rarfile.RAR_M0:
            dictionary = (128 << 10) << ((flags >> 10) & 0x1F)
            if dictionary > MAX_RAR_DICTIONARY and not info.needs_password():
                raise LimitExceeded(
                    f"{where}: {info.filename!r} needs a {dictionary >> 20} MiB dictionary "
                    f"(limit {MAX_RAR_DICTIONARY >> 20} MiB)"
                )
    _check_declared_total(total, size, where, budget.bytes, limits)


def _read_rar_member(archive: Any, info: Any, where: str, budget: Budget) -> bytes:
    """One member's bytes, read in steps and capped at the budget (rarfile also stops at the
    declared size and then checks the CRC, so a tool writing more or other bytes is caught).
    When unar runs (rarfile's ``PipeReader``), a watchdog kills it once the message's tool time
    is spent, and its memory and file writes are limited as it starts."""
    name = info.filename
    if info.compress_type != rarfile.RAR_M0 and budget.tool_seconds <= 0:
        raise LimitExceeded(
            f"{where}: {name!r}: the rar unpacker ran more than {budget.limits.tool_seconds:g} s"
        )
    started = time.monotonic()
    try:
        stream = archive.open(info)
    except _RAR_ERRORS as exc:
        raise Corrupt(f"{where}: {name!r} unreadable ({exc or type(exc).__name__})") from exc
    process = getattr(stream, "_proc", None)  # rarfile 4.5's PipeReader: the unpacker's process
    killed = threading.Event()
    watchdog = None
    if isinstance(process, subprocess.Popen):
        _limit_tool(process, budget.tool_seconds)
        watchdog = threading.Timer(max(budget.tool_seconds, 0.0), _kill, (process, killed))
        watchdog.daemon = True
        watchdog.start()
    chunks: list[bytes] = []
    produced = 0
    try:
        while produced <= budget.bytes:
            chunk: bytes = stream.read(min(_STEP, budget.cap() - produced))
            if not chunk:
                break
            chunks.append(chunk)
            produced += len(chunk)
    except _RAR_ERRORS as exc:
        if killed.is_set():
            raise LimitExceeded(
                f"{where}: {name!r}: the rar unpacker ran more than "
                f"{budget.limits.tool_seconds:g} s"
            ) from exc
        raise Corrupt(f"{where}: {name!r} unreadable ({exc or type(exc).__name__})") from exc
    finally:
        with contextlib.suppress(*_RAR_ERRORS):
            stream.close()  # waits for the unpacker: the watchdog is still armed
        if watchdog is not None:
            watchdog.cancel()
            budget.tool_seconds -= time.monotonic() - started
    if killed.is_set():
        raise LimitExceeded(
            f"{where}: {name!r}: the rar unpacker ran more than {budget.limits.tool_seconds:g} s"
        )
    return b"".join(chunks)


def _limit_tool(process: subprocess.Popen[Any], seconds: float) -> None:
    """Limit a running unpacker (it has only just started): address space, CPU seconds, and no
    file written. A process that is gone already needs no limit."""
    cpu = max(1, math.ceil(seconds) + 1)
    for limit, value in (
        (resource.RLIMIT_AS, _TOOL_MEMORY),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_FSIZE, 0),
    ):
        try:
            resource.prlimit(process.pid, limit, (value, value))
        except (OSError, ValueError):
            return


def _kill(process: subprocess.Popen[Any], killed: threading.Event) -> None:
    killed.set()
    with contextlib.suppress(OSError):
        process.kill()


# --- single-stream compressors -----------------------------------------------------------------


def gunzip(data: bytes, name: str, where: str, budget: Budget) -> Member:
    """A gzip file (all its concatenated members, as gunzip reads them). Its declared size
    (ISIZE, the last four bytes) is checked first; the real output is capped whatever it says."""
    if len(data) >= 18:
        (declared,) = struct.unpack("<I", data[-4:])
        if _is_bomb(declared, len(data), budget.limits):
            raise Bomb(f"{where}: declares {declared} bytes from {len(data)}")
    inner = _gzip_name(data) or _strip_suffix(name, {".gz": "", ".tgz": ".tar", ".z": ""})
    content = _inflate(data, lambda: _Zlib(16 + zlib.MAX_WBITS), "gzip", where, budget)
    return _finish(inner, content, where, budget)


def bunzip2(data: bytes, name: str, where: str, budget: Budget) -> Member:
    inner = _strip_suffix(name, {".bz2": "", ".tbz2": ".tar", ".tbz": ".tar"})
    return _finish(
        inner, _inflate(data, bz2.BZ2Decompressor, "bzip2", where, budget), where, budget
    )


def unxz(data: bytes, name: str, where: str, budget: Budget) -> Member:
    inner = _strip_suffix(name, {".xz": "", ".txz": ".tar"})
    return _finish(inner, _inflate(data, lzma.LZMADecompressor, "xz", where, budget), where, budget)


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...
    @property
    def needs_input(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...
    def decompress(self, data: bytes, max_length: int = ...) -> bytes: ...


class _Zlib:
    """zlib's decompressor with the bz2/lzma interface (``needs_input``)."""

    def __init__(self, wbits: int) -> None:
        self._inner = zlib.decompressobj(wbits)

    @property
    def eof(self) -> bool:
        return self._inner.eof

    @property
    def needs_input(self) -> bool:
        return not self._inner.unconsumed_tail

    @property
    def unused_data(self) -> bytes:
        return self._inner.unused_data

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:
        return self._inner.decompress(self._inner.unconsumed_tail + data, max_length)


# Input is fed in slices and output taken in steps, so the ratio so far is known at every step
# and a bomb is stopped after a few MiB, not at the end of the byte budget.
_FEED = 16 * 1024
_STEP = 1024 * 1024


def _inflate(
    data: bytes, new: Callable[[], _Decompressor], label: str, where: str, budget: Budget
) -> bytes:
    limits = budget.limits
    chunks: list[bytes] = []
    produced = consumed = position = 0
    decompressor = new()
    try:
        while produced <= budget.bytes:
            if decompressor.eof:
                # Concatenated streams are one file; zero padding between them is allowed.
                rest = (decompressor.unused_data + data[position:]).lstrip(b"\x00")
                if not rest:
                    break
                data, position, decompressor = rest, 0, new()
            if decompressor.needs_input:
                if position >= len(data):
                    break  # truncated: what was read is what there is
                feed = data[position : position + _FEED]
                position += len(feed)
                consumed += len(feed)
            else:
                feed = b""
            chunk = decompressor.decompress(feed, min(_STEP, budget.cap() - produced))
            chunks.append(chunk)
            produced += len(chunk)
            if _is_bomb(produced, consumed, limits):
                raise Bomb(
                    f"{where}: {produced} bytes from {consumed} (ratio over {limits.max_ratio:g})"
                )
    except (zlib.error, OSError, ValueError, EOFError, lzma.LZMAError) as exc:
        if not produced:
            raise Corrupt(f"{where}: unreadable {label} ({exc})") from exc
        # Garbage after a good stream: what was read is the file (gunzip warns the same way).
    if not produced and not decompressor.eof:
        raise Corrupt(f"{where}: truncated {label}")
    return b"".join(chunks)


def _finish(inner: str, content: bytes, where: str, budget: Budget) -> Member:
    budget.take_entry(where)
    budget.take_bytes(where, len(content))
    return Member(inner, content)


def _strip_suffix(name: str, suffixes: dict[str, str]) -> str:
    lowered = name.lower()
    for suffix, replacement in suffixes.items():
        if lowered.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)] + replacement
    return name


def _gzip_name(data: bytes) -> str | None:
    """The original file name stored in the gzip header (FNAME), if any."""
    if len(data) < 10 or not data[3] & 0x08:
        return None
    position = 10
    if data[3] & 0x04:  # FEXTRA: two-byte length, then the field
        if len(data) < 12:
            return None
        position += 2 + int.from_bytes(data[10:12], "little")
    end = data.find(b"\x00", position, position + 1024)
    if end <= position:
        return None
    return data[position:end].decode("latin-1")
