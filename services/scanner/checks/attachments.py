"""Attachments, archives and MIME limits: block files by their TRUE type (magic bytes), look
inside archives recursively under limits, and refuse messages too deep or too big to scan.

Every finding here is a ``policy`` finding (the verdict is policy → quarantine) except where a
setting lets the administrator allow it (``*_action: info``) and the MIME parser's defects,
which are information. Unpacking is CPU work: it runs in a worker thread whenever a message
holds a container (archive or Office document) or a large part; plain mail is judged inline.
"""

from __future__ import annotations

import asyncio
import logging
import zipfile
from collections.abc import Iterable
from email.message import Message

import olefile  # type: ignore[import-untyped]  # ships no type hints

from moat.mime import walk
from moat.model import Finding
from moat.settings import AttachmentSettings, ScannerSettings
from moat.symbols import SymbolTable
from services.scanner.checks import archives, documents
from services.scanner.checks.archives import ArchiveProblem, Budget, Limits, Member
from services.scanner.checks.base import ParsedMessage
from services.scanner.checks.filetypes import (
    OLE2_MAGIC,
    FileType,
    Kind,
    extension,
    is_disguise,
    normalise_name,
    sniff,
)

log = logging.getLogger(__name__)
logging.getLogger("olefile").setLevel(logging.ERROR)  # it logs every oddity of a file it reads

# At most this many findings per message: a zip of a thousand executables needs one line each
# for a handful, not a thousand rows in the verdict.
MAX_FINDINGS = 50
# Parts bigger than this, or any container, are inspected in a thread.
INLINE_LIMIT = 64 * 1024

# Parser defects that mean a part's boundaries or body may be other than they look: content may
# be hidden from the checks (and shown by a mail client).
HIDING_DEFECTS = frozenset(
    {
        "StartBoundaryNotFoundDefect",
        "CloseBoundaryNotFoundDefect",
        "NoBoundaryInMultipartDefect",
        "MultipartInvariantViolationDefect",
        "MultipartConversionDefect",
        "MissingHeaderBodySeparatorDefect",
        "InvalidMultipartContentTransferEncodingDefect",
    }
)

MSI_CLSIDS = {
    "000C1084-0000-0000-C000-000000000046": "Windows Installer package (MSI)",
    "000C1086-0000-0000-C000-000000000046": "Windows Installer patch (MSP)",
    "000C1082-0000-0000-C000-000000000046": "Windows Installer transform (MST)",
}

TYPE_SYMBOLS = {
    Kind.EXECUTABLE: "ATTACHMENT_EXECUTABLE",
    Kind.SCRIPT: "ATTACHMENT_SCRIPT",
    Kind.MACRO: "ATTACHMENT_MACRO",
    Kind.DISK_IMAGE: "ATTACHMENT_DISK_IMAGE",
}


class AttachmentCheck:
    """Attachments by true type and name, archives recursively, MIME structure limits."""

    name = "attachments"

    async def check(self, message: ParsedMessage) -> list[Finding]:
        settings = message.policy.attachments
        if _needs_thread(message):
            return await asyncio.to_thread(inspect_message, message, settings)
        return inspect_message(message, settings)


def _needs_thread(message: ParsedMessage) -> bool:
    for part in message.parts[: message.policy.attachments.max_mime_parts]:
        if len(part.payload) > INLINE_LIMIT:
            return True
        found = sniff(part.payload)
        if found.kind in (Kind.ARCHIVE, Kind.DOCUMENT):
            return True
    return False


def inspect_message(message: ParsedMessage, settings: AttachmentSettings) -> list[Finding]:
    """Every finding for one message; never raises on malformed input."""
    inspector = Inspector(
        settings, message.policy.check_timeout * archives.TOOL_SHARE, message.policy.symbol_table
    )
    inspector.mime_structure(message)
    for index, part in enumerate(message.parts[: settings.max_mime_parts]):
        inspector.part(index, part.filename, part.content_type, part.payload, part.part)
    return inspector.result()


class Inspector:
    """One message's inspection: its findings and what is left of its archive budget."""

    def __init__(
        self,
        settings: AttachmentSettings,
        tool_seconds: float = 15.0,
        table: SymbolTable | None = None,
    ) -> None:
        self.settings = settings
        self.table = table or ScannerSettings(attachments=settings).symbol_table
        self.blocked_types = {Kind(kind) for kind in settings.blocked_types}
        self.blocked_extensions = {e.lower().lstrip(".") for e in settings.blocked_extensions}
        self.budget = Budget(
            Limits(
                max_entries=settings.max_entries,
                max_total_uncompressed=settings.max_total_uncompressed,
                max_ratio=settings.max_ratio,
                bomb_min_size=settings.bomb_min_size,
                tool_seconds=tool_seconds,
            )
        )
        self.findings: dict[tuple[str, str], Finding] = {}
        self.dropped = 0

    # --- findings ---------------------------------------------------------------------------

    def add(self, symbol: str, detail: str) -> None:
        key = (symbol, detail)
        if key in self.findings:
            return
        if len(self.findings) >= MAX_FINDINGS:
            self.dropped += 1
            return
        # The table says what the symbol counts for (the *_action switches are part of it).
        self.findings[key] = self.table.finding(AttachmentCheck.name, symbol, detail[:300])

    def result(self) -> list[Finding]:
        findings = list(self.findings.values())
        if self.dropped:
            log.info("attachments: %d more findings not recorded", self.dropped)
        return findings

    # --- MIME structure ---------------------------------------------------------------------

    def mime_structure(self, message: ParsedMessage) -> None:
        """Depth (measured by the parse, which stops at the limit: ``too_deep``), part count
        and header bytes, walked without recursion and stopped at the first limit passed;
        parser defects that may hide content."""
        settings = self.settings
        if message.too_deep:
            self.add("MIME_UNSCANNABLE", f"MIME nesting deeper than {settings.max_mime_depth}")
            return
        header_bytes = 0
        defects: set[str] = set()
        for parts, (node, _) in enumerate(walk(message.message), start=1):
            header_bytes += sum(len(name) + len(str(value)) + 4 for name, value in node.raw_items())
            defects.update(type(defect).__name__ for defect in node.defects)
            if parts > settings.max_mime_parts:
                self.add("MIME_UNSCANNABLE", f"more than {settings.max_mime_parts} MIME parts")
                break
            if header_bytes > settings.max_header_bytes:
                self.add(
                    "MIME_UNSCANNABLE", f"more than {settings.max_header_bytes} bytes of headers"
                )
                break
        hiding = sorted(defects & HIDING_DEFECTS)
        if hiding:
            self.add("MIME_DEFECT", "parser defects: " + ", ".join(hiding))

    # --- parts and files --------------------------------------------------------------------

    def part(
        self, index: int, filename: str | None, content_type: str, payload: bytes, part: Message
    ) -> None:
        try:
            disposition = part.get_content_disposition() or ""
        except Exception:  # a header too broken to parse: judge by the rest
            disposition = ""
        attachment = (
            bool(filename) or disposition == "attachment" or not content_type.startswith("text/")
        )
        path = filename or f"part {index + 1} ({content_type})"
        self.file(path, filename, payload, depth=0, attachment=attachment)

    def file(self, path: str, name: str | None, data: bytes, depth: int, attachment: bool) -> None:
        """Apply the name and type rules to one file, and open it if it is an archive."""
        normal = normalise_name(name) if name else ""
        ext = extension(normal)
        if ext and ext in self.blocked_extensions:
            self.add("ATTACHMENT_BLOCKED_EXTENSION", f"{path}: .{ext} files are blocked")
        found = sniff(data)
        archive = None
        if found.label == "zip":
            found, archive = self.refine_zip(path, data, found)
        elif data[:8] == OLE2_MAGIC:
            found = self.refine_ole(path, data, found)
        # A text part that opens with "#!" is prose more often than a program: a script by
        # content counts only where it is a file (an attachment or an archive member).
        if found.kind == Kind.SCRIPT and not attachment:
            return
        if found.kind in self.blocked_types:
            self.add(TYPE_SYMBOLS[found.kind], f"{path}: {found.label}")
        if self.settings.type_mismatch and ext and is_disguise(ext, found):
            self.add("ATTACHMENT_TYPE_MISMATCH", f"{path}: named .{ext} but is {found.label}")
        if found.kind == Kind.OPAQUE_ARCHIVE:
            self.add("ARCHIVE_OPAQUE", f"{path}: {found.label} archive not opened")
        elif found.kind == Kind.ARCHIVE or archive is not None:
            self.open_archive(path, normal or path, data, found, depth, archive)
        elif documents.looks_like_pdf(data, found, attachment):
            self.pdf(path, data, depth)

    def pdf(self, path: str, data: bytes, depth: int) -> None:
        """A PDF's active content (``documents.scan_pdf``); its embedded files are files, one
        level down, as an archive's members."""
        extract = depth < self.settings.max_depth
        scan = documents.scan_pdf(data, path, self.budget, extract=extract)
        if scan.active:
            self.add("ATTACHMENT_PDF_ACTIVE", f"{path}: {scan.describe()}")
        for problem in scan.problems:
            self.archive_problem(problem)
        for member in scan.embedded:
            if member.data is not None:
                self.file(f"{path}/{member.name}", member.name, member.data, depth + 1, True)

    def open_archive(
        self,
        path: str,
        name: str,
        data: bytes,
        found: FileType,
        depth: int,
        archive: zipfile.ZipFile | None,
    ) -> None:
        if depth >= self.settings.max_depth:
            if found.kind != Kind.ARCHIVE:  # a document that deep: its embeddings stay unseen
                return
            self.add(
                "ARCHIVE_LIMIT", f"{path}: archives nested deeper than {self.settings.max_depth}"
            )
            return
        try:
            for member in self.members(path, name, data, found, archive):
                member_path = f"{path}/{member.name}"
                if member.data is None:  # encrypted, or not extracted: judged by its name
                    if member.encrypted:
                        self.encrypted(member_path, "encrypted archive member")
                    member_ext = extension(normalise_name(member.name))
                    if member_ext in self.blocked_extensions:
                        self.add(
                            "ATTACHMENT_BLOCKED_EXTENSION",
                            f"{member_path}: .{member_ext} files are blocked",
                        )
                    continue
                self.file(member_path, member.name, member.data, depth + 1, attachment=True)
        except ArchiveProblem as exc:
            self.archive_problem(exc)

    def members(
        self,
        path: str,
        name: str,
        data: bytes,
        found: FileType,
        archive: zipfile.ZipFile | None,
    ) -> Iterable[Member]:
        if archive is not None:
            if found.kind == Kind.ARCHIVE:
                return archives.zip_members(archive, path, self.budget)
            # An Office document: its embedded files are files too (an OLE package, a docm
            # inside a docx); the rest is the document's own XML.
            return archives.zip_members(archive, path, self.budget, only="/embeddings/")
        if found.label == "tar":
            return archives.tar_members(data, path, self.budget)
        if found.label == "7z":
            return archives.sevenzip_members(data, path, self.budget)
        if found.label == "rar":
            return archives.rar_members(data, path, self.budget)
        if found.label == "gzip":
            return [archives.gunzip(data, name, path, self.budget)]
        if found.label == "bzip2":
            return [archives.bunzip2(data, name, path, self.budget)]
        if found.label == "xz":
            return [archives.unxz(data, name, path, self.budget)]
        return []

    def encrypted(self, path: str, what: str) -> None:
        self.add("ARCHIVE_ENCRYPTED", f"{path}: {what}")

    # --- containers: what a zip or an OLE2 file really is -----------------------------------

    def refine_zip(
        self, path: str, data: bytes, found: FileType
    ) -> tuple[FileType, zipfile.ZipFile | None]:
        """A zip is an archive unless it is an Office/OpenDocument file or a Java archive; an
        Office file with ``vbaProject.bin`` carries macros. The central directory is checked
        for bombs before anything is inflated: an archive's every member, a document's
        embedded files (the only members of a document that are opened)."""
        try:
            archive = archives.open_zip(data, path, self.budget.limits)
        except archives.ArchiveProblem as exc:
            self.archive_problem(exc)
            return found, None
        found = _zip_kind(archive, found)
        if found.kind == Kind.EXECUTABLE:  # a Java archive: blocked as it is
            return found, None
        only = None if found.kind == Kind.ARCHIVE else "/embeddings/"
        try:
            archives.check_zip_metadata(archive, len(data), path, self.budget.limits, only)
        except archives.ArchiveProblem as exc:
            self.archive_problem(exc)
            return found, None
        return found, archive

    def archive_problem(self, exc: ArchiveProblem) -> None:
        if isinstance(exc, archives.Bomb):
            self.add("ARCHIVE_BOMB", str(exc))
        elif isinstance(exc, archives.Encrypted):
            self.add("ARCHIVE_ENCRYPTED", str(exc))
        elif isinstance(exc, archives.Corrupt):
            self.add("ARCHIVE_CORRUPT", str(exc))
        elif isinstance(exc, archives.Opaque):
            self.add("ARCHIVE_OPAQUE", str(exc))
        else:
            self.add("ARCHIVE_LIMIT", str(exc))

    def refine_ole(self, path: str, data: bytes, found: FileType) -> FileType:
        """An OLE2 compound file: an installer (MSI), an encrypted Office file, or a document
        with or without a VBA project."""
        try:
            ole = olefile.OleFileIO(data)
        except Exception:  # olefile raises many kinds on a malformed file: then it stays OLE2
            return found
        try:
            clsid = str(ole.root.clsid or "").upper() if ole.root is not None else ""
            if clsid in MSI_CLSIDS:
                return FileType(Kind.EXECUTABLE, MSI_CLSIDS[clsid])
            entries = [[str(e).lower() for e in entry] for entry in ole.listdir(True, True)]
            if ["encryptedpackage"] in entries:
                self.encrypted(path, "encrypted Office document")
                return FileType(Kind.DOCUMENT, "encrypted Office document")
            if any(
                entry[0] in ("macros", "_vba_project_cur", "vba") or "vba" in entry[:-1]
                for entry in entries
            ):
                return FileType(Kind.MACRO, "Office document with VBA macros (OLE2)")
            legacy = documents.legacy_office(ole, entries)  # XLM sheets, PowerPoint 97 VBA
            if legacy == documents.ENCRYPTED_WORKBOOK:
                self.encrypted(path, legacy.label)
            if legacy is not None:
                return legacy
        except Exception:
            return found
        finally:
            ole.close()
        return found


def _zip_kind(archive: zipfile.ZipFile, found: FileType) -> FileType:
    """What a zip really is, from its member names."""
    names = [info.filename.lower() for info in archive.infolist()]
    if any(n.endswith("vbaproject.bin") for n in names):
        return FileType(Kind.MACRO, "Office document with VBA macros (vbaProject.bin)")
    if "[content_types].xml" in names:
        return documents.ooxml_macros(archive, names) or FileType(
            Kind.DOCUMENT, "Office Open XML document"
        )
    if "mimetype" in names and "meta-inf/manifest.xml" in names:
        modules = [n for n in names if n.startswith("basic/") and n.endswith(".xml")]
        if any(
            not n.endswith(("script-lc.xml", "script-lb.xml", "dialog-lc.xml")) for n in modules
        ):
            return FileType(Kind.MACRO, "OpenDocument with Basic macros")
        return FileType(Kind.DOCUMENT, "OpenDocument")
    if "meta-inf/manifest.mf" in names and any(n.endswith(".class") for n in names):
        return FileType(Kind.EXECUTABLE, "Java archive (JAR)")
    return found
