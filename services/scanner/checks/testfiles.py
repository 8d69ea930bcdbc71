"""The industry's test strings: EICAR (anti-virus) and GTUBE (anti-spam). Every gateway must
recognise them, so administrators can prove the scanning path end to end."""

from __future__ import annotations

from moat.model import Finding
from services.scanner.checks.base import ParsedMessage

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
GTUBE = rb"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def _contains(message: ParsedMessage, needle: bytes) -> bool:
    return needle in message.raw or any(needle in part for part in message.decoded_parts)


class EicarCheck:
    """The EICAR anti-virus test file, in the body or any attachment after decoding."""

    name = "eicar"

    async def check(self, message: ParsedMessage) -> list[Finding]:
        if _contains(message, EICAR):
            table = message.policy.symbol_table
            return [table.finding(self.name, "EICAR_TEST_FILE", "EICAR anti-virus test file")]
        return []


class GtubeCheck:
    """GTUBE, the generic test for unsolicited bulk email."""

    name = "gtube"

    async def check(self, message: ParsedMessage) -> list[Finding]:
        if _contains(message, GTUBE):
            table = message.policy.symbol_table
            return [table.finding(self.name, "GTUBE", "GTUBE spam test string")]
        return []
