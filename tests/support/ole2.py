"""A small writer of OLE2 compound files (version 3, 512-byte sectors), for test samples that
hold real streams: an Excel ``Workbook``, a ``PowerPoint Document``. olefile only reads.

Streams under 4096 bytes go to the mini stream (64-byte sectors, as Office writes them), the
others to regular sectors; the FAT fits in the header's 109 DIFAT slots (files up to ~7 MB).
Siblings are chained through their right pointers (a valid, if unbalanced, tree).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

SECTOR = 512
MINI_SECTOR = 64
MINI_CUTOFF = 4096
FREE = 0xFFFFFFFF
END_OF_CHAIN = 0xFFFFFFFE
FAT_SECTOR = 0xFFFFFFFD
NO_STREAM = 0xFFFFFFFF

# A node: (name, bytes) is a stream, (name, [nodes]) a storage.
Node = tuple[str, "bytes | list[Node]"]


@dataclass
class _Entry:
    name: str
    kind: int  # 1 storage, 2 stream, 5 root
    data: bytes = b""
    child: int = NO_STREAM
    right: int = NO_STREAM
    start: int = END_OF_CHAIN
    size: int = 0
    clsid: bytes = field(default=bytes(16))


def _sectors(size: int, unit: int) -> int:
    return -(-size // unit)


def compound_file(tree: list[Node], clsid: bytes = bytes(16)) -> bytes:
    entries = [_Entry("Root Entry", 5, clsid=clsid)]

    def add(nodes: list[Node]) -> int:
        first = previous = NO_STREAM
        for name, content in nodes:
            index = len(entries)
            if isinstance(content, bytes):
                entries.append(_Entry(name, 2, data=content, size=len(content)))
            else:
                entries.append(_Entry(name, 1))
                entries[index].child = add(content)
            if previous == NO_STREAM:
                first = index
            else:
                entries[previous].right = index
            previous = index
        return first

    entries[0].child = add(tree)

    # The mini stream and its FAT.
    mini = bytearray()
    mini_fat: list[int] = []
    regular: list[_Entry] = []
    for entry in entries:
        if entry.kind != 2 or not entry.data:
            continue
        if len(entry.data) >= MINI_CUTOFF:
            regular.append(entry)
            continue
        count = _sectors(len(entry.data), MINI_SECTOR)
        entry.start = len(mini_fat)
        mini_fat += [entry.start + i + 1 for i in range(count - 1)] + [END_OF_CHAIN]
        mini += entry.data.ljust(count * MINI_SECTOR, b"\x00")

    directory_sectors = _sectors(len(entries), 4)
    mini_fat_sectors = _sectors(len(mini_fat) * 4, SECTOR)
    mini_stream_sectors = _sectors(len(mini), SECTOR)
    regular_sectors = sum(_sectors(len(e.data), SECTOR) for e in regular)
    content = directory_sectors + mini_fat_sectors + mini_stream_sectors + regular_sectors
    fat_sectors = 1
    while content + fat_sectors > fat_sectors * (SECTOR // 4):
        fat_sectors += 1
    assert fat_sectors <= 109, "too big for a FAT without DIFAT sectors"

    fat: list[int] = [FAT_SECTOR] * fat_sectors
    body = bytearray()

    def chain(data: bytes) -> int:
        count = _sectors(len(data), SECTOR)
        if not count:
            return END_OF_CHAIN
        start = len(fat)
        fat.extend([start + i + 1 for i in range(count - 1)] + [END_OF_CHAIN])
        body.extend(data.ljust(count * SECTOR, b"\x00"))
        return start

    directory_start = len(fat)
    fat.extend([directory_start + i + 1 for i in range(directory_sectors - 1)] + [END_OF_CHAIN])
    body.extend(bytes(directory_sectors * SECTOR))  # filled in below
    mini_fat_start = chain(b"".join(struct.pack("<I", n) for n in mini_fat))
    entries[0].start = chain(bytes(mini))
    entries[0].size = len(mini)
    for entry in regular:
        entry.start = chain(entry.data)

    directory = bytearray()
    for entry in entries:
        encoded = (entry.name + "\x00").encode("utf-16-le")
        directory += (
            encoded.ljust(64, b"\x00")
            + struct.pack("<HBB", len(encoded), entry.kind, 1)
            + struct.pack("<III", NO_STREAM, entry.right, entry.child)
            + entry.clsid
            + bytes(4 + 16)
            + struct.pack("<IQ", entry.start, entry.size)
        )
    body[: len(directory)] = directory

    fat_bytes = b"".join(struct.pack("<I", n) for n in fat).ljust(fat_sectors * SECTOR, b"\xff")
    difat = [struct.pack("<I", i) for i in range(fat_sectors)]
    header = (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
        + bytes(16)
        + struct.pack("<HHHHH", 0x3E, 3, 0xFFFE, 9, 6)
        + bytes(6)
        + struct.pack("<IIII", 0, fat_sectors, directory_start, 0)
        + struct.pack(
            "<IIIII",
            MINI_CUTOFF,
            mini_fat_start,
            mini_fat_sectors,
            END_OF_CHAIN,
            0,
        )
        + b"".join(difat)
        + b"\xff" * ((109 - fat_sectors) * 4)
    )
    assert len(header) == SECTOR
    return header + fat_bytes + bytes(body)
