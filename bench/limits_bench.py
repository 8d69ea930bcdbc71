#!/usr/bin/env python3
"""What the per-client session limits cost a session (docs/ingress-limits.md).

Run from the repository root (Redis on 127.0.0.1:6379 for the Redis rows:
scripts/ensure-redis.sh)::

    .venv/bin/python bench/limits_bench.py [--sessions N] [--concurrency C] [--redis URL]
                                           [--rounds R]

Two measures, each with the limits off, counted in the process, and counted in Redis:

* ``ops``: the limit calls of one session (connection count in and out, the greet-pause
  look-up, one MAIL and one RCPT rate count) awaited as ingress does: their own cost;
* ``smtp``: whole sessions (greeting, EHLO, MAIL, RCPT, DATA, QUIT) from C concurrent clients
  against Moat's SMTP protocol class in a child process, with a handler that stores nothing
  (the limits' share of a session, without the spool, database and broker of the real one).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moat.counters import CounterStore, FallbackStore, MemoryStore, RedisStore, new_member
from moat.settings import LimitsSettings, SmtpSettings
from services.ingress.handler import MoatSMTP, Sessions, client_ip
from services.ingress.limits import SessionLimits

# Every limit on, none reached by the bench: the cost of counting, not of refusing.
SETTINGS = LimitsSettings(
    connections=10_000,
    messages_per_minute=10_000_000,
    recipients_per_minute=10_000_000,
    greet_pause=1.0,
)
MESSAGE = b"Subject: bench\r\n\r\n" + (b"x" * 70 + b"\r\n") * 70 + b".\r\n"


def make_store(mode: str, redis_url: str) -> CounterStore | None:
    if mode == "off":
        return None
    if mode == "memory":
        return MemoryStore()
    return FallbackStore(RedisStore(redis_url, f"moat-bench-{uuid.uuid4().hex}:"))


async def ops_per_session(mode: str, redis_url: str, sessions: int) -> list[float]:
    store = make_store(mode, redis_url)
    limits = SessionLimits(SETTINGS, SmtpSettings(), store) if store else None
    timings = []
    ip = "192.0.2.1"
    if limits:
        await limits.passed_greet_pause(ip)
    for _ in range(sessions):
        started = time.perf_counter()
        if limits:
            member = new_member()
            admitted, pause = await asyncio.gather(
                limits.connect(ip, member), limits.needs_greet_pause(ip)
            )
            assert admitted and not pause
            assert await limits.allow_message(ip)
            assert await limits.allow_recipient(ip)
            await limits.disconnect(ip, member)
        timings.append(time.perf_counter() - started)
    if store:
        await store.close()
    return timings


async def redis_pings(url: str, count: int) -> list[float]:
    import redis.asyncio as redis

    client = redis.Redis.from_url(url)
    timings = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            await client.ping()
            timings.append(time.perf_counter() - started)
    finally:
        await client.aclose()
    return timings


class BenchHandler:
    """Accepts everything and stores nothing; counts the rates as IngressHandler does."""

    def __init__(self, limits: SessionLimits | None) -> None:
        self.limits = limits

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if self.limits and not await self.limits.allow_message(client_ip(session)):
            return "450 4.7.1 Too much mail"
        envelope.mail_from = address
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if self.limits and not await self.limits.allow_recipient(client_ip(session)):
            return "450 4.7.1 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 2.0.0 Ok: queued"


def serve(mode: str, redis_url: str, port: int, ready: Any) -> None:
    async def main() -> None:
        store = make_store(mode, redis_url)
        limits = SessionLimits(SETTINGS, SmtpSettings(), store) if store else None
        if limits:
            await limits.passed_greet_pause("127.0.0.1")  # the pause is paid once a day
        handler, sessions = BenchHandler(limits), Sessions()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: MoatSMTP(handler, sessions, limits, None, hostname="bench", decode_data=False),
            "127.0.0.1",
            port,
        )
        ready.set()
        await server.serve_forever()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


async def one_session(port: int) -> float:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        while True:
            line = await reader.readline()
            if line[3:4] != b"-":
                return line

    async def command(line: bytes) -> bytes:
        writer.write(line + b"\r\n")
        return await reply()

    assert (await reply()).startswith(b"220")
    assert (await command(b"EHLO bench.test")).startswith(b"250")
    assert (await command(b"MAIL FROM:<a@bench.test>")).startswith(b"250")
    assert (await command(b"RCPT TO:<b@example.test>")).startswith(b"250")
    assert (await command(b"DATA")).startswith(b"354")
    writer.write(MESSAGE)
    final = await reply()
    assert final.startswith(b"250"), final
    await command(b"QUIT")
    writer.close()
    await writer.wait_closed()
    return time.perf_counter() - started


async def drive(port: int, sessions: int, concurrency: int) -> tuple[list[float], float]:
    timings: list[float] = []
    remaining = sessions

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            timings.append(await one_session(port))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return timings, time.perf_counter() - started


def smtp_sessions(
    mode: str, redis_url: str, sessions: int, concurrency: int
) -> tuple[list[float], float]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ready = multiprocessing.Event()
    child = multiprocessing.Process(target=serve, args=(mode, redis_url, port, ready), daemon=True)
    child.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the bench server did not start")
        asyncio.run(drive(port, min(200, sessions), concurrency))  # warm-up
        return asyncio.run(drive(port, sessions, concurrency))
    finally:
        child.terminate()
        child.join(10)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", "-n", type=int, default=3000)
    parser.add_argument("--concurrency", "-c", type=int, default=20)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--modes", default="off,memory,redis")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    modes = args.modes.split(",")

    # Rounds, each running every mode in turn, pooled: a shared machine's load falls on all
    # modes alike instead of on whichever ran while it peaked.
    ops: dict[str, list[float]] = {mode: [] for mode in modes}
    smtp: dict[str, list[float]] = {mode: [] for mode in modes}
    elapsed: dict[str, float] = dict.fromkeys(modes, 0.0)
    per_round = max(1, args.sessions // args.rounds)
    for _ in range(args.rounds):
        for mode in modes:
            ops[mode] += asyncio.run(ops_per_session(mode, args.redis, per_round))
            timings, seconds = smtp_sessions(mode, args.redis, per_round, args.concurrency)
            smtp[mode] += timings
            elapsed[mode] += seconds

    print(f"limit calls of one session, awaited in turn ({per_round * args.rounds} sessions)")
    print(f"{'store':8} {'mean us':>9} {'p50 us':>9} {'p99 us':>9}")
    for mode in modes:
        micro = [t * 1e6 for t in ops[mode]]
        print(
            f"{mode:8} {statistics.fmean(micro):9.1f} {quantile(micro, 0.5):9.1f} "
            f"{quantile(micro, 0.99):9.1f}"
        )
    print(
        f"\nwhole SMTP sessions, {per_round * args.rounds} over {args.concurrency} clients "
        "(server: one process)"
    )
    print(f"{'store':8} {'sessions/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for mode in modes:
        milli = [t * 1e3 for t in smtp[mode]]
        print(
            f"{mode:8} {len(milli) / elapsed[mode]:10.0f} {quantile(milli, 0.5):8.2f} "
            f"{quantile(milli, 0.99):8.2f}"
        )
    if "redis" in modes:
        pings = asyncio.run(redis_pings(args.redis, 1000))
        print(
            f"\none Redis round trip (PING) for scale: p50 {quantile(pings, 0.5) * 1e6:.0f} us, "
            f"p99 {quantile(pings, 0.99) * 1e6:.0f} us"
        )
    print(f"\nload average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
