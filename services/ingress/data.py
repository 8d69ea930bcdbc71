"""Reading the DATA of an SMTP transaction in a few large reads instead of one per line.

aiosmtpd reads DATA one line at a time (a ``readuntil(b"\\r\\n")``, a debug log call, a few
list and length operations per line): about a hundred rounds of Python for a 5 KB message,
the largest part of ingress's CPU per message after the protocol's own commands. ``read_data``
gives the same result from a few reads:

- the data ends at the first line that is a lone dot, lines being split at CRLF only (a dot
  after a bare LF or a bare CR is not an end: SMTP smuggling is judged by the same rule as
  aiosmtpd's). In the stream that is ``CRLF . CRLF``, or ``. CRLF`` at its very start;
- the reads never take a byte past that end: what the client pipelined after it stays in the
  stream for the next command;
- a line longer than ``line_length_limit`` (with its CRLF) makes it ``TOO_LONG`` (500), more
  than ``data_size_limit`` bytes ``TOO_MUCH`` (552); whichever happened first in the stream
  wins, as in aiosmtpd (to the line), and once the data is too much nothing more of it is
  kept;
- then a dot at the start of a line is removed (RFC 5321 4.5.2).

``tests/unit/test_data_reader.py`` compares it with aiosmtpd's loop on random streams cut at
random points.
"""

from __future__ import annotations

import asyncio
import enum

_END = b"\r\n.\r\n"
_CRLF = b"\r\n"


class DataState(enum.Enum):
    NOMINAL = "nominal"
    TOO_LONG = "too long"  # a line over line_length_limit: 500
    TOO_MUCH = "too much"  # more than data_size_limit: 552


class _Collector:
    """The bytes of the data so far, and its state: a line too long and the size, in stream
    order."""

    def __init__(self, size_limit: int | None, line_limit: int) -> None:
        self.limit = size_limit
        self.line_limit = line_limit
        self.state = DataState.NOMINAL
        self.parts: list[bytes] = []
        self.size = 0  # bytes seen (kept or not)
        self.line = 0  # length of the line in progress (before this part)
        self.carry = b""

    def add(self, part: bytes) -> None:
        # A CR at the end of a part is held back until the next one says whether it begins a
        # CRLF: lines are measured between whole CRLFs.
        part = self.carry + part
        self.carry = b""
        if part.endswith(b"\r"):
            self.carry, part = b"\r", part[:-1]
        self._add(part)

    def flush(self) -> None:
        """The end of the data: what was held back is data too."""
        part, self.carry = self.carry, b""
        self._add(part)

    def _add(self, part: bytes) -> None:
        if not part:
            return
        if self.state is DataState.NOMINAL and self._may_be_refused(part):
            self._judge(part)
        self.line = _tail_line_length(part, self.line)
        self.size += len(part)
        if self.state is DataState.NOMINAL and not (self.limit and self.size > self.limit):
            self.parts.append(part)
        else:
            # Refused, or about to be once its line ends: keep nothing (aiosmtpd discards it
            # too), so a client cannot make us hold more than the limit.
            self.parts.clear()

    def _may_be_refused(self, part: bytes) -> bool:
        """Whether ``part`` passes the size limit or holds a line too long (cheap: C loops)."""
        if self.limit and self.size + len(part) > self.limit:
            return True
        lines = part.split(_CRLF)
        longest = max(self.line + len(lines[0]), max(map(len, lines)))
        return longest + 2 > self.line_limit

    def _judge(self, part: bytes) -> None:
        """Refuse as aiosmtpd does, line by line in stream order: a line whose text (without
        CRLF) is over the limit overruns its reader before any of it is counted (500); else
        once a line is read, first the size (552), then its length with the CRLF (500)."""
        start, line, size = 0, self.line, self.size
        while True:
            end = part.find(_CRLF, start)
            if end < 0:  # the line goes on in the next part
                if line + len(part) - start > self.line_limit:
                    self.state = DataState.TOO_LONG
                return
            text = line + end - start
            if text > self.line_limit:
                self.state = DataState.TOO_LONG
                return
            size += end + 2 - start
            if self.limit and size > self.limit:
                self.state = DataState.TOO_MUCH
                return
            if text + 2 > self.line_limit:
                self.state = DataState.TOO_LONG
                return
            start, line = end + 2, 0

    def content(self) -> bytes:
        return b"".join(self.parts)


def _tail_line_length(part: bytes, line: int) -> int:
    """The length of the line in progress after ``part`` (``line`` before it)."""
    last = part.rfind(_CRLF)
    return line + len(part) if last < 0 else len(part) - last - 2


async def read_data(
    reader: asyncio.StreamReader, size_limit: int | None, line_limit: int
) -> tuple[DataState, bytes]:
    """The data of one DATA command, up to its end, dot-unstuffed (see the module)."""
    collected = _Collector(size_limit, line_limit)
    # At a line start the end is a lone ". CRLF" that _END cannot see (its CRLF is already
    # read), and after a CR it may be the rest of _END: look a byte at a time until the
    # position is inside a line and the last byte taken is no CR. From there an end needs a
    # CRLF still in the stream, and _END finds it.
    at_line_start, after_cr = True, False
    while True:
        byte = await reader.readexactly(1)
        if at_line_start and byte == b".":
            try:
                rest = await reader.readuntil(_CRLF)
            except asyncio.LimitOverrunError as overrun:  # a line too long: inside it now
                collected.add(byte + await reader.readexactly(overrun.consumed))
                break
            if rest == _CRLF:  # ". CRLF" at a line start: the end
                return _finish(collected)
            collected.add(byte + rest)
            continue  # a whole line read: at a line start again
        collected.add(byte)
        if byte == b"\r":
            at_line_start, after_cr = False, True
            continue
        if byte == b"\n" and after_cr:
            at_line_start, after_cr = True, False
            continue
        break
    while True:
        try:
            chunk = await reader.readuntil(_END)
        except asyncio.LimitOverrunError as overrun:
            # No end begins in the first ``consumed`` bytes: take them, look again.
            collected.add(await reader.readexactly(overrun.consumed))
            continue
        collected.add(chunk[:-3])  # the end's CRLF ends the last line; ". CRLF" is not data
        return _finish(collected)


def _finish(collected: _Collector) -> tuple[DataState, bytes]:
    collected.flush()
    if collected.state is not DataState.NOMINAL:
        return collected.state, b""
    return collected.state, _unstuff(collected.content())


def _unstuff(data: bytes) -> bytes:
    """Remove the dot a client put before every line that begins with one."""
    if data.startswith(b"."):
        data = data[1:]
    return data.replace(b"\r\n.", b"\r\n")
