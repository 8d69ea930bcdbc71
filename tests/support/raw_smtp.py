"""An SMTP client that sends exactly the bytes a test gives it: smtplib re-encodes commands and
rewrites line endings in DATA, which is the very input the bad-input tests need to send."""

from __future__ import annotations

import re
import socket
from types import TracebackType

_QUEUED_AS = re.compile(rb"queued as (\S+)")


class RawSMTP:
    """One SMTP session over a plain socket; every reply is read whole (multi-line too)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 30) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def __enter__(self) -> RawSMTP:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def reply(self) -> tuple[int, bytes]:
        """The next reply: its code and its text, lines joined by LF, without the code."""
        lines: list[bytes] = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError(f"connection closed after {lines!r}")
            lines.append(line[4:].rstrip(b"\r\n"))
            if line[3:4] != b"-":
                return int(line[:3]), b"\n".join(lines)

    def command(self, line: bytes) -> tuple[int, bytes]:
        """Send one command line (CRLF added) and read its reply."""
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def data(self, content: bytes) -> tuple[int, bytes]:
        """DATA, then ``content`` byte for byte (it ends with CRLF; dot-stuffing is the
        caller's), then the end-of-data line; the reply to the end of data."""
        assert content.endswith(b"\r\n"), "the end-of-data line must start a line"
        code, text = self.command(b"DATA")
        assert code == 354, (code, text)
        self.sock.sendall(content + b".\r\n")
        return self.reply()

    def transaction(
        self, mail_from: bytes, rcpt_tos: list[bytes], content: bytes
    ) -> tuple[int, bytes]:
        """EHLO, MAIL, RCPT (each must be accepted) and DATA; the reply to the data."""
        assert self.command(b"EHLO client.test")[0] == 250
        code, text = self.command(b"MAIL FROM:<" + mail_from + b">")
        assert code == 250, (code, text)
        for rcpt in rcpt_tos:
            code, text = self.command(b"RCPT TO:<" + rcpt + b">")
            assert code == 250, (code, text)
        return self.data(content)


def queue_id(reply: tuple[int, bytes]) -> str:
    """The message id of a ``250 2.0.0 Ok: queued as <id>`` reply."""
    code, text = reply
    found = _QUEUED_AS.search(text)
    assert code == 250 and found is not None, reply
    return found.group(1).decode()
