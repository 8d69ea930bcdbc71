"""The checks and their runner: decoding, failures as findings, timeouts, the registry."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import SMTP, compat32

import pytest
from pydantic import ValidationError

from moat.migrate import upgrade
from moat.mime import walk
from moat.model import Category, Finding, VerdictName
from moat.settings import (
    AttachmentSettings,
    ClamAVSettings,
    ClassifierSettings,
    DnsSettings,
    ScannerSettings,
    Settings,
)
from services.scanner.checks import (
    EICAR,
    GTUBE,
    EicarCheck,
    Envelope,
    GtubeCheck,
    ParsedMessage,
    build_checks,
    parse,
    run_checks,
    validate_registry,
)
from services.scanner.checks.attachments import AttachmentCheck
from services.scanner.scanning import Scanner
from tests.support.clamd import ClamdServer
from tests.support.fakedns import FakeDNS
from tests.support.mime import nested_digest, nested_multipart, nested_rfc822


def message_with_attachment(payload: bytes, cte: str = "base64") -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"], message["To"], message["Subject"] = "a@b.test", "c@d.test", "s"
    message.set_content("see attached")
    message.add_attachment(
        payload, maintype="application", subtype="zip", filename="x.zip", cte=cte
    )
    return message.as_bytes()


def symbols(findings: list[Finding]) -> set[str]:
    return {f.symbol for f in findings}


def test_eicar_found_after_base64_and_quoted_printable_decoding() -> None:
    for cte in ("base64", "quoted-printable"):
        raw = message_with_attachment(b"prefix " + EICAR + b" suffix", cte)
        assert EICAR not in raw or cte == "quoted-printable"
        found = asyncio.run(EicarCheck().check(parse("m1", raw)))
        assert symbols(found) == {"EICAR_TEST_FILE"}, cte


def test_eicar_and_gtube_absent_from_clean_mail() -> None:
    parsed = parse("m1", message_with_attachment(b"PK\x03\x04 harmless"))
    assert asyncio.run(EicarCheck().check(parsed)) == []
    assert asyncio.run(GtubeCheck().check(parsed)) == []


def test_gtube_in_the_body() -> None:
    raw = b"From: a@b.test\r\nSubject: s\r\n\r\nhello " + GTUBE + b"\r\n"
    assert symbols(asyncio.run(GtubeCheck().check(parse("m1", raw)))) == {"GTUBE"}


def test_base64_split_across_lines_is_decoded() -> None:
    encoded = base64.encodebytes(b"x" * 50 + EICAR)  # 76-column lines
    raw = (
        b"From: a@b.test\r\nMIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded.replace(b"\n", b"\r\n")
    )
    assert symbols(asyncio.run(EicarCheck().check(parse("m1", raw)))) == {"EICAR_TEST_FILE"}


def test_malformed_mime_still_parses() -> None:
    raw = (
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!\r\n"
    )  # no closing
    parsed = parse("m1", raw)
    assert isinstance(parsed, ParsedMessage)
    assert asyncio.run(EicarCheck().check(parsed)) == []


class Exploding:
    name = "exploding"

    async def check(self, message: ParsedMessage) -> list[Finding]:
        raise RuntimeError("engine down")


class Slow:
    name = "slow"

    async def check(self, message: ParsedMessage) -> list[Finding]:
        await asyncio.sleep(10)
        return []


def test_a_check_that_fails_or_overruns_yields_a_failure_finding() -> None:
    parsed = parse("m1", b"Subject: s\r\n\r\nbody\r\n")
    findings = asyncio.run(run_checks([Exploding(), Slow(), EicarCheck()], parsed, 0.05))
    by_check = {f.check: f for f in findings}
    assert by_check["exploding"].category == Category.FAILURE
    assert by_check["exploding"].symbol == "EXPLODING_FAIL"
    assert by_check["slow"].category == Category.FAILURE
    assert by_check["slow"].detail == "timed out"
    assert by_check["eicar"].symbol == "EICAR_NONE"  # misses are recorded too
    assert all(f.elapsed_ms >= 0 for f in findings)


def test_duplicate_check_names_fail_at_start_up() -> None:
    validate_registry(build_checks(Settings()))
    with pytest.raises(ValueError, match="eicar"):
        validate_registry([EicarCheck(), EicarCheck()])


# --- MIME depth: measured while parsing, never by recursion ------------------------------------

NESTINGS = pytest.mark.parametrize(
    ("nested", "levels_per_depth"),
    [(nested_multipart, 1), (nested_rfc822, 1), (nested_digest, 2)],
    ids=["multipart", "message-rfc822", "digest"],
)
TOP = b"From: a@outside.test\r\nTo: b@example.test\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"


def depth_policy(max_mime_depth: int) -> ScannerSettings:
    return ScannerSettings(attachments=AttachmentSettings(max_mime_depth=max_mime_depth))


def deepest(parsed: ParsedMessage) -> int:
    return max(depth for _, depth in walk(parsed.message))


def test_walk_gives_every_entity_with_its_depth_in_walk_order() -> None:
    raw = TOP + (
        b'Content-Type: multipart/mixed; boundary="o"\r\n\r\n'
        b"--o\r\nContent-Type: text/plain\r\n\r\nfirst\r\n"
        b"--o\r\nContent-Type: message/rfc822\r\n\r\n"
        b'Content-Type: multipart/alternative; boundary="i"\r\n\r\n'
        b"--i\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
        b"--i\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--i--\r\n"
        b"--o\r\nContent-Type: application/pdf\r\n\r\n%PDF-\r\n--o--\r\n"
    )
    parsed = parse("m1", raw)
    walked = list(walk(parsed.message))
    assert [entity for entity, _ in walked] == list(parsed.message.walk())
    assert [(entity.get_content_type(), depth) for entity, depth in walked] == [
        ("multipart/mixed", 1),
        ("text/plain", 2),
        ("message/rfc822", 2),
        ("multipart/alternative", 3),
        ("text/plain", 4),
        ("text/html", 4),
        ("application/pdf", 2),
    ]
    assert [part.content_type for part in parsed.parts] == [
        "text/plain",
        "text/plain",
        "text/html",
        "application/pdf",
    ]
    assert not parsed.too_deep


@NESTINGS
@pytest.mark.parametrize("limit", [5, 20, 100])
def test_parse_stops_past_max_mime_depth(
    nested: Callable[[int], bytes], levels_per_depth: int, limit: int
) -> None:
    def depth(levels: int) -> int:  # from the top entity to the text part
        return levels * levels_per_depth + 1

    levels = (limit - 1) // levels_per_depth  # the deepest tree allowed; one level more is not
    assert depth(levels) <= limit < depth(levels + 1)
    allowed = parse("m1", TOP + nested(levels), policy=depth_policy(limit))
    assert not allowed.too_deep
    assert deepest(allowed) == depth(levels)
    assert [part.payload for part in allowed.parts] == [b"hello\r\n"]

    too_deep = parse("m1", TOP + nested(levels + 1), policy=depth_policy(limit))
    assert too_deep.too_deep
    assert too_deep.parts == ()
    assert deepest(too_deep) == 1 and not too_deep.message.is_multipart()
    assert too_deep.message["Subject"] == "deep"  # the checks still see the top header


@NESTINGS
def test_mime_1200_deep_is_no_recursion_error(
    nested: Callable[[int], bytes], levels_per_depth: int
) -> None:
    raw = TOP + nested(1200)
    with pytest.raises(RecursionError):  # what email's parser does with it unguarded
        BytesParser(policy=compat32).parsebytes(raw)
    parsed = parse("m1", raw)
    assert parsed.too_deep and parsed.parts == ()
    findings = asyncio.run(AttachmentCheck().check(parsed))
    assert [(f.symbol, f.category, f.detail) for f in findings] == [
        ("MIME_UNSCANNABLE", Category.POLICY, "MIME nesting deeper than 20")
    ]


def test_max_mime_depth_is_at_most_100() -> None:
    AttachmentSettings(max_mime_depth=100)
    with pytest.raises(ValidationError):
        AttachmentSettings(max_mime_depth=101)


@pytest.fixture(scope="module")
def every_check(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scanner]:
    """A scanner with every check on, ClamAV and DNS included (real clamd, DNS on loopback),
    allowed the deepest MIME there is, and a database (the sender lists' rules)."""
    database_url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('checks') / 'moat.db'}"
    upgrade(database_url)
    with ClamdServer() as clamd, FakeDNS({}) as dns:
        settings = Settings(
            database_url=database_url,
            domains={"example.test": {"relay": "127.0.0.1:2525"}},
            dns=DnsSettings(nameservers=["127.0.0.1"], port=dns.port, timeout=2),
            scanner=ScannerSettings(
                check_timeout=15,
                clamav=ClamAVSettings(enabled=True, socket=clamd.socket, scan_timeout=10),
                attachments=AttachmentSettings(max_mime_depth=100),
                classifier=ClassifierSettings(poll_interval=0),
            ),
        )
        yield Scanner(settings)


ENVELOPE = Envelope(
    mail_from="a@outside.test", rcpt_tos=("b@example.test",), client_address="192.0.2.1"
)


@NESTINGS
def test_no_check_recurses_on_mime_as_deep_as_allowed(
    every_check: Scanner, nested: Callable[[int], bytes], levels_per_depth: int
) -> None:
    raw = TOP + nested(99 // levels_per_depth)
    result = asyncio.run(every_check.scan("m1", raw, ENVELOPE))
    assert not result.message.too_deep and deepest(result.message) >= 99
    assert [f for f in result.findings if f.category == Category.FAILURE] == []
    assert "MIME_UNSCANNABLE" not in symbols(result.findings)
    assert len({f.check for f in result.findings}) == len(every_check.checks)


@NESTINGS
def test_mime_too_deep_is_judged_by_policy_with_every_check(
    every_check: Scanner, nested: Callable[[int], bytes], levels_per_depth: int
) -> None:
    result = asyncio.run(every_check.scan("m1", TOP + nested(1200), ENVELOPE))
    verdict = every_check.judge(result)  # a failed check would raise Undecidable
    assert verdict.verdict == VerdictName.POLICY
    assert "MIME_UNSCANNABLE" in symbols(verdict.findings)
