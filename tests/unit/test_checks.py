"""The checks and their runner: decoding, failures as findings, timeouts, the registry."""

from __future__ import annotations

import asyncio
import base64
from email.message import EmailMessage
from email.policy import SMTP

import pytest

from moat.model import Category, Finding
from moat.settings import Settings
from services.scanner.checks import (
    EICAR,
    GTUBE,
    EicarCheck,
    GtubeCheck,
    ParsedMessage,
    build_checks,
    parse,
    run_checks,
    validate_registry,
)


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
