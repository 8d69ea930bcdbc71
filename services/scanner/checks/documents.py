"""Active content that a document's container does not show: Excel 4.0 (XLM) macro sheets,
PowerPoint 97 VBA, PDF JavaScript and launch actions, and the files a PDF embeds.

The attachments check (``attachments.py``) calls in here once it knows what a file is: an OLE2
compound file already opened with olefile, an Office Open XML zip whose central directory is
read, a PDF. Everything here reads bytes the caller already holds, walks them with loops
bounded by their length (and a record cap), and never raises on malformed input: a structure
that cannot be read is simply not what was looked for. Decompression (PDF object streams and
embedded files) draws on the message's byte budget, like an archive's members.

- Excel 97-2003: a ``BoundSheet8`` record (0x0085) of the workbook globals with sheet type
  (``dt``) 1 is an Excel 4.0 macro sheet ([MS-XLS] 2.4.28). XLM runs without any VBA project.
- Office Open XML: parts under ``xl/macrosheets/`` or a macro-sheet (or VBA project) content
  type in ``[Content_Types].xml`` (part names are free: the content type is what Excel reads).
- PowerPoint 97-2003: the VBA project is not an OLE storage of the file but a compressed
  ``ExOleObjStg`` record, referenced from ``DocumentContainer / DocInfoListContainer /
  VBAInfoContainer (0x03FF) / VBAInfoAtom (0x0400)``; the atom's ``fHasMacros`` says whether
  that storage holds a project ([MS-PPT] 2.4.10-2.4.11). Most presentations carry an empty one.
- PDF: pdfid-style name counts (after undoing ``#xx`` escapes, ``/J#61vaScript``) over the
  file outside stream data, and inside object streams (``/ObjStm``, where JavaScript is often
  hidden), with bounded decoding. JavaScript or a launch action is active content; an
  ``/OpenAction`` or ``/AA`` alone is not (most of them open a page or set a zoom).
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import unquote

import olefile  # type: ignore[import-untyped]  # ships no type hints

from services.scanner.checks.archives import (
    ArchiveProblem,
    Bomb,
    Budget,
    Corrupt,
    Encrypted,
    LimitExceeded,
    Member,
)
from services.scanner.checks.filetypes import FileType, Kind

# --- Office 97-2003 (OLE2) ---------------------------------------------------------------------

ENCRYPTED_WORKBOOK = FileType(Kind.DOCUMENT, "encrypted Excel 97-2003 workbook")
PPT_VBA = FileType(Kind.MACRO, "PowerPoint 97 document with VBA macros")

# Records looked at per stream at most: a workbook's globals or a presentation's top levels
# hold a few thousand; the cap bounds the work on a crafted stream of empty records.
MAX_RECORDS = 200_000

_BIFF_BOF = 0x0809
_BIFF_EOF = 0x000A
_BIFF_FILEPASS = 0x002F  # the rest of the stream is encrypted (RC4 or XOR obfuscation)
_BIFF_BOUNDSHEET = 0x0085
_SHEET_STATES = {1: "hidden", 2: "very hidden"}

_RT_DOCUMENT = 0x03E8
_RT_LIST = 0x07D0  # DocInfoListContainer
_RT_VBA_INFO = 0x03FF
_RT_VBA_INFO_ATOM = 0x0400
_PPT_DESCEND = frozenset({_RT_DOCUMENT, _RT_LIST, _RT_VBA_INFO})
# A VBAInfoAtom's header as the spec fixes it: recVer 2, recInstance 0, type 0x0400, length 12.
_VBA_INFO_ATOM_HEADER = b"\x02\x00\x00\x04\x0c\x00\x00\x00"


@dataclass(frozen=True)
class Sheet:
    name: str
    state: str  # "visible", "hidden", "very hidden"


def legacy_office(ole: olefile.OleFileIO, entries: list[list[str]]) -> FileType | None:
    """What an Office 97-2003 file without a VBA storage carries: XLM macro sheets (Excel) or
    a VBA project (PowerPoint); ``ENCRYPTED_WORKBOOK`` for an Excel file whose records are
    encrypted (its sheet types cannot be read). ``entries``: olefile's listdir, lower case."""
    for stream in ("workbook", "book"):
        if [stream] in entries:
            data = _read_stream(ole, stream)
            if data is None:
                break
            sheets, encrypted = xlm_sheets(data)
            if sheets:
                return FileType(Kind.MACRO, _describe_sheets(sheets))
            if encrypted:
                return ENCRYPTED_WORKBOOK
            break
    if ["powerpoint document"] in entries:
        data = _read_stream(ole, "PowerPoint Document")
        if data is not None and ppt_has_vba(data):
            return PPT_VBA
    return None


def _read_stream(ole: olefile.OleFileIO, name: str) -> bytes | None:
    try:
        data = ole.openstream(name).read()
    except Exception:  # olefile raises many kinds on a broken sector chain
        return None
    return bytes(data)


def xlm_sheets(stream: bytes) -> tuple[list[Sheet], bool]:
    """The Excel 4.0 macro sheets named in a BIFF5/BIFF8 workbook's globals substream (records
    of u16 type, u16 length, data, from a BOF to the first EOF), and whether the records after
    a FILEPASS are encrypted (then the sheet types that follow cannot be read)."""
    if len(stream) < 8 or struct.unpack_from("<H", stream, 0)[0] != _BIFF_BOF:
        return [], False
    (version,) = struct.unpack_from("<H", stream, 4)
    biff8 = version >= 0x0600
    sheets: list[Sheet] = []
    position = 0
    for _ in range(MAX_RECORDS):
        if position + 4 > len(stream):
            break
        kind, length = struct.unpack_from("<HH", stream, position)
        data = stream[position + 4 : position + 4 + length]
        position += 4 + length
        if kind == _BIFF_EOF:
            break
        if kind == _BIFF_FILEPASS:
            return sheets, True
        # BoundSheet8: lbPlyPos (4), hsState (low two bits), dt (1: macro sheet), stName.
        if kind == _BIFF_BOUNDSHEET and len(data) >= 6 and data[5] == 0x01:
            state = _SHEET_STATES.get(data[4] & 0x03, "visible")
            sheets.append(Sheet(_sheet_name(data[6:], biff8), state))
    return sheets, False


def _sheet_name(data: bytes, biff8: bool) -> str:
    """A ShortXLUnicodeString (BIFF8: count, high-byte flag, characters) or BIFF5's counted
    byte string; whatever is readable of it."""
    if not data:
        return ""
    count = data[0]
    if biff8 and len(data) >= 2:
        if data[1] & 0x01:
            return data[2 : 2 + 2 * count].decode("utf-16-le", "replace")
        return data[2 : 2 + count].decode("latin-1")
    return data[1 : 1 + count].decode("latin-1")


def _describe_sheets(sheets: list[Sheet]) -> str:
    shown = ", ".join(
        repr(s.name[:31]) + ("" if s.state == "visible" else f" ({s.state})") for s in sheets[:3]
    )
    more = f" and {len(sheets) - 3} more" if len(sheets) > 3 else ""
    plural = "s" if len(sheets) > 1 else ""
    return f"Excel 4.0 (XLM) macro sheet{plural} {shown}{more}"


def ppt_has_vba(stream: bytes) -> bool:
    """Whether a "PowerPoint Document" stream declares a VBA project: a VBAInfoAtom whose
    fHasMacros is set. The record headers (u16 version/instance, u16 type, u32 length) are
    walked from the top, into the DocumentContainer, its DocInfoListContainer and the
    VBAInfoContainer only; a walk that loses its way (PowerPoint reads top-level records by
    offset, so junk between them is possible) falls back to a byte search for the atom."""
    found = _walk_ppt(stream)
    if found is not None:
        return found
    start = 0
    for _ in range(MAX_RECORDS):
        at = stream.find(_VBA_INFO_ATOM_HEADER, start)
        if at < 0 or at + 20 > len(stream):
            return False
        if struct.unpack_from("<I", stream, at + 12)[0]:
            return True
        start = at + 1
    return False


def _walk_ppt(stream: bytes) -> bool | None:
    """True/False when the records were walked to the end; None when the walk lost its way
    (a record overrunning the stream) or passed the record cap."""
    ends = [len(stream)]
    position = 0
    for _ in range(MAX_RECORDS):
        while ends and position >= ends[-1]:
            position = ends.pop()
        if not ends:
            return False
        end = ends[-1]
        if position + 8 > end:
            if len(ends) == 1:
                return None if any(stream[position:end]) else False
            position = end  # padding at the end of a container
            continue
        version, kind, length = struct.unpack_from("<HHI", stream, position)
        body = position + 8
        if body + length > end:
            if len(ends) == 1:
                return None
            position = end  # a child overrunning its container: skip the rest of it
            continue
        if (
            kind == _RT_VBA_INFO_ATOM
            and length >= 8
            and struct.unpack_from("<I", stream, body + 4)[0]
        ):
            return True
        if version & 0x0F == 0x0F and kind in _PPT_DESCEND:
            ends.append(body + length)
            position = body
        else:
            position = body + length
    return None


# --- Office Open XML -----------------------------------------------------------------------------

_MACRO_SHEET_DIRS = ("xl/macrosheets/", "xl/intlmacrosheets/")
_CONTENT_TYPES_CAP = 1024 * 1024
XLM_OOXML = FileType(Kind.MACRO, "Excel 4.0 (XLM) macro sheet (Office Open XML)")
VBA_OOXML = FileType(Kind.MACRO, "Office document with VBA macros (vbaProject content type)")
_TYPE_TAG = re.compile(rb"<(Default|Override)\b([^>]{0,2048})>")
_ATTRIBUTE = re.compile(rb"([A-Za-z]+)\s*=\s*[\"']([^\"']{0,1024})[\"']")


def ooxml_macros(archive: zipfile.ZipFile, names: list[str]) -> FileType | None:
    """Macros an Office Open XML package carries besides a ``vbaProject.bin`` by that name:
    Excel 4.0 macro sheets (parts under ``xl/macrosheets/``, or of a macro-sheet content type
    wherever they are) and a VBA project under another name (by its content type). A content
    type counts only for a part that is there. ``names``: the members' names, lower case. Only
    ``[Content_Types].xml`` is read (1 MiB at most)."""
    if any(n.startswith(_MACRO_SHEET_DIRS) for n in names):
        return XLM_OOXML
    present = set(names)
    for tag, attributes in _TYPE_TAG.findall(_content_types(archive)):
        fields = {k.lower(): v for k, v in _ATTRIBUTE.findall(attributes)}
        content_type = fields.get(b"contenttype", b"").lower()
        if b"macrosheet" in content_type:
            found = XLM_OOXML
        elif content_type.startswith(b"application/vnd.ms-office.vbaproject"):
            found = VBA_OOXML
        else:
            continue
        if tag == b"Override":
            part = unquote(fields.get(b"partname", b"").decode("latin-1")).lstrip("/").lower()
            if part in present:
                return found
        else:
            suffix = "." + fields.get(b"extension", b"").decode("latin-1").lower()
            if any(n.endswith(suffix) for n in names):
                return found
    return None


def _content_types(archive: zipfile.ZipFile) -> bytes:
    for info in archive.infolist():
        if info.filename.lower() == "[content_types].xml":
            try:
                with archive.open(info) as stream:
                    return stream.read(_CONTENT_TYPES_CAP)
            except Exception:  # zipfile raises many kinds on a damaged member: nothing read
                return b""
    return b""


# --- PDF -----------------------------------------------------------------------------------------

# The names counted (pdfid's selection); JavaScript and Launch make a PDF active.
PDF_NAMES = (
    "JavaScript",
    "JS",
    "Launch",
    "OpenAction",
    "AA",
    "EmbeddedFile",
    "SubmitForm",
    "RichMedia",
    "XFA",
)
ACTIVE_NAMES = frozenset({"JavaScript", "JS", "Launch"})
_LABELS = {
    "JavaScript": "JavaScript",
    "JS": "JavaScript",
    "Launch": "Launch action",
    "OpenAction": "OpenAction",
    "AA": "additional actions (AA)",
    "EmbeddedFile": "embedded files",
    "SubmitForm": "SubmitForm",
    "RichMedia": "RichMedia",
    "XFA": "XFA form",
}

_WS = rb"\x00\t\n\x0c\r "
_WS_BYTES = b"\x00\t\n\x0c\r "
_DELIMITERS = _WS + rb"()<>\[\]{}/%"
# A name ends at whitespace or a delimiter: "/JS" counts, "/JSON" does not.
_END = rb"(?![^" + _DELIMITERS + rb"])"
_KEYWORD = re.compile(rb"/(" + b"|".join(n.encode() for n in PDF_NAMES) + rb")" + _END)
# A name spelled with #xx escapes somewhere (rare in honest files: font names with spaces).
_NAME_CHAR = rb"[^#" + _DELIMITERS + rb"]"
# Short enough to be a keyword with every letter escaped (/#4A#53), with at least one escape;
# unambiguous, so it never backtracks far.
_ESCAPED_NAME = re.compile(
    rb"/(?=" + _NAME_CHAR + rb"{0,29}#)((?:" + _NAME_CHAR + rb"|#[0-9A-Fa-f]{2}){1,30})" + _END
)
_KEYWORD_LENGTHS = frozenset(len(name) for name in PDF_NAMES)
# Distinct escaped names unescaped per PDF at most (honest files have a handful: font names).
MAX_ESCAPED_NAMES = 50_000
_HEX = re.compile(rb"#([0-9A-Fa-f]{2})")
_STREAM = re.compile(rb">>[" + _WS + rb"]*stream(?:\r\n|\n|\r)")
_OBJ_NUMBER = re.compile(rb"(\d{1,10})[" + _WS + rb"]+\d{1,5}[" + _WS + rb"]+$")
_LENGTH = re.compile(
    rb"/Length[" + _WS + rb"]*(\d{1,12})(?!\d)(?![" + _WS + rb"]+\d+[" + _WS + rb"]+R)"
)
_FILTER = re.compile(rb"/Filter[" + _WS + rb"]*(\[[^\]]{0,200}\]|/[^" + _DELIMITERS + rb"]{1,40})")
_FILTER_NAME = re.compile(rb"/([^" + _DELIMITERS + rb"]{1,40})")
_OBJSTM = re.compile(rb"/Type[" + _WS + rb"]*/ObjStm" + _END)
_OBJSTM_KEYS = re.compile(rb"/First[" + _WS + rb"]*\d")
_ENCRYPT = re.compile(rb"/Encrypt" + _END)
_EMBEDDED = re.compile(rb"/Type[" + _WS + rb"]*/EmbeddedFile" + _END)
# A file specification's embedded-file dictionary (/EF << /F 12 0 R >>) and its file name.
_EF = re.compile(rb"/EF[" + _WS + rb"]*<<([^>]{0,300})>>")
_REF = re.compile(rb"(\d{1,10})[" + _WS + rb"]+\d{1,5}[" + _WS + rb"]+R")
_FILE_NAME = re.compile(
    rb"/(?:UF|F)[" + _WS + rb"]*(\((?:\\.|[^\\)]){0,512}\)|<[0-9A-Fa-f" + _WS + rb"]{0,1024}>)",
    re.DOTALL,
)
_ESCAPE = re.compile(rb"\\([nrtbf()\\]|[0-7]{1,3}|\r\n|\r|\n)")
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}

# Object streams decoded per PDF at most (writers put about a hundred objects in each).
MAX_OBJECT_STREAMS = 10_000
_HEADER_WINDOW = 64 * 1024  # a stream dictionary is looked for this far back at most
_NAME_WINDOW = 2048  # a file specification's name is looked for this far from its /EF
# Inflation is fed and taken in steps, so a bomb is stopped after a few MiB.
_FEED = 64 * 1024
_STEP = 1024 * 1024


@dataclass
class PdfScan:
    """What one PDF holds: name counts (outside object streams and inside), its embedded files
    (decoded), and the problems met: a limit passed, a file that could not be decoded."""

    names: Counter[str] = field(default_factory=Counter)
    hidden: set[str] = field(default_factory=set)  # names seen only inside object streams
    obfuscated: set[str] = field(default_factory=set)  # names spelled with #xx escapes
    embedded: list[Member] = field(default_factory=list)
    problems: list[ArchiveProblem] = field(default_factory=list)
    escaped: int = 0  # distinct escaped names looked at

    @property
    def active(self) -> bool:
        return bool(ACTIVE_NAMES & self.names.keys())

    def describe(self) -> str:
        """E.g. ``PDF with JavaScript, OpenAction (in object streams)``."""
        labels = list(dict.fromkeys(_LABELS[n] for n in PDF_NAMES if self.names[n]))
        notes = []
        active = ACTIVE_NAMES & self.names.keys()
        if active and active <= self.hidden:
            notes.append("in object streams")
        if self.obfuscated:
            notes.append("names obfuscated with #xx escapes")
        suffix = f" ({'; '.join(notes)})" if notes else ""
        return "PDF with " + ", ".join(labels) + suffix


def looks_like_pdf(data: bytes, found: FileType, attachment: bool) -> bool:
    """A PDF by its magic, or an attached file whose ``%PDF-`` header comes after some junk
    (readers look for it in the first kilobyte)."""
    if found.label == "pdf":
        return True
    return attachment and found.kind == Kind.OTHER and b"%PDF-" in data[:1024]


def scan_pdf(data: bytes, where: str, budget: Budget, extract: bool = True) -> PdfScan:
    """Count the active-content names of a PDF, inside its object streams too, and decode its
    embedded files (when ``extract``). Stream data is left out of the name count (compressed
    bytes would match by chance); object streams and embedded files are decoded (Flate,
    ASCIIHex, ASCII85) within the message's byte budget. Never raises."""
    scan = PdfScan()
    text, streams = _split(data)
    specs = _FileSpecs(budget.limits.max_entries)
    others: list[_Stream] = []
    object_streams = 0
    try:
        _count(scan, text, where, hidden=False)
        if extract:
            specs.add(text, where)
        for stream in streams:
            if _OBJSTM.search(stream.header) is None and (
                b"/N" not in stream.header or _OBJSTM_KEYS.search(stream.header) is None
            ):
                others.append(stream)
                continue
            object_streams += 1
            if object_streams > MAX_OBJECT_STREAMS:
                raise LimitExceeded(f"{where}: more than {MAX_OBJECT_STREAMS} object streams")
            decoded = _decode(stream.data(data), _filters(stream.header), where, budget)
            if decoded:
                _count(scan, decoded, where, hidden=True)
                if extract:
                    specs.add(decoded, where)
    except ArchiveProblem as exc:
        scan.problems.append(exc)
        return scan
    if not extract:
        return scan
    # Embedded files: streams typed /EmbeddedFile (the type is optional) or referenced from a
    # file specification's /EF, wherever that was (object streams included).
    for stream in others:
        typed = _EMBEDDED.search(stream.header) is not None
        if not typed and not specs.names:
            continue
        number = stream.number(data)
        if not typed and number not in specs.names:
            continue
        name = specs.names.get(number) or f"embedded file {number}"
        try:
            budget.take_entry(where)
            decoded = _decode(stream.data(data), _filters(stream.header), where, budget)
        except ArchiveProblem as exc:
            scan.problems.append(exc)
            break
        if decoded is None:
            # An encrypted PDF (even one that opens without a password) encrypts its streams.
            if _ENCRYPT.search(text) is not None:
                scan.problems.append(
                    Encrypted(f"{where}/{name}: embedded file of an encrypted PDF")
                )
            else:
                scan.problems.append(Corrupt(f"{where}/{name}: embedded file could not be decoded"))
            continue
        scan.embedded.append(Member(name, decoded))
    return scan


class _Stream(NamedTuple):
    obj: int  # where its "obj" keyword is (-1: not found)
    header: bytes  # its dictionary, names unescaped
    start: int
    end: int

    def data(self, pdf: bytes) -> bytes:
        return pdf[self.start : self.end]

    def number(self, pdf: bytes) -> int:
        """The object number before "obj" (-1 when there is none)."""
        if self.obj < 0:
            return -1
        found = _OBJ_NUMBER.search(pdf, max(0, self.obj - 32), self.obj)
        return int(found.group(1)) if found is not None else -1


def _split(data: bytes) -> tuple[bytes, list[_Stream]]:
    """The text of ``data`` outside stream data (the pieces joined by newlines), and its
    streams. A linear pass: each stream's data is skipped, by its /Length where that is right,
    else up to the next ``endstream``."""
    pieces: list[bytes] = []
    streams: list[_Stream] = []
    position = 0
    while position < len(data):
        match = _STREAM.search(data, position)
        if match is None:
            break
        start = match.end()
        floor = max(position, match.start() - _HEADER_WINDOW)
        obj = data.rfind(b"obj", floor, match.start())
        header = data[obj + 3 if obj >= 0 else floor : match.start() + 2]
        if b"#" in header:
            header = _unescape_names(header)
        end = _stream_end(data, start, header)
        pieces.append(data[position:start])
        streams.append(_Stream(obj, header, start, end))
        position = max(end, start + 1)
    pieces.append(data[position:])
    return b"\n".join(pieces), streams


def _stream_end(data: bytes, start: int, header: bytes) -> int:
    """Where a stream's data ends: at its direct /Length when ``endstream`` follows there, else
    at the next ``endstream`` (or the end of the file)."""
    length = _LENGTH.search(header)
    if length is not None:
        end = start + int(length.group(1))
        if end <= len(data) and data[end : end + 32].lstrip(_WS_BYTES).startswith(b"endstream"):
            return end
    end = data.find(b"endstream", start)
    return len(data) if end < 0 else end


def _unescape_names(text: bytes) -> bytes:
    if b"#" not in text:
        return text
    return _HEX.sub(lambda m: bytes([int(m.group(1), 16)]), text)


def _count(scan: PdfScan, text: bytes, where: str, hidden: bool) -> None:
    """Add the names of ``text`` to the counts; ``hidden``: it is an object stream's."""
    found: Counter[str] = Counter(m.decode() for m in _KEYWORD.findall(text))
    if b"#" in text:
        escaped = Counter(_ESCAPED_NAME.findall(text))
        scan.escaped += len(escaped)
        if scan.escaped > MAX_ESCAPED_NAMES:
            raise LimitExceeded(f"{where}: more than {MAX_ESCAPED_NAMES} escaped PDF names")
        for raw, count in escaped.items():
            if len(raw) - 2 * raw.count(b"#") not in _KEYWORD_LENGTHS:
                continue
            name = _unescape_names(raw).decode("latin-1")
            if name in PDF_NAMES:
                found[name] += count
                scan.obfuscated.add(name)
    for name, count in found.items():
        if hidden and not scan.names[name]:
            scan.hidden.add(name)
        scan.names[name] += count


def _filters(header: bytes) -> list[bytes]:
    match = _FILTER.search(header)
    if match is None:
        return []
    return [m.group(1) for m in _FILTER_NAME.finditer(match.group(1))]


def _decode(raw: bytes, filters: list[bytes], where: str, budget: Budget) -> bytes | None:
    """A stream's data through its filters (Flate, ASCIIHex, ASCII85), the output counted in
    the message's byte budget; None for a filter we do not decode or data that will not
    decode. Raises ``Bomb``/``LimitExceeded`` (from the budget) only."""
    data = raw
    for name in filters:
        if name in (b"FlateDecode", b"Fl"):
            decoded = _inflate(data, where, budget)
        elif name in (b"ASCIIHexDecode", b"AHx"):
            decoded = _unhex(data)
        elif name in (b"ASCII85Decode", b"A85"):
            decoded = _un85(data)
        else:
            return None
        if decoded is None:
            return None
        budget.take_bytes(where, len(decoded))
        data = decoded
    if not filters:
        budget.take_bytes(where, len(data))
    return data


def _inflate(raw: bytes, where: str, budget: Budget) -> bytes | None:
    """zlib data inflated in steps: at most what is left of the budget (plus one byte, to see
    an overrun), stopped as a bomb once past ``bomb_min_size`` at a ratio over ``max_ratio``.
    A damaged stream yields what came out before the damage (readers do the same)."""
    limits = budget.limits
    cap = budget.cap()
    decompressor = zlib.decompressobj()
    chunks: list[bytes] = []
    produced = position = 0
    pending = b""
    try:
        for _ in range(len(raw) // _FEED + cap // _STEP + 16):
            if produced >= cap or decompressor.eof:
                break
            if not pending and position < len(raw):
                pending = raw[position : position + _FEED]
                position += len(pending)
            chunk = decompressor.decompress(pending, min(_STEP, cap - produced))
            pending = decompressor.unconsumed_tail
            chunks.append(chunk)
            produced += len(chunk)
            consumed = position - len(pending)
            if produced >= limits.bomb_min_size and produced > limits.max_ratio * max(consumed, 1):
                raise Bomb(
                    f"{where}: a PDF stream inflates to {produced} bytes from {consumed} "
                    f"(ratio over {limits.max_ratio:g})"
                )
            if not chunk and not pending and position >= len(raw):
                break
    except zlib.error:
        if not produced:
            return None
    return b"".join(chunks)


def _unhex(data: bytes) -> bytes | None:
    text = data.split(b">", 1)[0].translate(None, _WS_BYTES)
    if len(text) % 2:
        text += b"0"
    try:
        return binascii.unhexlify(text)
    except (binascii.Error, ValueError):
        return None


def _un85(data: bytes) -> bytes | None:
    text = data.split(b"~>", 1)[0].strip(_WS_BYTES)
    if text.startswith(b"<~"):
        text = text[2:]
    try:
        return base64.a85decode(text, ignorechars=_WS_BYTES)
    except (binascii.Error, ValueError):
        return None


class _FileSpecs:
    """The file names of embedded-file streams, by object number, from the file specifications
    that reference them (``/UF`` or ``/F`` next to their ``/EF``: nearest before, else after).
    More ``/EF`` than the archive member limit: ``LimitExceeded``, as for an archive."""

    def __init__(self, limit: int) -> None:
        self.names: dict[int, str] = {}
        self.limit = limit
        self.seen = 0

    def add(self, text: bytes, where: str) -> None:
        previous = 0
        matches = _EF.finditer(text)
        match = next(matches, None)
        while match is not None:
            self.seen += 1
            if self.seen > self.limit:
                raise LimitExceeded(f"{where}: more than {self.limit} embedded files")
            following = next(matches, None)
            ceiling = len(text) if following is None else following.start()
            # Back to the previous /EF or this object's "obj", whichever is nearer.
            floor = max(previous, match.start() - _NAME_WINDOW)
            floor = max(floor, text.rfind(b"obj", floor, match.start()) + 1)
            before = list(_FILE_NAME.finditer(text, floor, match.start()))
            token = before[-1].group(1) if before else None
            if token is None:  # forward, to the next /EF or the end of this object
                ceiling = min(ceiling, match.end() + _NAME_WINDOW)
                close = text.find(b"endobj", match.end(), ceiling)
                after = _FILE_NAME.search(text, match.end(), ceiling if close < 0 else close)
                token = after.group(1) if after is not None else None
            name = _pdf_string(token) if token is not None else ""
            for ref in _REF.finditer(match.group(1)):
                number = int(ref.group(1))
                if not self.names.get(number):
                    self.names[number] = name
            previous = match.end()
            match = following


def _pdf_string(token: bytes) -> str:
    """A literal ``(...)`` or hex ``<...>`` string as text (UTF-16BE with a BOM, else Latin-1)."""
    if token.startswith(b"<"):
        raw = _unhex(token[1:]) or b""
    else:
        raw = _ESCAPE.sub(_unescape_char, token[1:-1])
    if raw.startswith(b"\xfe\xff"):
        return raw[2:].decode("utf-16-be", "replace").replace("\x00", "")
    if raw.startswith(b"\xef\xbb\xbf"):
        return raw[3:].decode("utf-8", "replace")
    return raw.decode("latin-1")


def _unescape_char(match: re.Match[bytes]) -> bytes:
    code = match.group(1)
    if code[:1].isdigit():
        return bytes([int(code, 8) & 0xFF])
    if code in (b"\r\n", b"\r", b"\n"):
        return b""  # a line continuation
    return _ESCAPES.get(code, code)
