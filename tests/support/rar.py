"""Small RAR archives for the tests, written by hand: there is no free RAR creator (``rar`` is
non-free and not in Debian), so the fixtures are built here from the format descriptions:

- RAR 4.x: "RAR version 4.x - Technical information" (``technote.txt``, shipped with RAR):
  7-byte marker ``Rar!\\x1a\\x07\\x00``, then blocks of HEAD_CRC (low 16 bits of the CRC32 of the
  header from HEAD_TYPE on), HEAD_TYPE, HEAD_FLAGS, HEAD_SIZE; the file header adds PACK_SIZE,
  UNP_SIZE, HOST_OS, FILE_CRC, FTIME, UNP_VER, METHOD (0x30 store ... 0x35 best), NAME_SIZE,
  ATTR, the name (and an 8-byte salt when encrypted).
- RAR 5.0: "RAR 5.0 archive format" (``technote.htm`` on rarlab.com): 8-byte signature
  ``Rar!\\x1a\\x07\\x01\\x00``, then blocks of CRC32, header size, type, flags (variable-length
  integers, "vint"), the file header's file flags, unpacked size, attributes, data CRC32,
  compression information (method in bits 7-9, solid 0x40, dictionary in bits 10-13), host OS
  and name; extra records (encryption: type 1); the archive encryption header (type 4) that
  hides every header after it.

Entries are stored (method 0), or, for RAR 5.0, really compressed: one LZ block that holds
only literals (``literal_block``), which is valid compressed data for any RAR 5 unpacker but is
never read by rarfile itself, so it goes through the external tool. Every field can be forged:
declared sizes, methods, encryption, header encryption, split volumes.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

RAR4_MARKER = b"Rar!\x1a\x07\x00"
RAR5_SIGNATURE = b"Rar!\x1a\x07\x01\x00"
# 2024-01-01 00:00 as an MS-DOS date and time (RAR 4 FTIME).
_DOS_TIME = ((2024 - 1980) << 9 | 1 << 5 | 1) << 16


@dataclass(frozen=True)
class Entry:
    name: str
    data: bytes = b""
    size: int | None = None  # the declared unpacked size (default: len(data))
    method: int = 0  # 0 store, 1-5 the compression levels
    packed: bytes | None = None  # the data area as written (default: data, or its LZ block)
    encrypted: bool = False
    directory: bool = False
    split: bool = False  # continued in the next volume
    dictionary: int = 0  # RAR 5: dictionary size, 128 KiB << this (0-15)
    unknown_size: bool = False  # RAR 5: the "unpacked size unknown" file flag


# --- RAR 4.x -----------------------------------------------------------------------------------


def _rar4_block(kind: int, flags: int, body: bytes) -> bytes:
    header = struct.pack("<BHH", kind, flags, 7 + len(body)) + body
    return struct.pack("<H", zlib.crc32(header) & 0xFFFF) + header


def rar4(entries: Iterable[Entry], *, solid: bool = False, header_encrypted: bool = False) -> bytes:
    """A RAR 4.x archive. A method other than store writes ``literal_block(data, rar4=True)``."""
    main_flags = (0x0008 if solid else 0) | (0x0080 if header_encrypted else 0)
    entries = list(entries)
    if any(e.split for e in entries):
        main_flags |= 0x0001 | 0x0010 | 0x0100  # volume, new numbering, first volume
    out = RAR4_MARKER + _rar4_block(0x73, main_flags, bytes(6))
    tables_read = False
    if header_encrypted:  # every later header is AES encrypted: salt, then ciphertext
        return out + os.urandom(8) + os.urandom(64)
    for index, entry in enumerate(entries):
        name = entry.name.replace("/", "\\").encode("utf-8")  # Win32 paths, as RAR writes them
        flags = 0x8000  # LONG_BLOCK: PACK_SIZE (ADD_SIZE) follows
        if not name.isascii():
            flags |= 0x0200  # UTF-8 name
        if entry.encrypted:
            flags |= 0x0004 | 0x0400  # password, salt present
        if solid and any(not e.directory for e in entries[:index]):  # not the first file
            flags |= 0x0010
        if entry.split:
            flags |= 0x0002
        if entry.directory:
            flags |= 0x00E0
        if entry.packed is not None:
            packed = entry.packed
        elif entry.encrypted:
            packed = os.urandom(16 * (len(entry.data) // 16 + 1))
        elif entry.method:  # a solid archive's later files go on with the tables already read
            packed = literal_block(entry.data, rar4=True, tables=not (solid and tables_read))
            tables_read = True
        else:
            packed = entry.data
        size = len(entry.data) if entry.size is None else entry.size
        body = struct.pack(
            "<IIBIIBBHI",
            len(packed) & 0xFFFFFFFF,
            size & 0xFFFFFFFF,
            2,  # Win32
            zlib.crc32(entry.data),
            _DOS_TIME,
            29,  # RAR 2.9 is needed to extract
            0x30 + entry.method,
            len(name),
            0x10 if entry.directory else 0x20,
        )
        if size > 0xFFFFFFFF or len(packed) > 0xFFFFFFFF:
            flags |= 0x0100  # HIGH_PACK_SIZE and HIGH_UNP_SIZE
            body += struct.pack("<II", len(packed) >> 32, size >> 32)
        body += name + (os.urandom(8) if entry.encrypted else b"")
        out += _rar4_block(0x74, flags, body) + packed
    return out + _rar4_block(0x7B, 0x4000, b"")


# --- RAR 5.0 -----------------------------------------------------------------------------------


def vint(value: int) -> bytes:
    """RAR 5 variable-length integer: 7 bits a byte, low first, high bit = more follow."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _rar5_block(
    kind: int, flags: int, fields: bytes, extra: bytes = b"", data_size: int = -1
) -> bytes:
    head = vint(kind)
    if extra:
        flags |= 0x01
    if data_size >= 0:
        flags |= 0x02
    head += vint(flags)
    if extra:
        head += vint(len(extra))
    if data_size >= 0:
        head += vint(data_size)
    header = head + fields + extra
    sized = vint(len(header)) + header
    return struct.pack("<I", zlib.crc32(sized)) + sized


def rar5(entries: Iterable[Entry], *, solid: bool = False, header_encrypted: bool = False) -> bytes:
    """A RAR 5.0 archive. A method other than store writes ``literal_block(data)``."""
    entries = list(entries)
    out = RAR5_SIGNATURE
    if header_encrypted:
        # Archive encryption header: version 0 (AES-256), flags 1 (check value), KDF count,
        # salt, check value. Every header after it is encrypted: IV, then ciphertext.
        fields = vint(0) + vint(1) + bytes([15]) + os.urandom(16) + os.urandom(12)
        return out + _rar5_block(4, 0, fields) + os.urandom(16) + os.urandom(64)
    archive_flags = (0x04 if solid else 0) | (0x01 if any(e.split for e in entries) else 0)
    out += _rar5_block(1, 0, vint(archive_flags))
    for index, entry in enumerate(entries):
        name = entry.name.encode("utf-8")
        if entry.packed is not None:
            packed = entry.packed
        elif entry.encrypted:
            packed = os.urandom(16 * (len(entry.data) // 16 + 1))
        elif entry.method:
            packed = literal_block(entry.data)
        else:
            packed = entry.data
        size = len(entry.data) if entry.size is None else entry.size
        # Data CRC32 present, directory, unpacked size unknown.
        file_flags = 0x04 | (0x01 if entry.directory else 0) | (0x08 if entry.unknown_size else 0)
        compression = (
            (entry.method << 7)
            | (0x40 if solid and any(not e.directory for e in entries[:index]) else 0)
            | (entry.dictionary << 10)
        )
        fields = (
            vint(file_flags)
            + vint(size)
            + vint(0x10 if entry.directory else 0x20)
            + struct.pack("<I", zlib.crc32(entry.data))
            + vint(compression)
            + vint(0)  # Windows
            + vint(len(name))
            + name
        )
        extra = b""
        if entry.encrypted:
            record = vint(1) + vint(0) + vint(1) + bytes([15]) + os.urandom(16 + 16 + 12)
            extra = vint(len(record)) + record
        flags = 0x10 if entry.split else 0
        out += _rar5_block(2, flags, fields, extra, len(packed)) + packed
    return out + _rar5_block(5, 0, vint(1 if any(e.split for e in entries) else 0))


# --- a RAR 5 LZ block of literals --------------------------------------------------------------

# The four Huffman tables of a RAR 5 block: main (literals, end/filter/repeat codes and match
# lengths), distances, low distance bits, repeated lengths.
_TABLES = (306, 64, 16, 44)
_TABLES_29 = (299, 60, 17, 28)  # RAR 2.9: the same four


class _Bits:
    def __init__(self) -> None:
        self.value = 0
        self.count = 0

    def put(self, value: int, width: int) -> None:
        self.value = (self.value << width) | (value & ((1 << width) - 1))
        self.count += width

    def bytes(self) -> bytes:
        pad = -self.count % 8
        return (self.value << pad).to_bytes((self.count + pad) // 8, "big")


def literal_block(data: bytes, rar4: bool = False, tables: bool = True) -> bytes:
    """``data`` as LZ-compressed data of literals only, valid for any RAR unpacker. The main table
    gives the literals 8-bit codes, so in canonical order (by length, then symbol) each byte is
    its own code; the other tables get two 1-bit codes each (complete, never used). Table
    lengths go through the 20-symbol pre-code, whose symbols 0-15 are lengths and 19 a run of
    11 + (7 bits) zeros.

    RAR 5: one block (the last, tables present) behind its block header (flags, checksum,
    size). RAR 2.9 (RAR 4 archives, methods 0x31-0x35): two flag bits (LZ not PPM, fresh
    tables), the tables and the codes, ended by symbol 256 "end of block" and "new file": the
    literal 255 and symbol 256 then take 9-bit codes. A later file of a solid RAR 2.9 archive
    keeps the tables (``tables=False``): only its codes."""
    body = _Bits()
    lengths = [8] * 256
    if rar4:
        lengths[255:] = [9, 9]
    sizes = _TABLES_29 if rar4 else _TABLES
    lengths += [0] * (sizes[0] - len(lengths))
    for size in sizes[1:]:
        lengths += [1, 1] + [0] * (size - 2)
    codes = _canonical(lengths[: sizes[0]])
    if tables:
        _put_tables(body, lengths, rar4)
    for byte in data:
        body.put(*codes[byte])
    if rar4:
        body.put(*codes[256])
        body.put(0b00, 2)  # end of block: a new file follows, no new table
    block = body.bytes()
    if rar4:
        return block
    last_bits = body.count % 8 or 8
    size_bytes = len(block).to_bytes(3, "little").rstrip(b"\x00") or b"\x00"
    flags = 0x80 | 0x40 | ((len(size_bytes) - 1) << 3) | (last_bits - 1)  # tables, last block
    check = 0x5A ^ flags
    for byte in size_bytes:
        check ^= byte
    return bytes([flags, check]) + size_bytes + block


def _put_tables(body: _Bits, lengths: list[int], rar4: bool) -> None:
    if rar4:
        body.put(0, 2)
    # Pre-code: 1, 8, 9 and 19 get 2-bit codes (canonical: 00, 01, 10, 11).
    precode = [0] * 20
    for symbol in (1, 8, 9, 19):
        precode[symbol] = 2
    for length in precode:
        body.put(length, 4)
    pre = {1: 0b00, 8: 0b01, 9: 0b10, 19: 0b11}
    index = 0
    while index < len(lengths):
        run = 0
        while index + run < len(lengths) and lengths[index + run] == 0 and run < 138:
            run += 1
        if run >= 11:
            body.put(pre[19], 2)
            body.put(run - 11, 7)
            index += run
            continue
        assert lengths[index] in pre, "zero runs here are all 11 long or more"
        body.put(pre[lengths[index]], 2)
        index += 1


def _canonical(lengths: list[int]) -> dict[int, tuple[int, int]]:
    """Canonical Huffman codes (code, width) from code lengths, as RAR (and deflate) make them."""
    codes: dict[int, tuple[int, int]] = {}
    code = 0
    previous = 0
    for length, symbol in sorted((n, s) for s, n in enumerate(lengths) if n):
        code <<= length - previous
        codes[symbol] = (code, length)
        code += 1
        previous = length
    return codes


def stored(files: dict[str, bytes]) -> list[Entry]:
    return [Entry(name, data) for name, data in files.items()]
