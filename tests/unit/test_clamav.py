"""The ClamAV check against a real clamd (Debian's clamav-daemon) on a unix socket in a temp
dir, loading only the test signatures of tests/fixtures/clamav/. clamd missing fails these
tests (scripts/ensure-clamav.sh installs it); it is never a skip."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest

from moat.model import Category, Finding, VerdictName
from moat.settings import ClamAVSettings, ScannerSettings, Settings
from services.scanner.checks import EICAR, ParsedMessage, build_checks, parse, run_checks
from services.scanner.checks.clamav import (
    ClamAVCheck,
    Clamd,
    ClamdError,
    StreamTooBig,
    parse_reply,
)
from services.scanner.verdict import decide
from tests.support.clamd import (
    EICAR_SIGNATURE,
    HASH_SIGNATURE,
    MARKER,
    MARKER_SIGNATURE,
    ClamdServer,
    hash_test_file,
)

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"


@pytest.fixture(scope="module")
def clamd() -> Iterator[ClamdServer]:
    # StreamMaxLength 1M, so a test can send more than clamd takes.
    with ClamdServer(stream_max_length="1M") as server:
        yield server


def policy(clamd: ClamdServer | None = None, **clamav: Any) -> ScannerSettings:
    values: dict[str, Any] = {"enabled": True, "scan_timeout": 5.0}
    if clamd is not None:
        values["socket"] = clamd.socket
    values.update(clamav)
    return ScannerSettings(check_timeout=10.0, clamav=ClamAVSettings(**values))


def mail(*attachments: tuple[bytes, str, str | None], body: str = "Hello.") -> bytes:
    """A message with attachments given as (payload, content type, filename)."""
    message = EmailMessage(policy=SMTP)
    message["From"], message["To"], message["Subject"] = "a@outside.test", "b@example.test", "s"
    message.set_content(body)
    for payload, content_type, filename in attachments:
        maintype, subtype = content_type.split("/")
        message.add_attachment(payload, maintype=maintype, subtype=subtype, filename=filename)
    return message.as_bytes()


def scan(raw: bytes, scanner_policy: ScannerSettings) -> list[Finding]:
    return asyncio.run(
        ClamAVCheck(scanner_policy.clamav).check(parse("m1", raw, policy=scanner_policy))
    )


def by_symbol(findings: list[Finding]) -> dict[str, list[Finding]]:
    result: dict[str, list[Finding]] = {}
    for finding in findings:
        result.setdefault(finding.symbol, []).append(finding)
    return result


def signatures(findings: list[Finding]) -> set[str]:
    """Signature names without clamd's ``.UNOFFICIAL`` suffix for non-official databases."""
    return {f.detail.removesuffix(".UNOFFICIAL") for f in findings if f.symbol == "CLAMAV_VIRUS"}


# --- against the real clamd --------------------------------------------------------------------


def test_clean_message_has_no_findings_and_the_runner_records_none(clamd: ClamdServer) -> None:
    scanner_policy = policy(clamd)
    raw = mail((b"%PDF-1.4 harmless", "application/pdf", "report.pdf"))
    assert scan(raw, scanner_policy) == []
    parsed = parse("m1", raw, policy=scanner_policy)
    findings = asyncio.run(run_checks([ClamAVCheck(scanner_policy.clamav)], parsed, 10.0))
    assert [f.symbol for f in findings] == ["CLAMAV_NONE"]
    assert decide(findings, scanner_policy).verdict == VerdictName.CLEAN


def test_eicar_in_a_base64_attachment_is_a_virus(clamd: ClamdServer) -> None:
    raw = mail((b"prefix " + EICAR + b" suffix", "application/octet-stream", "eicar.com"))
    assert EICAR not in raw  # only base64 on the wire
    findings = scan(raw, policy(clamd))
    assert signatures(findings) == {EICAR_SIGNATURE}
    (virus,) = findings  # found in the raw message and the part: reported once
    assert virus.category == Category.VIRUS and virus.score == 100.0 and virus.check == "clamav"
    assert decide(findings, policy(clamd)).verdict == VerdictName.VIRUS


def test_custom_body_and_hash_signatures(clamd: ClamdServer) -> None:
    marker = mail((b"some text " + MARKER + b" more text", "text/plain", "notes.txt"))
    assert signatures(scan(marker, policy(clamd))) == {MARKER_SIGNATURE}
    hashed = mail((hash_test_file(), "application/octet-stream", "blob.bin"))
    assert signatures(scan(hashed, policy(clamd))) == {HASH_SIGNATURE}
    # One byte more and the hash signature no longer matches: clamd really compared the MD5.
    changed = mail((hash_test_file() + b"\0", "application/octet-stream", "blob.bin"))
    assert scan(changed, policy(clamd)) == []
    # Both in one message: two findings, one per signature.
    both = mail(
        (MARKER, "application/octet-stream", "a.bin"),
        (hash_test_file(), "application/octet-stream", "b.bin"),
    )
    assert signatures(scan(both, policy(clamd))) == {MARKER_SIGNATURE, HASH_SIGNATURE}


def test_marker_inside_a_zip_is_found(clamd: ClamdServer) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("readme.txt", "nothing to see")
        archive.writestr("inner/payload.txt", b"lorem ipsum " * 50 + MARKER + b" dolor " * 50)
    data = buffer.getvalue()
    assert MARKER not in data  # compressed: only clamd's unpacking can see it
    assert signatures(scan(mail((data, "application/zip", "invoice.zip")), policy(clamd))) == {
        MARKER_SIGNATURE
    }


def test_each_attachment_is_streamed_on_its_own(clamd: ClamdServer) -> None:
    # The whole message is over max_stream_bytes, so only the part's own stream can find it.
    payload = MARKER + b"\n" + b"x" * 2000
    raw = mail((payload, "application/octet-stream", "small.bin"), body="y" * 20_000)
    findings = by_symbol(scan(raw, policy(clamd, max_stream_bytes=10_000)))
    assert signatures(findings["CLAMAV_VIRUS"]) == {MARKER_SIGNATURE}
    (too_big,) = findings["CLAMAV_TOO_BIG"]
    assert too_big.category == Category.INFO and too_big.detail.startswith("message:")


def test_oversize_part_is_an_info_finding_not_a_failure(clamd: ClamdServer) -> None:
    big = b"\x89PNG" + bytes(range(256)) * 100  # 25.6 KB, over a 20 KB limit
    raw = mail((big, "image/png", "photo.png"))
    findings = scan(raw, policy(clamd, max_stream_bytes=20_000))
    assert {f.symbol for f in findings} == {"CLAMAV_TOO_BIG"}
    assert sorted(f.detail.split(":")[0] for f in findings) == ["message", "photo.png"]
    assert all(f.category == Category.INFO for f in findings)
    assert decide(findings, policy(clamd)).verdict == VerdictName.CLEAN


def test_clamd_refusing_a_stream_over_its_own_limit_is_too_big(clamd: ClamdServer) -> None:
    # Our limit (4 MB) is above clamd's StreamMaxLength (1M): clamd answers "size limit
    # exceeded" mid-stream; that is reported as too big, not as a failure.
    big = bytes(range(256)) * 6000  # 1.5 MB
    with pytest.raises(StreamTooBig):
        asyncio.run(Clamd(clamd.socket).instream(big))
    findings = scan(
        mail((big, "application/octet-stream", "big.bin")),
        policy(clamd, max_stream_bytes=4_000_000),
    )
    assert {f.symbol for f in findings} == {"CLAMAV_TOO_BIG"}
    assert any("StreamMaxLength" in f.detail for f in findings)


def test_tcp_socket(clamd: ClamdServer) -> None:
    raw = mail((MARKER, "application/octet-stream", "a.bin"))
    found = scan(raw, policy(None, socket="/nonexistent/clamd.ctl", tcp=clamd.tcp))
    assert signatures(found) == {MARKER_SIGNATURE}
    assert asyncio.run(Clamd(tcp=clamd.tcp).command("PING")) == "PONG"


def test_clamd_stopped_raises_and_recovers() -> None:
    raw = mail((MARKER, "application/octet-stream", "a.bin"))
    with ClamdServer() as server:
        closed = policy(server)
        assert signatures(scan(raw, closed)) == {MARKER_SIGNATURE}
        server.stop()
        with pytest.raises(ClamdError):
            scan(raw, closed)
        # Through the runner: a failure finding, and no verdict (the message is retried).
        parsed = parse("m1", raw, policy=closed)
        findings = asyncio.run(run_checks([ClamAVCheck(closed.clamav)], parsed, 10.0))
        assert [(f.symbol, f.category) for f in findings] == [("CLAMAV_FAIL", Category.FAILURE)]
        # fail_closed off: an info finding, and the rest of the verdict stands.
        opened = policy(server, fail_closed=False)
        (unavailable,) = scan(raw, opened)
        assert unavailable.symbol == "CLAMAV_UNAVAILABLE"
        assert unavailable.category == Category.INFO
        assert decide([unavailable], opened).verdict == VerdictName.CLEAN
        server.start()
        assert signatures(scan(raw, closed)) == {MARKER_SIGNATURE}


# --- against a silent clamd: accepts connections and never answers ----------------------------


class SilentClamd:
    """A unix socket server on loopback that accepts and reads but never answers; counts the
    connections open at once (exactly: a client's close is seen before its next connect is
    counted, since each accept first drains the open connections)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(64)
        self.server.settimeout(0.05)
        self.connections: list[socket.socket] = []
        self.most_open = 0
        self.accepted = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _drain(self) -> None:
        """Read what the clients sent; forget those that hung up."""
        still_open = []
        for conn in self.connections:
            try:
                while conn.recv(65536):
                    pass
                conn.close()  # b"": the client closed it
            except BlockingIOError:
                still_open.append(conn)
            except OSError:
                conn.close()
        self.connections = still_open

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                self._drain()
                continue
            except OSError:
                return
            conn.setblocking(False)
            self._drain()
            self.connections.append(conn)
            self.accepted += 1
            self.most_open = max(self.most_open, len(self.connections))

    def __enter__(self) -> SilentClamd:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.server.close()
        for conn in self.connections:
            conn.close()


def test_slow_clamd_times_out_within_the_scan_timeout(tmp_path: Path) -> None:
    raw = mail((MARKER, "application/octet-stream", "a.bin"))
    with SilentClamd(tmp_path / "silent.sock") as silent:
        slow = policy(socket=silent.path, scan_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(ClamdError):
            scan(raw, slow)
        assert time.monotonic() - started < 3
        (unavailable,) = scan(raw, policy(socket=silent.path, scan_timeout=0.3, fail_closed=False))
        assert unavailable.symbol == "CLAMAV_UNAVAILABLE" and "0.3s" in unavailable.detail


def test_scans_in_flight_are_bounded_by_max_connections(tmp_path: Path) -> None:
    attachments = [(bytes([i]) * 100, "application/octet-stream", f"{i}.bin") for i in range(6)]
    raw = mail(*attachments)
    with SilentClamd(tmp_path / "silent.sock") as silent:
        findings = scan(
            raw, policy(socket=silent.path, scan_timeout=0.3, max_connections=2, fail_closed=False)
        )
        assert [f.symbol for f in findings] == ["CLAMAV_UNAVAILABLE"]
        assert silent.accepted == 7  # the message and its six attachments, each tried
        assert silent.most_open == 2


def test_overall_budget_keeps_the_check_under_the_runner_timeout(tmp_path: Path) -> None:
    # Six scans of 0.5 s one at a time would take 3.5 s; the check_timeout is 1 s: the check
    # reports by itself (0.9 s) rather than being cut off by the runner.
    attachments = [(bytes([i]) * 100, "application/octet-stream", f"{i}.bin") for i in range(6)]
    raw = mail(*attachments)
    with SilentClamd(tmp_path / "silent.sock") as silent:
        scanner_policy = ScannerSettings(
            check_timeout=1.0,
            clamav=ClamAVSettings(
                enabled=True,
                socket=silent.path,
                scan_timeout=0.5,
                max_connections=1,
                fail_closed=False,
            ),
        )
        parsed = parse("m1", raw, policy=scanner_policy)
        started = time.monotonic()
        findings = asyncio.run(run_checks([ClamAVCheck(scanner_policy.clamav)], parsed, 1.0))
        assert time.monotonic() - started < 1.0
        assert [f.symbol for f in findings] == ["CLAMAV_UNAVAILABLE"]


# --- the protocol's answers, registration and settings -----------------------------------------


def test_parse_reply() -> None:
    assert parse_reply(b"stream: OK\0") is None
    assert parse_reply(b"stream: Win.Test.EICAR_HDB-1 FOUND\0") == "Win.Test.EICAR_HDB-1"
    with pytest.raises(StreamTooBig):
        parse_reply(b"INSTREAM size limit exceeded. ERROR\0")
    for reply in (b"stream: Can't allocate memory ERROR\0", b"UNKNOWN COMMAND\0", b"\0"):
        with pytest.raises(ClamdError) as raised:
            parse_reply(reply)
        assert not isinstance(raised.value, StreamTooBig)


def test_disabled_by_default_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        names = [check.name for check in build_checks(Settings())]
    assert "clamav" not in names
    assert "ClamAV disabled: mail is not virus-scanned" in caplog.text


def test_enabled_globally_or_for_one_domain(clamd: ClamdServer) -> None:
    enabled = Settings(scanner={"clamav": {"enabled": True, "socket": str(clamd.socket)}})
    assert "clamav" in [check.name for check in build_checks(enabled)]
    one_domain = Settings(
        domains={
            "example.test": {
                "relay": "127.0.0.1:25",
                "scanner": {"clamav": {"enabled": True, "socket": str(clamd.socket)}},
            },
            "other.test": {"relay": "127.0.0.1:25"},
        }
    )
    (check,) = [c for c in build_checks(one_domain) if c.name == "clamav"]
    raw = mail((MARKER, "application/octet-stream", "a.bin"))

    def run(domain: str) -> list[Finding]:
        parsed: ParsedMessage = parse(
            "m1", raw, policy=one_domain.scanner_policy(domain), domain=domain
        )
        return asyncio.run(check.check(parsed))

    assert signatures(run("example.test")) == {MARKER_SIGNATURE}
    assert [f.symbol for f in run("other.test")] == ["CLAMAV_DISABLED"]


def test_settings_validation() -> None:
    with pytest.raises(ValueError):
        ClamAVSettings(tcp="no-port")
    with pytest.raises(ValueError):
        ClamAVSettings(max_connections=0)


# --- the corpus: every kind of message passes through without raising -------------------------


def corpus_sample(step: int) -> Iterator[tuple[str, bytes]]:
    """Every ``step``-th message of the shared corpus, in a fixed order."""
    files = sorted(
        p
        for folder in ("spamassassin", "mime-fixtures")
        for p in (CORPUS / folder).rglob("*")
        if p.is_file() and p.name != "README.md"
    )
    for path in files[::step]:
        yield str(path), path.read_bytes()
    archive = CORPUS / "phishing_pot" / "phishing-sample2500.tar.gz"
    with tarfile.open(archive, mode="r|gz") as tar:  # a stream: read once, in archive order
        members = (member for member in tar if member.isfile())
        for index, member in enumerate(members):
            if index % step == 0:
                handle = tar.extractfile(member)
                assert handle is not None
                yield member.name, handle.read()


def scan_corpus(clamd: ClamdServer, step: int) -> tuple[int, dict[str, int]]:
    scanner_policy = policy(clamd, max_stream_bytes=1024 * 1024)  # clamd's StreamMaxLength here
    check = ClamAVCheck(scanner_policy.clamav)
    counts: dict[str, int] = {}

    async def run() -> int:
        total = 0
        for name, raw in corpus_sample(step):
            try:
                findings = await check.check(parse(name, raw, policy=scanner_policy))
            except Exception as exc:
                raise AssertionError(f"{name}: {exc!r}") from exc
            for finding in findings:
                counts[finding.symbol] = counts.get(finding.symbol, 0) + 1
            total += 1
        return total

    return asyncio.run(run()), counts


@pytest.mark.skipif(not CORPUS.is_dir(), reason="the shared corpus is not beside the checkout")
def test_corpus_sample_never_raises(clamd: ClamdServer) -> None:
    total, counts = scan_corpus(clamd, step=40)
    assert total > 200
    assert set(counts) <= {"CLAMAV_VIRUS", "CLAMAV_TOO_BIG"}, counts
