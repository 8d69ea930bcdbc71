"""``services.ingress.data.read_data`` against aiosmtpd's own DATA loop (copied below from
aiosmtpd 1.4.6, ``SMTP.smtp_DATA``, as the reference): the same end of data, the same bytes
kept, the same refusal, and the same bytes left in the stream for the next command, for
random streams cut into random pieces (dots, bare CRs and LFs, long lines, big data)."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingress.data import DataState, read_data


async def aiosmtpd_data(
    reader: asyncio.StreamReader, limit: int | None, line_length_limit: int
) -> tuple[DataState, bytes]:
    """aiosmtpd 1.4.6's loop, as it reads and judges (its replies left out)."""
    data: list[bytearray] = []
    num_bytes = 0
    line_fragments: list[bytes] = []
    state = DataState.NOMINAL
    while True:
        try:
            line: bytes = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError as e:
            if state == DataState.NOMINAL:
                state = DataState.TOO_LONG
            data *= 0
            line = await reader.read(e.consumed)
        if not line_fragments and line == b".\r\n":
            break
        num_bytes += len(line)
        if state == DataState.NOMINAL and limit and num_bytes > limit:
            state = DataState.TOO_MUCH
            data *= 0
        line_fragments.append(line)
        if line.endswith(b"\r\n"):
            if state == DataState.NOMINAL:
                whole = b"".join(line_fragments)
                if len(whole) > line_length_limit:
                    state = DataState.TOO_LONG
                    data *= 0
                else:
                    data.append(bytearray(whole))
            line_fragments *= 0
    if state != DataState.NOMINAL:
        return state, b""
    for text in data:
        if text.startswith(b"."):
            del text[0]
    return state, b"".join(data)


async def run(
    reader_function: object, pieces: list[bytes], size_limit: int | None, line_limit: int
) -> tuple[DataState, bytes, bytes]:
    reader = asyncio.StreamReader(limit=line_limit)

    async def feed() -> None:
        for piece in pieces:
            reader.feed_data(piece)
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.create_task(feed())
    state, content = await reader_function(reader, size_limit, line_limit)  # type: ignore[operator]
    await feeder
    return state, content, await reader.read()


TOKENS = [b".", b"..", b"\r", b"\n", b"\r\n", b"a", b"bc", b"x" * 7, b".\r\n", b"\r\n.", b" "]


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[bytes], int | None, int]:
    body = b"".join(draw(st.lists(st.sampled_from(TOKENS), max_size=60)))
    stream = body + b"\r\n.\r\nQUIT\r\n"
    if draw(st.booleans()):
        stream = b".\r\n" + stream  # an empty message, then what follows
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    size_limit = draw(st.sampled_from([None, 0, 5, 20, 60, 1000]))
    line_limit = draw(st.sampled_from([6, 12, 40, 1001]))
    return [p for p in pieces if p], size_limit, line_limit


@settings(max_examples=3000, deadline=None)
@given(streams())
def test_read_data_reads_as_aiosmtpd_does(case: tuple[list[bytes], int | None, int]) -> None:
    pieces, size_limit, line_limit = case
    expected = asyncio.run(run(aiosmtpd_data, pieces, size_limit, line_limit))
    got = asyncio.run(run(read_data, pieces, size_limit, line_limit))
    assert got == expected


def test_a_big_message_in_big_pieces() -> None:
    line = b"y" * 70 + b"\r\n"
    body = b".leading dot\r\n" + line * 2000 + b"..\r\nlast\r\n"
    stream = body + b".\r\nMAIL FROM:<a@b.example>\r\n"
    pieces = [stream[i : i + 65536] for i in range(0, len(stream), 65536)]
    expected = asyncio.run(run(aiosmtpd_data, pieces, 10_000_000, 1001))
    got = asyncio.run(run(read_data, pieces, 10_000_000, 1001))
    assert got == expected
    assert got[0] is DataState.NOMINAL and got[2] == b"MAIL FROM:<a@b.example>\r\n"
    assert got[1].startswith(b"leading dot\r\n") and got[1].endswith(b"\r\n.\r\nlast\r\n")
