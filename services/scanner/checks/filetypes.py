"""A file's true type from its bytes (magic numbers), and what a file name claims.

Our own small table rather than a library: the decisions here are about *dangerous classes*
(a PE needs its ``PE\\0\\0`` header, not just ``MZ``; an ISO is ``CD001`` at 0x8001; fat Mach-O
shares ``CAFEBABE`` with Java classes; OLE2 and OOXML need a look inside for macros), which
general-purpose sniffers (``filetype``, ``puremagic``) do not make and would only rename. Every
rule is a few bytes at a fixed offset, so the table is easy to read and to test.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    """The class of a file's true type; the first four can be blocked by policy."""

    EXECUTABLE = "executable"
    SCRIPT = "script"
    MACRO = "macro"  # an Office document carrying VBA (assigned after a look inside)
    DISK_IMAGE = "disk_image"
    ARCHIVE = "archive"  # a container we may open: zip, 7z, rar, tar, gzip, bzip2, xz
    OPAQUE_ARCHIVE = "opaque_archive"  # a container we recognise but do not open: cab, ace...
    DOCUMENT = "document"  # pdf, OLE2/OOXML/ODF without macros, rtf
    MEDIA = "media"  # images, audio, video
    OTHER = "other"  # text or anything unrecognised


BLOCKABLE = (Kind.EXECUTABLE, Kind.SCRIPT, Kind.MACRO, Kind.DISK_IMAGE)


@dataclass(frozen=True)
class FileType:
    kind: Kind
    label: str  # e.g. "PE executable", "zip", "ISO 9660 image"


ZIP = FileType(Kind.ARCHIVE, "zip")
OLE2 = FileType(Kind.DOCUMENT, "OLE2 compound file")
OTHER = FileType(Kind.OTHER, "data")

OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"

# (offset, magic, type), tried in order; the first match wins.
_MAGIC: tuple[tuple[int, bytes, FileType], ...] = (
    (0, b"\x7fELF", FileType(Kind.EXECUTABLE, "ELF executable")),
    (0, b"\xfe\xed\xfa\xce", FileType(Kind.EXECUTABLE, "Mach-O executable")),
    (0, b"\xfe\xed\xfa\xcf", FileType(Kind.EXECUTABLE, "Mach-O executable")),
    (0, b"\xce\xfa\xed\xfe", FileType(Kind.EXECUTABLE, "Mach-O executable")),
    (0, b"\xcf\xfa\xed\xfe", FileType(Kind.EXECUTABLE, "Mach-O executable")),
    (0, b"L\x00\x00\x00\x01\x14\x02\x00", FileType(Kind.SCRIPT, "Windows shortcut (LNK)")),
    (0, b"ITSF\x03\x00\x00\x00", FileType(Kind.SCRIPT, "compiled HTML help (CHM)")),
    (0, b"vhdxfile", FileType(Kind.DISK_IMAGE, "VHDX disk image")),
    (0, b"conectix", FileType(Kind.DISK_IMAGE, "VHD disk image")),
    (0, b"QFI\xfb", FileType(Kind.DISK_IMAGE, "QCOW disk image")),
    (0, b"KDMV", FileType(Kind.DISK_IMAGE, "VMDK disk image")),
    (0x8001, b"CD001", FileType(Kind.DISK_IMAGE, "ISO 9660 image")),
    (0x8801, b"CD001", FileType(Kind.DISK_IMAGE, "ISO 9660 image")),
    (0x9001, b"CD001", FileType(Kind.DISK_IMAGE, "ISO 9660 image")),
    (0x8001, b"BEA01", FileType(Kind.DISK_IMAGE, "UDF image")),
    (0, b"PK\x03\x04", ZIP),
    (0, b"PK\x05\x06", ZIP),  # an empty zip
    (0, b"PK\x07\x08", ZIP),  # a spanned zip
    (0, b"\x1f\x8b", FileType(Kind.ARCHIVE, "gzip")),
    (0, b"BZh", FileType(Kind.ARCHIVE, "bzip2")),
    (0, b"\xfd7zXZ\x00", FileType(Kind.ARCHIVE, "xz")),
    (257, b"ustar", FileType(Kind.ARCHIVE, "tar")),
    (0, b"7z\xbc\xaf\x27\x1c", FileType(Kind.ARCHIVE, "7z")),
    (0, b"Rar!\x1a\x07", FileType(Kind.ARCHIVE, "rar")),  # RAR 4 (\x00) and RAR 5 (\x01\x00)
    (0, b"MSCF\x00\x00\x00\x00", FileType(Kind.OPAQUE_ARCHIVE, "cab")),
    (7, b"**ACE**", FileType(Kind.OPAQUE_ARCHIVE, "ace")),
    (0, b"\x28\xb5\x2f\xfd", FileType(Kind.OPAQUE_ARCHIVE, "zstd")),
    (0, OLE2_MAGIC, OLE2),
    (0, b"%PDF-", FileType(Kind.DOCUMENT, "pdf")),
    (0, b"{\\rtf", FileType(Kind.DOCUMENT, "rtf")),
    (0, b"\xff\xd8\xff", FileType(Kind.MEDIA, "jpeg")),
    (0, b"\x89PNG\r\n\x1a\n", FileType(Kind.MEDIA, "png")),
    (0, b"GIF87a", FileType(Kind.MEDIA, "gif")),
    (0, b"GIF89a", FileType(Kind.MEDIA, "gif")),
    (0, b"II*\x00", FileType(Kind.MEDIA, "tiff")),
    (0, b"MM\x00*", FileType(Kind.MEDIA, "tiff")),
    (0, b"BM", FileType(Kind.MEDIA, "bmp")),
    (0, b"RIFF", FileType(Kind.MEDIA, "riff (wav/avi/webp)")),
    (4, b"ftyp", FileType(Kind.MEDIA, "iso media (mp4/mov/heic)")),
    (0, b"ID3", FileType(Kind.MEDIA, "mp3")),
    (0, b"OggS", FileType(Kind.MEDIA, "ogg")),
)

# "#!/usr/bin/env python", "#! /bin/sh": an absolute interpreter path on the first line.
_SHEBANG = re.compile(rb"#![ \t]*/[A-Za-z0-9_.+-]+(/[A-Za-z0-9_.+-]+)*[ \t\r\n]")
_LZH = re.compile(rb"..-l[hz][0-9a-z]-", re.DOTALL)

PE = FileType(Kind.EXECUTABLE, "PE executable")
SHEBANG = FileType(Kind.SCRIPT, "script (#!)")
MACHO_FAT = FileType(Kind.EXECUTABLE, "Mach-O universal binary")


def sniff(data: bytes) -> FileType:
    """The true type of ``data`` from its leading (and, for some images, trailing) bytes.
    Cheap: fixed offsets only. Containers (zip, OLE2) are refined by the caller."""
    if data[:2] == b"MZ" and _has_pe_header(data):
        return PE
    if data[:4] == b"\xca\xfe\xba\xbe" and len(data) >= 8:
        # Fat Mach-O and Java classes share this magic: Mach-O counts a few architectures
        # where a class file has its version (45 and up).
        (count,) = struct.unpack(">I", data[4:8])
        if 0 < count < 40:
            return MACHO_FAT
    for offset, magic, found in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return found
    if _SHEBANG.match(data):
        return SHEBANG
    if data[:2] == b"\x60\xea" and len(data) > 4 and 0 < struct.unpack("<H", data[2:4])[0] <= 2600:
        return FileType(Kind.OPAQUE_ARCHIVE, "arj")
    if _LZH.match(data):
        return FileType(Kind.OPAQUE_ARCHIVE, "lzh")
    if len(data) >= 512:
        tail = data[-512:]
        if tail[:4] == b"koly":
            return FileType(Kind.DISK_IMAGE, "Apple disk image (DMG)")
        if tail[:8] == b"conectix":
            return FileType(Kind.DISK_IMAGE, "VHD disk image")
        if data[510:512] == b"\x55\xaa" and (
            data[54:59] == b"FAT12" or data[54:59] == b"FAT16" or data[82:87] == b"FAT32"
        ):
            return FileType(Kind.DISK_IMAGE, "FAT disk image")
    return OTHER


def _has_pe_header(data: bytes) -> bool:
    if len(data) < 0x40:
        return False
    (offset,) = struct.unpack("<I", data[0x3C:0x40])
    return 0x40 <= offset <= len(data) - 4 and data[offset : offset + 4] == b"PE\x00\x00"


# --- what a name claims ----------------------------------------------------------------------

# Extensions of ordinary, inert files: content of a dangerous class or an unexpected archive
# behind one of these names is a disguise (ATTACHMENT_TYPE_MISMATCH).
INERT_EXTENSIONS = frozenset(
    {
        "pdf", "txt", "csv", "rtf", "jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "webp",
        "heic", "svg", "mp3", "mp4", "m4a", "wav", "mov", "avi", "ogg", "doc", "xls", "ppt",
        "docx", "xlsx", "pptx", "odt", "ods", "odp", "htm", "html", "xml", "json", "eml", "ics",
        "vcf",
    }
)  # fmt: skip

# Inert names whose format may legitimately carry macros (legacy Office, OpenDocument): a
# macro in them is no disguise (it is still reported as ATTACHMENT_MACRO).
MACRO_CAPABLE_EXTENSIONS = frozenset(
    {"doc", "xls", "ppt", "dot", "xlt", "pot", "pps", "xla", "odt", "ods", "odp", "odg"}
)

# Names whose format is a zip underneath: a zip behind them is expected.
ZIP_BASED_EXTENSIONS = frozenset(
    {
        "docx", "xlsx", "pptx", "docm", "xlsm", "pptm", "dotx", "dotm", "xltx", "xltm", "potx",
        "potm", "ppsx", "ppsm", "xlam", "ppam", "sldx", "sldm", "odt", "ods", "odp", "odg",
        "epub", "jar", "apk", "xpi", "vsdx", "3mf", "kmz", "nupkg", "whl", "ipa", "appx",
        "msix", "xps", "oxps",
    }
)  # fmt: skip


def normalise_name(name: str) -> str:
    """The name as Windows would see it: last path segment, trailing dots and spaces dropped,
    control and bidi-override characters removed, lower case."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable() and c not in "\u202a\u202b\u202c\u202d\u202e")
    return name.strip().rstrip(". ").lower()


def extension(name: str) -> str:
    """The last extension of a normalised name, without the dot ("" when none)."""
    base, dot, ext = name.rpartition(".")
    return ext if dot and base else ""


def is_disguise(ext: str, found: FileType) -> bool:
    """True when a name claiming an inert type holds something that is not what it claims."""
    if ext not in INERT_EXTENSIONS:
        return False
    if found.kind == Kind.MACRO:
        return ext not in MACRO_CAPABLE_EXTENSIONS
    if found.kind in (Kind.EXECUTABLE, Kind.SCRIPT, Kind.DISK_IMAGE, Kind.OPAQUE_ARCHIVE):
        return True
    if found.kind == Kind.ARCHIVE:
        return not (found.label == "zip" and ext in ZIP_BASED_EXTENSIONS)
    return False
