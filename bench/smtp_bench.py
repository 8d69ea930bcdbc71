#!/usr/bin/env python3
"""SMTP throughput bench: Moat against Postfix, Postfix + Rspamd and the bare ceiling.

Run from the repository root::

    .venv/bin/python bench/smtp_bench.py [--messages N] [--concurrency C] [--sizes 5k,50k]
                                         [--skip-moat] [--skip-rspamd]
                                         [--database sqlite|postgresql]

For every message size it measures, on the same generated messages, with Postfix's
``smtp-sink`` as the receiving server on a loopback port:

* ``smtp-source -> sink`` and ``driver -> sink``: the ceiling (no MTA in between);
* ``driver -> postfix -> sink``: a private Postfix instance relaying to the sink;
* ``driver -> postfix+rspamd -> sink``: the same with a private Rspamd as Postfix's milter
  (every message scanned before the 250: the filtering gateway admins wire by hand);
* ``driver -> moat -> sink``: Moat (``python -m services``) relaying to the sink.

"driver" is this script's own asyncio SMTP client (aiosmtplib). Each delivery is counted at the
sink from ``smtp-sink -d`` dump files: one file per mail transaction, complete once it holds the
message's last line (``bench-end <id>``); its mtime is when the sink got the final byte.
bench/README.md has the details and the caveats. Timings never fail the run: the exit status
is non-zero only when something could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SBIN = Path("/usr/sbin")
SMTP_SINK = SBIN / "smtp-sink"
SMTP_SOURCE = SBIN / "smtp-source"
POSTFIX = SBIN / "postfix"
TIMEOUT_BIN = shutil.which("timeout")

SENDER_DOMAIN = "sender.test"
RCPT = "bob@example.test"
PROTECTED_DOMAIN = "example.test"
END_MARK = re.compile(rb"bench-end ([A-Za-z0-9._-]+)")


class BenchError(Exception):
    """A step of the bench could not run (as opposed to a slow result)."""


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Processes: every child gets a new session (its own process group), dies with us where the
# kernel allows (PR_SET_PDEATHSIG), and runs under coreutils ``timeout`` as a last bound.
# --------------------------------------------------------------------------------------------

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_stopping = False


def install_stop_handlers() -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN if _stopping else _raise_interrupt)


def _raise_interrupt(signum: int, frame: Any) -> None:
    """First SIGINT/SIGTERM/SIGHUP: unwind (every finally stops what it started); later ones
    are ignored so that the clean-up itself is not cut short."""
    global _stopping
    _stopping = True
    install_stop_handlers()
    raise KeyboardInterrupt(f"signal {signum}")


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    argv: list[str],
    *,
    log_path: Path,
    limit: float,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session, output to ``log_path``, killed after ``limit`` s."""
    if TIMEOUT_BIN:
        argv = [TIMEOUT_BIN, "-k", "20", f"{int(limit)}s", *argv]
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # safe: this process runs no threads
        )


_STOPPED: list[subprocess.Popen[bytes]] = []


def stop_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the child (``timeout`` forwards it), then SIGKILL its whole process group.
    Once per child: a second call must not signal a group id the system may have reused."""
    if any(done is proc for done in _STOPPED):
        return
    _STOPPED.append(proc)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def run_cmd(argv: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{' '.join(argv[:3])} ... timed out after {timeout:.0f}s") from exc
    except OSError as exc:
        raise BenchError(f"{argv[0]}: {exc}") from exc


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_smtp_banner(port: int, timeout: float, alive: Callable[[], bool] | None = None) -> None:
    """Wait until 127.0.0.1:port answers with a 220 greeting."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise BenchError(f"the server for port {port} exited before it answered")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.settimeout(5)
                greeting = sock.recv(512)
                if greeting.startswith(b"220"):
                    with contextlib.suppress(OSError):
                        sock.sendall(b"QUIT\r\n")
                        sock.recv(512)
                    return
                last = greeting[:80].decode(errors="replace")
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise BenchError(f"no SMTP greeting on 127.0.0.1:{port} within {timeout:.0f}s ({last})")


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


# --------------------------------------------------------------------------------------------
# Postfix tools
# --------------------------------------------------------------------------------------------


def have_postfix_tools() -> bool:
    return all(p.exists() for p in (SMTP_SINK, SMTP_SOURCE, POSTFIX))


def ensure_postfix(workdir: Path) -> str | None:
    """Install Debian's postfix if its tools are missing; return why not, or None when OK."""
    if have_postfix_tools():
        return None
    if os.geteuid() != 0:
        return "postfix is not installed and we are not root to apt-get install it"
    if not shutil.which("apt-get"):
        return "postfix is not installed and there is no apt-get"
    log("installing Debian's postfix (for smtp-sink, smtp-source and the reference MTA)")
    install_log = workdir / "apt-postfix.log"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        run_cmd(
            ["debconf-set-selections"],
            60,
            input="postfix postfix/main_mailer_type select No configuration\n",
        )
        update = run_cmd(["apt-get", "update"], 300, env=env)
        install = run_cmd(["apt-get", "install", "-y", "postfix"], 600, env=env)
    except BenchError as exc:
        return f"could not install postfix: {exc}"
    install_log.write_text(update.stdout + update.stderr + install.stdout + install.stderr)
    if install.returncode != 0 or not have_postfix_tools():
        last = (install.stderr or install.stdout).strip().splitlines()[-3:]
        return f"apt-get install postfix failed (rc={install.returncode}): {' | '.join(last)}"
    log("postfix installed")
    return None


def sink_user() -> str:
    for name in ("postfix", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise BenchError("neither user 'postfix' nor 'nobody' exists for smtp-sink -u")


def chown_to(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


# --------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------

_VOCABULARY = (
    "the project team meeting agenda review quarterly report budget forecast customer "
    "account update schedule delivery timeline proposal contract invoice attached draft "
    "final version please find below regarding our discussion yesterday afternoon we "
    "would like to confirm next steps for the migration of the billing system to the new "
    "platform and the training sessions planned for staff in the northern office "
    "including warehouse logistics support engineering finance marketing sales legal "
    "compliance audit results figures numbers targets growth margin costs savings risks "
    "issues actions owners deadlines milestones dependencies resources capacity hiring "
    "onboarding feedback survey workshop slides notes minutes summary conclusion thanks "
    "again for your help with this let me know if you have any questions or concerns "
    "happy to set up a call on monday or tuesday morning if that suits you better"
)
_WORDS = tuple(_VOCABULARY.split())
_FIRST = ("Alice", "Bruno", "Chloe", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas")
_LAST = ("Martin", "Okafor", "Lindqvist", "Novak", "Ferreira", "Tanaka", "Schmidt", "Moreau")
_TOPICS = (
    "Quarterly report",
    "Project timeline",
    "Invoice",
    "Meeting notes",
    "Contract draft",
    "Training sessions",
    "Budget forecast",
    "Migration plan",
    "Audit results",
    "Staff survey",
)
_BASE_DATE = datetime(2025, 3, 3, 8, 0, 0, tzinfo=UTC)


def _sentence(rng: random.Random) -> str:
    text = " ".join(rng.choices(_WORDS, k=rng.randint(6, 18)))
    return text[0].upper() + text[1:] + rng.choice((".", ".", ".", "?", "!"))


def _wrap(text: str, width: int = 72) -> list[str]:
    lines: list[str] = []
    current: list[str] = []
    length = -1
    for word in text.split():
        if current and length + 1 + len(word) > width:
            lines.append(" ".join(current))
            current, length = [word], len(word)
        else:
            current.append(word)
            length += 1 + len(word)
    if current:
        lines.append(" ".join(current))
    return lines


def make_message(tag: str, index: int, size: int) -> bytes:
    """A deterministic plain-text business mail of ``size`` bytes (CRLF line ends), whose last
    line is ``bench-end <tag>-<index>``."""
    rng = random.Random(f"moat-bench:{tag}:{size}:{index}")
    bench_id = f"{tag}-{index}"
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    sender = f"{first.lower()}.{last.lower()}@{SENDER_DOMAIN}"
    when = _BASE_DATE + timedelta(minutes=index, seconds=rng.randint(0, 59))
    topic = rng.choice(_TOPICS)
    headers = [
        f"Received: from mail.{SENDER_DOMAIN} (mail.{SENDER_DOMAIN} [192.0.2.{index % 250 + 1}])",
        f"\tby mx1.{SENDER_DOMAIN} with ESMTPS id {rng.getrandbits(48):012x}",
        f"\tfor <{RCPT}>; {format_datetime(when)}",
        f'From: "{first} {last}" <{sender}>',
        f'To: "Bob Example" <{RCPT}>',
        f"Subject: {topic} - follow-up {index}",
        f"Date: {format_datetime(when)}",
        f"Message-ID: <{bench_id}.{rng.getrandbits(32):08x}@{SENDER_DOMAIN}>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Transfer-Encoding: 7bit",
        f"X-Bench-Id: {bench_id}",
        "",
        "Hi Bob,",
        "",
    ]
    closing = [
        "",
        "Best regards,",
        first,
        "-- ",
        f"{first} {last}",
        "Sender Test Ltd.",
        f"bench-end {bench_id}",
    ]
    fixed = sum(len(line) + 2 for line in headers + closing)
    body: list[str] = []
    used = fixed
    while True:
        paragraph = " ".join(_sentence(rng) for _ in range(rng.randint(2, 6)))
        lines = _wrap(paragraph)
        if rng.random() < 0.05:
            lines.append("...and more to follow.")  # a line that needs dot-stuffing
        lines.append("")
        added = sum(len(line) + 2 for line in lines)
        if used + added > size:
            break
        body.extend(lines)
        used += added
    # Top up with wrapped filler lines, the last one cut to land on the exact size.
    room = size - used
    for line in _wrap(" ".join(_sentence(rng) for _ in range(40))):
        if room < 3:
            break
        piece = line[: room - 2]
        if piece.endswith(" "):
            piece = piece[:-1] + "."
        body.append(piece)
        room -= len(piece) + 2
    text = "\r\n".join(headers + body + closing) + "\r\n"
    return text.encode("ascii")


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)[bB]?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 5k, 50k, 1m, 2048)")
    number = float(match.group(1))
    unit = {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2).lower()]
    size = int(number * unit)
    if size < 1024:
        raise argparse.ArgumentTypeError(f"size {text!r} is below 1k, too small for headers")
    return size


# --------------------------------------------------------------------------------------------
# The sink: smtp-sink -d (or a fallback aiosmtpd sink), counted from its dump files
# --------------------------------------------------------------------------------------------


@dataclass
class Deliveries:
    files: int = 0  # complete transactions (dump files holding a bench-end line)
    incomplete: int = 0  # dump files still being written (or not ours)
    first_seen: dict[str, float] = field(default_factory=dict)  # bench id -> earliest mtime
    duplicates: int = 0


class Sink:
    """One receiving SMTP server with its own dump directory."""

    def __init__(self, workdir: Path, name: str, limit: float, fallback: bool) -> None:
        self.name = name
        self.dir = workdir / f"sink-{name}"
        self.dir.mkdir(parents=True)
        self.log_path = workdir / f"sink-{name}.log"
        self.port = free_port()
        self.kind = "aiosmtpd-sink" if fallback else "smtp-sink"
        if fallback:
            argv = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--internal-sink",
                str(self.dir),
                str(self.port),
            ]
        else:
            user = sink_user()
            chown_to(self.dir, user)
            argv = [
                str(SMTP_SINK),
                "-u",
                user,
                "-h",
                "sink.example.test",
                "-d",
                f"{self.dir}/m.",
                f"127.0.0.1:{self.port}",
                "1024",
            ]
        self.proc = spawn(argv, log_path=self.log_path, limit=limit)
        self._seen: dict[str, tuple[str, float]] = {}
        try:
            wait_smtp_banner(self.port, 20, alive=lambda: self.proc.poll() is None)
        except BenchError:
            self.stop()
            raise BenchError(f"{self.kind} did not start:\n{tail(self.log_path)}") from None

    def count_files(self) -> int:
        with os.scandir(self.dir) as entries:
            return sum(1 for e in entries if not e.name.startswith("."))

    def scan(self) -> Deliveries:
        """Read each new dump file once it is complete; return what has arrived so far."""
        result = Deliveries()
        with os.scandir(self.dir) as entries:
            names = [e.name for e in entries if not e.name.startswith(".")]
        for name in names:
            if name in self._seen:
                continue
            path = self.dir / name
            try:
                with open(path, "rb") as handle:
                    stat = os.fstat(handle.fileno())
                    handle.seek(max(0, stat.st_size - 2048))
                    found = END_MARK.findall(handle.read())
            except OSError:
                continue
            if found:
                self._seen[name] = (found[-1].decode(), stat.st_mtime)
        for bench_id, mtime in self._seen.values():
            result.files += 1
            earlier = result.first_seen.get(bench_id)
            if earlier is None:
                result.first_seen[bench_id] = mtime
            else:
                result.duplicates += 1
                result.first_seen[bench_id] = min(earlier, mtime)
        result.incomplete = len(names) - len(self._seen)
        return result

    def wait_for(
        self, ids: set[str], timeout: float, alive: Callable[[], bool] | None = None
    ) -> tuple[Deliveries, bool]:
        """Wait until every id in ``ids`` has arrived (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.count_files() >= len(ids):
                got = self.scan()
                if ids.issubset(got.first_seen):
                    return got, True
            if time.monotonic() >= deadline or (alive is not None and not alive()):
                return self.scan(), False
            time.sleep(0.1)

    def wait_files(self, count: int, timeout: float) -> Deliveries:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count_files() >= count and self.scan().files >= count:
                break
            time.sleep(0.05)
        return self.scan()

    def stop(self) -> None:
        stop_group(self.proc, grace=5)

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def run_internal_sink(directory: str, port: int) -> None:
    """Fallback sink when smtp-sink is unavailable: aiosmtpd, one file per message, written
    under a dot-name and renamed once complete."""
    from aiosmtpd.smtp import SMTP as AioSMTP

    target = Path(directory)
    counter = iter(range(1, 10**9))

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            number = next(counter)
            tmp = target / f".tmp.{number}"
            tmp.write_bytes(envelope.original_content or envelope.content)
            tmp.rename(target / f"m.{number}")
            return "250 2.0.0 Ok"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: AioSMTP(Handler(), hostname="sink.example.test", data_size_limit=None),
            "127.0.0.1",
            port,
        )
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            await stop.wait()

    asyncio.run(main())


# --------------------------------------------------------------------------------------------
# The driver: N messages over C sessions, each session reusing its connection
# --------------------------------------------------------------------------------------------


@dataclass
class DriveResult:
    sent: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # seconds, end of DATA -> 250
    accepted_at: dict[str, float] = field(default_factory=dict)  # bench id -> wall time of 250
    start_wall: float = 0.0
    seconds: float = 0.0  # first connect -> last 250
    last_reply: float = 0.0  # perf_counter of the last 250
    connections: int = 0
    timed_out: bool = False
    interrupted: bool = False


def _timed_protocol_class() -> type:
    """aiosmtplib's protocol, stamping when the message's final dot is handed to the transport
    and when the next reply's first bytes arrive: the 250 latency, free of the time our own
    event loop takes to resume the waiting session."""
    import aiosmtplib.smtp
    from aiosmtplib.protocol import SMTPProtocol

    class _Timed(SMTPProtocol):
        data_end_at = 0.0
        reply_at = 0.0
        reply_wall = 0.0
        _armed = False

        def write(self, data: bytes) -> None:
            super().write(data)
            if data.endswith(b"\r\n.\r\n"):
                self.data_end_at = time.perf_counter()
                self._armed = True

        def data_received(self, data: bytes) -> None:
            if self._armed:
                self.reply_at = time.perf_counter()
                self.reply_wall = time.time()
                self._armed = False
            super().data_received(data)

    aiosmtplib.smtp.SMTPProtocol = _Timed  # type: ignore[attr-defined]  # what connect() makes
    return _Timed


TimedProtocol: Any = None


async def _drive(
    port: int,
    batch: list[tuple[str, bytes]],
    concurrency: int,
    per_connection: int,
    command_timeout: float,
    total_timeout: float,
    starttls: bool = False,
) -> DriveResult:
    global TimedProtocol
    import aiosmtplib

    if TimedProtocol is None:
        TimedProtocol = _timed_protocol_class()
    result = DriveResult()
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    for item in batch:
        queue.put_nowait(item)

    def bump(table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1

    async def connect() -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1",
            port=port,
            timeout=command_timeout,
            local_hostname="client.sender.test",
            start_tls=False,
            use_tls=False,
        )
        await client.connect()
        await client.ehlo()
        if starttls:  # --tls: every session encrypted, as a sender that takes STARTTLS
            await client.starttls(validate_certs=False)
        result.connections += 1
        return client

    async def session() -> None:
        client: aiosmtplib.SMTP | None = None
        used = 0
        reconnects = 0
        try:
            while not queue.empty():
                bench_id, payload = queue.get_nowait()
                if client is None or (per_connection and used >= per_connection):
                    if client is not None:
                        with contextlib.suppress(Exception):
                            await client.quit()
                    try:
                        client = await connect()
                    except (aiosmtplib.SMTPException, OSError) as exc:
                        client = None
                        bump(result.errors, f"connect: {type(exc).__name__}")
                        reconnects += 1
                        if reconnects > 5:
                            return
                        await asyncio.sleep(0.5)
                        continue
                    used = 0
                used += 1
                result.sent += 1
                try:
                    sender = f"{bench_id.lower()}@{SENDER_DOMAIN}"
                    await client.mail(sender)
                    await client.rcpt(RCPT)
                    await client.data(payload)
                    protocol = client.protocol
                    assert isinstance(protocol, TimedProtocol)
                    result.latencies.append(protocol.reply_at - protocol.data_end_at)
                    result.accepted_at[bench_id] = protocol.reply_wall
                    result.last_reply = max(result.last_reply, protocol.reply_at)
                    result.accepted += 1
                except aiosmtplib.SMTPResponseException as exc:
                    bump(result.rejected, f"{exc.code} {exc.message[:60]}")
                    with contextlib.suppress(Exception):
                        await client.rset()
                except (aiosmtplib.SMTPException, OSError) as exc:
                    bump(result.errors, type(exc).__name__)
                    with contextlib.suppress(Exception):
                        client.close()
                    client = None
                    reconnects += 1
                    if reconnects > 5:
                        return
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.quit(), 5)

    result.start_wall = time.time()
    started = time.perf_counter()
    tasks = [asyncio.create_task(session()) for _ in range(max(1, concurrency))]

    # A stop signal while the loop runs cancels the sessions; drive() then raises
    # KeyboardInterrupt outside the loop, so every finally still runs.
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        result.interrupted = True
        stop.set()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait(
            [*tasks, stopper], timeout=total_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        while not stop.is_set() and not all(task.done() for task in tasks):
            left = total_timeout - (time.perf_counter() - started)
            if left <= 0:
                break
            await asyncio.wait(
                [*[t for t in tasks if not t.done()], stopper],
                timeout=left,
                return_when=asyncio.FIRST_COMPLETED,
            )
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        pending = [task for task in tasks if not task.done()]
        if pending and not result.interrupted:
            result.timed_out = True
        for task in [*pending, stopper]:
            task.cancel()
        await asyncio.gather(*pending, stopper, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            bump(result.errors, f"session: {task.exception()!r}"[:80])
    # first connect -> the last 250 (the sessions' QUITs after it do not count)
    result.seconds = (result.last_reply or time.perf_counter()) - started
    return result


def drive(
    port: int,
    batch: list[tuple[str, bytes]],
    concurrency: int,
    per_connection: int = 0,
    command_timeout: float = 60.0,
    total_timeout: float = 600.0,
    starttls: bool = False,
) -> DriveResult:
    try:
        import uvloop

        run: Callable[[Any], DriveResult] = uvloop.run
    except ImportError:
        run = asyncio.run
    try:
        result = run(
            _drive(
                port, batch, concurrency, per_connection, command_timeout, total_timeout, starttls
            )
        )
    finally:
        install_stop_handlers()  # the loop reset them on its way out
    if result.interrupted:
        _raise_interrupt(signal.SIGINT, None)
    return result


# --------------------------------------------------------------------------------------------
# Reference MTA: a private Postfix instance
# --------------------------------------------------------------------------------------------

_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n -  0 cleanup
qmgr       unix  n - n 300 1 qmgr
rewrite    unix  - - n -  - trivial-rewrite
bounce     unix  - - n -  0 bounce
defer      unix  - - n -  0 bounce
trace      unix  - - n -  0 bounce
verify     unix  - - n -  1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -  - proxymap
proxywrite unix  - - n -  1 proxymap
smtp       unix  - - n -  - smtp
relay      unix  - - n -  - smtp
showq      unix  n - n -  - showq
error      unix  - - n -  - error
retry      unix  - - n -  - error
discard    unix  - - n -  - discard
local      unix  - n n -  - local
anvil      unix  - - n -  1 anvil
scache     unix  - - n -  1 scache
postlog    unix-dgram n - n - 1 postlogd
"""


class PostfixInstance:
    """Postfix with its own config, queue and data directories; never the system instance."""

    def __init__(
        self, workdir: Path, sink_port: int, concurrency: int, milter_port: int | None = None
    ) -> None:
        self.base = workdir / "postfix"
        self.etc = self.base / "etc"
        self.queue = self.base / "queue"
        self.data = self.base / "data"
        for path in (self.etc, self.queue, self.data):
            path.mkdir(parents=True)
        chown_to(self.data, "postfix")
        self.log_path = self.base / "postfix.log"
        self.port = free_port()
        self.started = False
        main_cf = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue),
            "data_directory": str(self.data),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "syslog_name": "moat-bench-postfix",
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.base),
            "myhostname": "postfix.bench.test",
            "mydomain": "bench.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": PROTECTED_DOMAIN,
            "relayhost": f"[127.0.0.1]:{sink_port}",
            "disable_dns_lookups": "yes",
            "smtp_host_lookup": "native",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "default_process_limit": str(max(100, concurrency + 10)),
            "smtpd_client_connection_count_limit": str(max(50, concurrency + 10)),
        }
        if milter_port is not None:
            # Rspamd's proxy worker in milter mode, wired as Rspamd's Postfix guide does it:
            # every message is scanned before the 250, and mail is accepted if Rspamd is down.
            main_cf.update(
                {
                    "smtpd_milters": f"inet:127.0.0.1:{milter_port}",
                    "milter_default_action": "accept",
                    "milter_protocol": "6",
                    "milter_mail_macros": "i {mail_addr} {client_addr} {client_name} {auth_authen}",
                }
            )
        (self.etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main_cf.items()))
        (self.etc / "master.cf").write_text(_MASTER_CF.format(port=self.port))

    def _postfix(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run_cmd([str(POSTFIX), "-c", str(self.etc), *args], timeout)

    def start(self) -> None:
        self.started = True
        done = self._postfix("start")
        if done.returncode != 0:
            raise BenchError(f"postfix start failed (rc={done.returncode}):\n{tail(self.log_path)}")
        wait_smtp_banner(self.port, 30)

    def running(self) -> bool:
        return self._postfix("status", timeout=30).returncode == 0

    def master_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.queue / "pid" / "master.pid").read_text().split()[0])
        return None

    def process_group(self) -> int | None:
        pid = self.master_pid()
        with contextlib.suppress(OSError, IndexError, ValueError):
            if pid:
                return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
        return None

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        pid = self.master_pid()
        with contextlib.suppress(BenchError):
            self._postfix("stop", timeout=60)
        deadline = time.monotonic() + 15
        with contextlib.suppress(BenchError):
            while time.monotonic() < deadline and self.running():
                time.sleep(0.5)
            if self.running():
                log("postfix did not stop; aborting it")
                self._postfix("abort", timeout=30)
        if pid and _alive(pid) and _comm(pid) == "master":
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# Reference filter: Rspamd behind the private Postfix, through its milter interface
# --------------------------------------------------------------------------------------------


def ensure_rspamd() -> str | None:
    """Rspamd installed (bench/rspamd_peer.py), or why it could not be."""
    from rspamd_peer import RSPAMD, ensure_rspamd

    if not RSPAMD.exists():
        log("rspamd is not installed: scripts/ensure-rspamd.sh (Debian's package, not started)")
    return ensure_rspamd()


class RspamdInstance:
    """A private Rspamd: the stock rules and scores (``$CONFDIR/common.conf``), normal workers
    on a free loopback port, its proxy worker in milter mode (upstream: those workers) for
    Postfix, no controller, no fuzzy storage; config, pid file, log and databases in the temp
    dir. No Redis (Bayes and the Redis-backed modules stay off) and nothing leaves the machine:
    the modules that look things up in DNS per message or talk to other servers are off (the
    same list as bench/scanner_bench.py's ``local`` profile), and the resolver is a loopback
    port nobody listens on, so what is left (maps on maps.rspamd.com) fails at once."""

    def __init__(self, workdir: Path, name: str, db_dir: Path, limit: float) -> None:
        import rspamd_peer  # bench/rspamd_peer.py: the configuration, shared with scanner_bench

        self.root = workdir / f"rspamd-{name}"
        db_dir.mkdir(exist_ok=True)  # shared between sizes: the hyperscan cache compiles once
        self.modules_off = rspamd_peer.rspamd_modules_off("local")
        self.normal_port = free_port()
        self.milter_port = free_port()
        self.workers = os.cpu_count() or 1  # the stock count of normal workers, said out loud
        self.log_path = self.root / "log" / "rspamd.log"
        self.conf = rspamd_peer.write_config(
            self.root,
            normal_port=self.normal_port,
            workers=self.workers,
            # a closed UDP port on loopback: lookups are refused at once
            nameserver=f"127.0.0.1:{free_port()}",
            retransmits=1,
            milter_port=self.milter_port,
            header="moat smtp bench",
        )
        self.argv = rspamd_peer.command(self.root, self.conf, db_dir)
        self.limit = limit
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 300) -> None:
        """Start it and wait until the milter port takes connections and every normal worker
        has loaded the hyperscan database (compiled at the first start, about 35 s on 2 cores;
        until then the regexp rules run without it, slower)."""
        self.proc = spawn(self.argv, log_path=self.root / "stdout.log", limit=self.limit)
        deadline = time.monotonic() + timeout
        # First start: the hs_helper compiles, then each worker logs that it loaded the
        # database. With the cache in the shared db dir, the main process loads it before it
        # forks the workers (they inherit it) and the helper finds nothing to compile.
        worker_loaded = re.compile(r"\(normal\).*(hyperscan_ready|hyperscan database .* loaded)")
        main_loaded = re.compile(r"\(main\).*full hyperscan database of \d+ regexps .*loaded")
        nothing_to_compile = re.compile(r"\(hs_helper\).*compiled 0 regular expressions")
        while time.monotonic() < deadline:
            if not self.alive():
                raise BenchError(f"rspamd exited:\n{self.tail()}")
            text = self.log_text()
            ready = (
                len(worker_loaded.findall(text)) >= self.workers
                or bool(main_loaded.search(text) and nothing_to_compile.search(text))
                or ("hyperscan" in text and "not supported" in text)
            )
            if ready and self._port_open(self.milter_port):
                return
            time.sleep(0.5)
        raise BenchError(f"rspamd was not ready within {timeout:.0f}s:\n{self.tail()}")

    @staticmethod
    def _port_open(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def scanned(self, ids: set[str]) -> tuple[int, dict[str, int], int]:
        """How many of ``ids`` (the bench's Message-IDs start with them) a normal worker
        scanned, by its log's one line per message; the actions it chose for them; and the
        DNS requests it made for them (``dns req:`` in the same line)."""
        seen: dict[str, tuple[str, int]] = {}
        line = re.compile(
            r"\(normal\).*rspamd_task_write_log: id: <([^.>]+)[^>]*>.*?"
            r"\(default: \w \(([^)]+)\).*?, dns req: (\d+)"
        )
        for found in line.finditer(self.log_text()):
            if found.group(1) in ids:
                seen[found.group(1)] = (found.group(2), int(found.group(3)))
        actions: dict[str, int] = {}
        for action, _ in seen.values():
            actions[action] = actions.get(action, 0) + 1
        return len(seen), actions, sum(dns for _, dns in seen.values())

    def tail(self, lines: int = 15) -> str:
        return tail(self.log_path if self.log_path.exists() else self.root / "stdout.log", lines)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_by_process(self) -> dict[str, float]:
        """CPU seconds of Rspamd's processes by kind (main, normal, rspamd_proxy, hs_helper),
        from the titles they give themselves ("rspamd: normal process ...")."""
        seconds: dict[str, float] = {}
        if self.proc is None:
            return seconds
        session = self.proc.pid
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                title = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
            except (OSError, IndexError):
                continue
            if session not in (int(fields[2]), int(fields[3])) or not title.startswith("rspamd:"):
                continue
            kind = title.split()[1]
            used = (int(fields[11]) + int(fields[12])) / _CLK_TCK
            seconds[kind] = seconds.get(kind, 0.0) + used
        return seconds

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, grace=10)
            self.proc = None


def rspamd_version() -> str:
    from rspamd_peer import RSPAMD

    with contextlib.suppress(BenchError):
        done = run_cmd([str(RSPAMD), "--version"], 30)
        return (done.stdout or done.stderr).strip().splitlines()[0]
    return "rspamd (version unknown)"


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(match: Callable[[str, list[str]], bool]) -> float:
    """CPU seconds (user + system, with reaped children) of the processes ``match`` picks
    by name (comm) and the fields of /proc/PID/stat after it (state, ppid, pgrp, ...)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            head, tail = (entry / "stat").read_text().rsplit(")", 1)
        except (OSError, ValueError):
            continue
        fields = tail.split()
        if match(head.split("(", 1)[-1], fields):
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / _CLK_TCK


def group_cpu_seconds(pgid: int) -> float:
    """CPU of process group ``pgid`` and, when its leader leads a session, of that whole
    session: ``python -m services`` puts each service in a process group of its own (so that a
    terminal's Ctrl-C reaches the supervisor alone), within the session ``spawn`` made."""
    return _cpu_seconds(lambda _name, fields: pgid in (int(fields[2]), int(fields[3])))


def pid_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of one process, 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def rabbitmq_pid() -> int | None:
    """The RabbitMQ server: the oldest ``beam.smp``. Not all of them: ``rabbitmqctl`` (which
    this bench and anyone else on the machine runs) starts short-lived ones, and one exiting
    made a sum over all go backwards."""
    oldest: tuple[int, int] | None = None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            head, tail = (entry / "stat").read_text().rsplit(")", 1)
        except (OSError, ValueError):
            continue
        if head.split("(", 1)[-1] == "beam.smp":
            started = int(tail.split()[19])
            if oldest is None or started < oldest[0]:
                oldest = (started, int(entry.name))
    return oldest[1] if oldest else None


def shared_cpu_seconds() -> dict[str, float]:
    """CPU seconds of the shared services Moat uses (whoever else uses them too)."""
    rabbit = rabbitmq_pid()
    return {
        "rabbitmq": pid_cpu_seconds(rabbit) if rabbit else 0.0,
        "postgres": _cpu_seconds(lambda name, _f: name == "postgres"),
    }


class CpuWatch:
    """The machine's CPU during one row, less what the bench's own processes used: what
    everybody else took from the measurement."""

    def __init__(self, groups: list[int], shared: bool, pids: dict[str, int] | None = None) -> None:
        self.groups = groups
        self.shared = shared
        self.pids = list((pids or {}).values())
        self.started = time.monotonic()
        self.total, self.idle = _cpu_times()
        self.ours = self._ours()

    def _ours(self) -> float:
        own = os.times()
        seconds = own.user + own.system + own.children_user + own.children_system
        seconds += sum(group_cpu_seconds(group) for group in self.groups)
        if self.shared:
            seconds += sum(shared_cpu_seconds().values())
        seconds += sum(pid_cpu_seconds(pid) for pid in self.pids)
        # kernel threads (journal, writeback, workqueues) do the fsyncs and I/O of whatever
        # runs; count them as part of the measurement, not as someone else's load
        seconds += _cpu_seconds(lambda _name, fields: fields[1] == "2")
        return seconds

    def others_share(self) -> float | None:
        """Share of all CPUs (0..1) used by other processes since the start."""
        try:
            total, idle = _cpu_times()
        except (OSError, ValueError, IndexError):
            return None
        busy = ((total - self.total) - (idle - self.idle)) / _CLK_TCK
        elapsed = time.monotonic() - self.started
        if elapsed <= 0:
            return None
        return max(0.0, busy - (self._ours() - self.ours)) / (elapsed * (os.cpu_count() or 1))


def _comm(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip()
    return ""


def _alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# --------------------------------------------------------------------------------------------
# Moat
# --------------------------------------------------------------------------------------------


class MoatInstance:
    """``python -m moat.migrate`` then ``python -m services``, from a temp config."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        sink_port: int,
        database: str,
        pg_admin_url: str,
        limit: float,
    ) -> None:
        self.base = workdir / f"moat-{name}"
        self.base.mkdir(parents=True)
        self.log_path = self.base / "moat.log"
        self.smtp_port = free_port()
        self.api_port = free_port()
        self.limit = limit
        self.extra_args: list[str] = []
        self.extra_env: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        token = f"{os.getpid()}_{int(time.time())}_{name}".replace("-", "_").lower()
        self.vhost = f"moat-bench-{token}"
        self.vhost_made = False
        self.pg_admin_url = pg_admin_url
        self.pg_db: str | None = None
        if database == "postgresql":
            self.pg_db = f"moat_bench_{token}"
            self.database_url = _pg_url(pg_admin_url, self.pg_db, "postgresql+asyncpg")
        else:
            self.database_url = f"sqlite+aiosqlite:///{self.base}/moat.db"
        self.config = self.base / "moat.yaml"
        self.config.write_text(
            "env: dev\n"
            f'database_url: "{self.database_url}"\n'
            f"spool_dir: {self.base}/spool\n"
            "domains:\n"
            f"  {PROTECTED_DOMAIN}:\n"
            f"    relay: 127.0.0.1:{sink_port}\n"
            f"smtp: {{listen: 127.0.0.1:{self.smtp_port}}}\n"
            f"api: {{listen: 127.0.0.1:{self.api_port}}}\n"
            f'broker: {{url: "amqp://guest:guest@127.0.0.1:5672/{self.vhost}"}}\n'
        )

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOAT_")}
        env["MOAT_CONFIG"] = str(self.config)
        env.update(self.extra_env)
        env["PYTHONUNBUFFERED"] = "1"
        # Run from the temp dir (relative defaults such as var/tls land there, not in the
        # repository); the repository goes on the path instead.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return env

    def start(self) -> None:
        rabbitmqctl = shutil.which("rabbitmqctl")
        if not rabbitmqctl:
            raise BenchError("rabbitmqctl not found: cannot create a RabbitMQ vhost")
        made = run_cmd([rabbitmqctl, "add_vhost", self.vhost], 90)
        if made.returncode != 0:
            raise BenchError(f"rabbitmqctl add_vhost failed: {made.stderr.strip()[-300:]}")
        self.vhost_made = True
        perms = run_cmd(
            [rabbitmqctl, "set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*"], 90
        )
        if perms.returncode != 0:
            raise BenchError(f"rabbitmqctl set_permissions failed: {perms.stderr.strip()[-300:]}")
        if self.pg_db:
            _pg_exec(self.pg_admin_url, f'CREATE DATABASE "{self.pg_db}"')
        migrate = run_cmd(
            [sys.executable, "-m", "moat.migrate"], 180, env=self.env(), cwd=self.base
        )
        if migrate.returncode != 0:
            out = (migrate.stdout + migrate.stderr).strip().splitlines()[-15:]
            raise BenchError("python -m moat.migrate failed:\n    " + "\n    ".join(out))
        self.proc = spawn(
            [sys.executable, "-m", "services", *self.extra_args],
            log_path=self.log_path,
            limit=self.limit,
            env=self.env(),
            cwd=self.base,
        )
        try:
            wait_smtp_banner(self.smtp_port, 90, alive=self.alive)
        except BenchError as exc:
            raise BenchError(f"Moat did not start: {exc}\n{tail(self.log_path)}") from None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, grace=30)
            self.proc = None
        rabbitmqctl = shutil.which("rabbitmqctl")
        if self.vhost_made and rabbitmqctl:
            with contextlib.suppress(BenchError):
                run_cmd([rabbitmqctl, "delete_vhost", self.vhost], 90)
            self.vhost_made = False
        if self.pg_db:
            with contextlib.suppress(BenchError):
                _pg_exec(self.pg_admin_url, f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')
            self.pg_db = None


def _pg_url(admin_url: str, database: str, scheme: str) -> str:
    rest = admin_url.split("://", 1)[1]
    server = rest.rsplit("/", 1)[0] if "/" in rest else rest
    return f"{scheme}://{server}/{database}"


def _pg_exec(admin_url: str, sql: str) -> None:
    async def run() -> None:
        import asyncpg

        conn = await asyncpg.connect(admin_url, timeout=30)
        try:
            await conn.execute(sql, timeout=60)
        finally:
            await conn.close()

    try:
        asyncio.run(asyncio.wait_for(run(), 90))
    except Exception as exc:
        raise BenchError(f"PostgreSQL: {sql!r} failed: {exc!r}") from exc


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    kind: str  # source | ceiling | postfix | postfix-rspamd | moat | moat-all
    ran: bool = False
    note: str = ""
    sent: int = 0
    accepted: int = 0
    accept_s: float | None = None
    accepted_rate: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    p90_ms: float | None = None  # JSON only
    max_ms: float | None = None  # JSON only
    delivered: int = 0
    duplicates: int = 0
    e2e_s: float | None = None
    e2e_rate: float | None = None
    complete: bool = False
    queue_p50_s: float | None = None  # 250 at the target -> last byte at the sink
    queue_p99_s: float | None = None
    cpu_ms_per_msg: float | None = None  # CPU of the MTA's processes / delivered messages
    shared_cpu_ms_per_msg: dict[str, float] = field(default_factory=dict)  # RabbitMQ, PostgreSQL
    # CPU ms/msg of each part of a row made of several programs (postfix, rspamd); their sum
    # is cpu_ms_per_msg
    parts_cpu_ms_per_msg: dict[str, float] = field(default_factory=dict)
    others_cpu: float | None = None  # share of the CPUs other processes used during the row


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Config:
    messages: int
    concurrency: int
    warmup: int
    per_connection: int
    phase_timeout: float
    delivery_timeout: float
    fallback_sink: bool
    wait_idle: float = 0.0
    repeats: int = 3  # runs of each ceiling row; the median is reported
    tls: bool = False  # --tls: the driver uses STARTTLS to Moat (the references stay plain)


def wait_idle(cfg: Config) -> None:
    """With --wait-idle S: wait (at most S seconds) until the CPUs are under 15% busy."""
    if cfg.wait_idle <= 0:
        return
    deadline = time.monotonic() + cfg.wait_idle
    busy = cpu_busy(1.0)
    if busy < 0.15:
        return
    log(f"CPUs {busy:.0%} busy: waiting up to {cfg.wait_idle:.0f}s for them to go quiet")
    while time.monotonic() < deadline:
        busy = cpu_busy(2.0)
        if busy < 0.15:
            return
    log(f"still {busy:.0%} busy; going on")


def run_through(
    name: str,
    kind: str,
    port: int,
    sink: Sink,
    cfg: Config,
    batch: list[tuple[str, bytes]],
    alive: Callable[[], bool] | None = None,
    cpu_group: int | None = None,
    extra_pids: dict[str, int] | None = None,
    part_groups: dict[str, int] | None = None,
) -> Row:
    """``extra_pids``: processes of the row's own outside Moat's group (clamd), whose CPU is
    reported like RabbitMQ's. ``part_groups``: further process groups that belong to the MTA
    under test (Rspamd behind Postfix): their CPU is added to the row's CPU ms/msg and shown
    per part in a note."""
    row = Row(name=name, kind=kind)
    moat = kind.startswith("moat")
    extra = extra_pids or {}
    parts = part_groups or {}
    wait_idle(cfg)
    log(f"{name}: sending {len(batch)} messages over {cfg.concurrency} sessions")
    cpu_before = group_cpu_seconds(cpu_group) if cpu_group else 0.0
    parts_before = {part: group_cpu_seconds(group) for part, group in parts.items()}
    shared_before = shared_cpu_seconds() if moat else {}
    shared_before.update({name: pid_cpu_seconds(pid) for name, pid in extra.items()})
    groups = [sink.proc.pid, *([cpu_group] if cpu_group else []), *parts.values()]
    watch = CpuWatch(groups, moat, extra)
    result = drive(
        port,
        batch,
        cfg.concurrency,
        cfg.per_connection,
        total_timeout=cfg.phase_timeout,
        starttls=cfg.tls and moat,
    )
    row.ran = True
    row.sent, row.accepted = result.sent, result.accepted
    row.accept_s = result.seconds
    row.accepted_rate = result.accepted / result.seconds if result.seconds > 0 else None
    if result.latencies:
        row.p50_ms = 1000 * (percentile(result.latencies, 0.50) or 0)
        row.p99_ms = 1000 * (percentile(result.latencies, 0.99) or 0)
        row.p90_ms = 1000 * (percentile(result.latencies, 0.90) or 0)
        row.max_ms = 1000 * max(result.latencies)
    notes = []
    if result.timed_out:
        notes.append(f"driver stopped after {cfg.phase_timeout:.0f}s")
    if len(batch) - result.sent:
        notes.append(f"{len(batch) - result.sent} not sent")
    for table, label in ((result.rejected, "rejected"), (result.errors, "errors")):
        if table:
            notes.append(f"{label}: " + ", ".join(f"{k} x{v}" for k, v in table.items()))
    accepted_ids = set(result.accepted_at)
    got, complete = sink.wait_for(accepted_ids, cfg.delivery_timeout, alive=alive)
    row.others_cpu = watch.others_share()
    arrived = {i: t for i, t in got.first_seen.items() if i in accepted_ids}
    row.delivered = len(arrived)
    if cpu_group and arrived:
        spent = group_cpu_seconds(cpu_group) - cpu_before
        row.cpu_ms_per_msg = 1000 * spent / len(arrived)
        if parts:
            row.parts_cpu_ms_per_msg[kind.split("-")[0]] = round(row.cpu_ms_per_msg, 2)
            for part, group in parts.items():
                used = 1000 * (group_cpu_seconds(group) - parts_before[part]) / len(arrived)
                row.parts_cpu_ms_per_msg[part] = round(used, 2)
                row.cpu_ms_per_msg += used
        after = {**shared_cpu_seconds(), **{n: pid_cpu_seconds(p) for n, p in extra.items()}}
        for service, before in shared_before.items():
            used = 1000 * (after[service] - before) / len(arrived)
            row.shared_cpu_ms_per_msg[service] = round(used, 2)
    row.duplicates = got.duplicates
    row.complete = complete and bool(accepted_ids)
    if arrived:
        row.e2e_s = max(arrived.values()) - result.start_wall
        row.e2e_rate = len(arrived) / row.e2e_s if row.e2e_s > 0 else None
        if kind.startswith("postfix") or moat:
            # file mtimes tick with the kernel's coarse clock: clamp the few ms below zero
            waits = [max(0.0, arrived[i] - result.accepted_at[i]) for i in arrived]
            row.queue_p50_s = percentile(waits, 0.50)
            row.queue_p99_s = percentile(waits, 0.99)
    if not complete:
        notes.append(
            f"only {row.delivered}/{len(accepted_ids)} accepted messages reached the sink "
            f"within {cfg.delivery_timeout:.0f}s"
        )
    if got.duplicates:
        notes.append(f"{got.duplicates} duplicate deliveries")
    if row.parts_cpu_ms_per_msg:
        notes.append(
            "CPU ms/msg by part: "
            + ", ".join(f"{k} {v:.2f}" for k, v in row.parts_cpu_ms_per_msg.items())
        )
    if row.shared_cpu_ms_per_msg:
        notes.append(
            "CPU ms/msg outside Moat's processes, in the shared services: "
            + ", ".join(f"{k} {v:.2f}" for k, v in row.shared_cpu_ms_per_msg.items())
        )
    row.note = "; ".join(notes)
    log(f"{name}: accepted {row.accepted}/{len(batch)}, delivered {row.delivered}")
    return row


def warm_up(
    name: str,
    port: int,
    sink: Sink,
    cfg: Config,
    size: int,
    timeout: float,
    alive: Callable[[], bool] | None = None,
    starttls: bool = False,
) -> str | None:
    """Send a few messages first (process start-up, caches, connections); None when all
    arrived, else what went wrong."""
    if cfg.warmup <= 0:
        return None
    batch = [(f"warm{size}-{i}", make_message(f"warm{size}", i, size)) for i in range(cfg.warmup)]
    result = drive(
        port,
        batch,
        min(cfg.concurrency, cfg.warmup),
        cfg.per_connection,
        total_timeout=min(cfg.phase_timeout, timeout),
        starttls=starttls,
    )
    if not result.accepted:
        problems = {**result.rejected, **result.errors}
        return f"{name} accepted none of {len(batch)} warm-up messages ({problems})"
    _, complete = sink.wait_for(set(result.accepted_at), timeout, alive=alive)
    if not complete:
        return f"{name}: warm-up messages did not all reach the sink within {timeout:.0f}s"
    return None


def bench_size(
    size: int,
    cfg: Config,
    workdir: Path,
    args: argparse.Namespace,
    stack: contextlib.ExitStack,
    problems: list[str],
) -> list[Row]:
    tag = f"m{size}"
    log(f"=== {format_size(size)}: generating {cfg.messages} messages")
    batch = [(f"{tag}-{i}", make_message(tag, i, size)) for i in range(cfg.messages)]
    limit = cfg.phase_timeout + cfg.delivery_timeout + 600
    rows: list[Row] = []
    sink_kind = "aiosmtpd-sink" if cfg.fallback_sink else "sink"

    # a. ceiling: smtp-source -> smtp-sink (short runs: the median of a few)
    row = Row(name="smtp-source -> sink", kind="source")
    if cfg.fallback_sink:
        row.note = "skipped: postfix tools unavailable"
    else:
        try:
            row = median_of(
                [source_to_sink(size, cfg, workdir, limit, n) for n in range(cfg.repeats)]
            )
        except BenchError as exc:
            row.note = f"could not run: {exc}"
            problems.append(f"{format_size(size)} {row.name}: {exc}")
    rows.append(row)

    # a'. ceiling: our driver -> smtp-sink (the median of a few as well)
    row = Row(name=f"driver -> {sink_kind}", kind="ceiling")
    try:
        runs = []
        for n in range(cfg.repeats):
            sink = Sink(workdir, f"{tag}-driver{n}", limit, cfg.fallback_sink)
            try:
                if cfg.warmup and n == 0:
                    warm_up(row.name, sink.port, sink, cfg, size, 60)
                runs.append(run_through(row.name, "ceiling", sink.port, sink, cfg, batch))
            finally:
                sink.stop()
                sink.clear()
        row = median_of(runs)
    except BenchError as exc:
        row.note = f"could not run: {exc}"
        problems.append(f"{format_size(size)} {row.name}: {exc}")
    rows.append(row)

    # b. Postfix relaying to the sink
    row = Row(name=f"driver -> postfix -> {sink_kind}", kind="postfix")
    if cfg.fallback_sink:
        row.note = "skipped: postfix unavailable"
    else:
        try:
            row = through_postfix(row.name, size, cfg, workdir, batch, limit, stack)
        except BenchError as exc:
            row.note = f"could not run: {exc}"
            problems.append(f"{format_size(size)} {row.name}: {exc}")
    rows.append(row)

    # b'. Postfix relaying to the sink, every message scanned by Rspamd through its milter
    row = Row(name=f"driver -> postfix+rspamd -> {sink_kind}", kind="postfix-rspamd")
    if cfg.fallback_sink:
        row.note = "skipped: postfix unavailable"
    elif args.skip_rspamd:
        row.note = "skipped (--skip-rspamd)"
    elif args.rspamd_missing:
        row.note = f"skipped: {args.rspamd_missing}"
    else:
        try:
            row = through_postfix(
                row.name, size, cfg, workdir, batch, limit, stack, rspamd_db=workdir / "rspamd-db"
            )
        except BenchError as exc:
            row.note = f"could not run: {exc}"
            problems.append(f"{format_size(size)} {row.name}: {exc}")
    rows.append(row)

    # c. Moat relaying to the sink
    row = Row(name=f"driver -> moat -> {sink_kind}", kind="moat")
    if args.skip_moat:
        row.note = "skipped (--skip-moat)"
    else:
        try:
            row = through_moat(row.name, size, cfg, workdir, batch, limit, args, stack)
        except BenchError as exc:
            row.note = f"could not run: {exc}"
            problems.append(f"{format_size(size)} {row.name}: {exc}")
    rows.append(row)

    # d. Moat with every engine on (ClamAV too)
    row = Row(name=f"driver -> moat+clamav -> {sink_kind}", kind="moat-all")
    if args.skip_moat or args.skip_all_engines:
        row.note = "skipped (--skip-moat or --skip-all-engines)"
    else:
        try:
            row = through_moat(
                row.name, size, cfg, workdir, batch, limit, args, stack, all_engines=True
            )
        except BenchError as exc:
            row.note = f"could not run: {exc}"
            problems.append(f"{format_size(size)} {row.name}: {exc}")
    rows.append(row)
    return rows


def median_of(runs: list[Row]) -> Row:
    """The run with the median end-to-end rate; the note gives the spread."""
    if len(runs) == 1:
        return runs[0]
    ordered = sorted(runs, key=lambda r: r.e2e_rate or 0.0)
    row = ordered[(len(ordered) - 1) // 2]
    rates = [r.accepted_rate or 0.0 for r in runs]
    spread = (
        f"median of {len(runs)} runs by e2e/s; accepted/s ranged "
        f"{min(rates):,.0f}-{max(rates):,.0f}"
    )
    row.note = "; ".join(filter(None, [spread, row.note]))
    return row


def source_to_sink(size: int, cfg: Config, workdir: Path, limit: float, run: int = 0) -> Row:
    row = Row(name="smtp-source -> sink", kind="source")
    tag = f"src{size}"
    message_file = workdir / f"{tag}.eml"
    # smtp-source -F sends one file for every message, appending CRLF to each line.
    message_file.write_bytes(make_message(tag, 0, size).replace(b"\r\n", b"\n"))
    sink = Sink(workdir, f"{tag}-{run}", limit, fallback=False)
    try:
        argv = [
            str(SMTP_SOURCE),
            "-s",
            str(cfg.concurrency),
            "-m",
            str(cfg.messages),
            "-d",
            "-M",
            "client.sender.test",
            "-f",
            f"bench@{SENDER_DOMAIN}",
            "-t",
            RCPT,
            "-F",
            str(message_file),
            f"127.0.0.1:{sink.port}",
        ]
        wait_idle(cfg)
        log(f"{row.name}: smtp-source -s {cfg.concurrency} -m {cfg.messages} -d")
        watch = CpuWatch([sink.proc.pid], shared=False)
        start_wall = time.time()
        started = time.perf_counter()
        done = run_cmd(argv, cfg.phase_timeout)
        seconds = time.perf_counter() - started
        row.ran = True
        if done.returncode != 0:
            row.note = f"smtp-source rc={done.returncode}: {(done.stderr or done.stdout)[-200:]}"
        got = sink.wait_files(cfg.messages, cfg.delivery_timeout)
        row.others_cpu = watch.others_share()
        row.sent = cfg.messages
        row.accepted = got.files if done.returncode != 0 else cfg.messages
        row.accept_s = seconds
        row.accepted_rate = row.accepted / seconds
        row.delivered = got.files
        row.complete = got.files >= cfg.messages
        if got.first_seen:
            # every file carries the same id; its mtime is the earliest. Use the newest file.
            newest = max(os.stat(p).st_mtime for p in sink.dir.iterdir())
            row.e2e_s = newest - start_wall
            row.e2e_rate = got.files / row.e2e_s if row.e2e_s > 0 else None
        if not row.complete:
            row.note = (row.note + "; " if row.note else "") + (
                f"only {got.files}/{cfg.messages} at the sink"
            )
        log(f"{row.name}: {got.files} at the sink in {seconds:.2f}s")
    finally:
        sink.stop()
        sink.clear()
    return row


def through_postfix(
    name: str,
    size: int,
    cfg: Config,
    workdir: Path,
    batch: list[tuple[str, bytes]],
    limit: float,
    stack: contextlib.ExitStack,
    rspamd_db: Path | None = None,
) -> Row:
    """Postfix relaying to a fresh sink; with ``rspamd_db``, a private Rspamd (its databases
    and hyperscan cache there) scans every message through Postfix's milter interface."""
    tag = f"{size}-rspamd" if rspamd_db else f"{size}"
    sink = Sink(workdir, f"m{tag}-postfix", limit, fallback=False)
    stack.callback(sink.clear)
    stack.callback(sink.stop)
    rspamd = None
    parts: dict[str, int] = {}
    if rspamd_db is not None:
        rspamd = RspamdInstance(workdir, str(size), rspamd_db, limit)
        stack.callback(rspamd.stop)
        log(f"{name}: starting a private Rspamd, milter on 127.0.0.1:{rspamd.milter_port}")
        rspamd.start()
        assert rspamd.proc is not None
        parts["rspamd"] = rspamd.proc.pid
    postfix = PostfixInstance(
        workdir / f"pf{tag}", sink.port, cfg.concurrency, rspamd.milter_port if rspamd else None
    )
    stack.callback(postfix.stop)
    try:
        log(f"{name}: starting a private Postfix on 127.0.0.1:{postfix.port}")
        postfix.start()
        problem = warm_up(name, postfix.port, sink, cfg, size, 120)
        rspamd_before = rspamd.cpu_by_process() if rspamd else {}
        row = run_through(
            name,
            "postfix-rspamd" if rspamd else "postfix",
            postfix.port,
            sink,
            cfg,
            batch,
            cpu_group=postfix.process_group(),
            part_groups=parts,
        )
        if problem:
            row.note = "; ".join(filter(None, [problem, row.note]))
        if rspamd is not None:
            count, actions, dns = rspamd.scanned({message_id for message_id, _ in batch})
            # the row's window runs to the last delivery; this one a little longer (idle)
            rspamd_after = rspamd.cpu_by_process()
            by_kind = {
                kind: 1000 * (used - rspamd_before.get(kind, 0.0)) / max(1, row.delivered)
                for kind, used in sorted(rspamd_after.items())
            }
            row.note = "; ".join(
                filter(
                    None,
                    [
                        row.note,
                        f"rspamd scanned {count}/{len(batch)} ("
                        + ", ".join(f"{k} {v}" for k, v in sorted(actions.items()))
                        + f"), {dns} DNS requests",
                        "rspamd CPU ms/msg by process: "
                        + ", ".join(f"{k} {v:.2f}" for k, v in by_kind.items()),
                    ],
                )
            )
            if not rspamd.alive():
                row.note = "; ".join(filter(None, [row.note, "Rspamd exited during the run"]))
        return row
    except BenchError as exc:
        logs = tail(postfix.log_path) + (f"\n{rspamd.tail()}" if rspamd else "")
        raise BenchError(f"{exc}\n{logs}") from None
    finally:
        postfix.stop()
        if rspamd is not None:
            rspamd.stop()
        sink.stop()
        sink.clear()


def through_moat(
    name: str,
    size: int,
    cfg: Config,
    workdir: Path,
    batch: list[tuple[str, bytes]],
    limit: float,
    args: argparse.Namespace,
    stack: contextlib.ExitStack,
    all_engines: bool = False,
) -> Row:
    tag = f"{size}-all" if all_engines else f"{size}"
    sink = Sink(workdir, f"m{tag}-moat", limit, cfg.fallback_sink)
    stack.callback(sink.clear)
    stack.callback(sink.stop)
    moat = MoatInstance(workdir, tag, sink.port, args.database, args.pg_admin_url, limit)
    moat.extra_args = list(args.moat_arg)
    stack.callback(moat.stop)
    clamd = None
    extra_pids: dict[str, int] = {}
    if all_engines:
        # Every check is on by default except ClamAV (off so that a missing clamd holds no
        # mail): a clamd of our own, as the tests run it (the fixture signatures: there is no
        # network here for freshclam's databases, so its per-message cost is a lower bound).
        sys.path.insert(0, str(REPO))
        from tests.support.clamd import ClamdServer

        try:
            clamd = ClamdServer()
            clamd.start()
        except RuntimeError as exc:
            raise BenchError(f"clamd: {exc}") from None
        stack.callback(clamd.stop)
        assert clamd.process is not None
        extra_pids["clamd"] = clamd.process.pid
        moat.extra_env = {
            "MOAT_SCANNER__CLAMAV__ENABLED": "true",
            "MOAT_SCANNER__CLAMAV__SOCKET": str(clamd.socket),
        }
    try:
        log(f"{name}: starting Moat ({args.database}) with SMTP on 127.0.0.1:{moat.smtp_port}")
        moat.start()
        problem = warm_up(
            name, moat.smtp_port, sink, cfg, size, 180, alive=moat.alive, starttls=cfg.tls
        )
        if problem and not moat.alive():
            raise BenchError(f"{problem}; Moat exited:\n{tail(moat.log_path)}")
        row = run_through(
            name,
            "moat-all" if all_engines else "moat",
            moat.smtp_port,
            sink,
            cfg,
            batch,
            alive=moat.alive,
            cpu_group=moat.proc.pid if moat.proc else None,
            extra_pids=extra_pids,
        )
        if not moat.alive():
            row.note = "; ".join(filter(None, [row.note, "Moat exited during the run"]))
        if problem:
            row.note = "; ".join(filter(None, [problem, row.note]))
        if not row.complete:
            log(f"{name}: not everything arrived; Moat's log ends with:\n{tail(moat.log_path)}")
        return row
    finally:
        moat.stop()
        if clamd is not None:
            clamd.stop()
        sink.stop()
        sink.clear()


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def format_size(size: int) -> str:
    if size % (1024 * 1024) == 0:
        return f"{size // (1024 * 1024)} MiB"
    if size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} B"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return "n/a"
    return f"{a / b:.2f}x"


def report(size: int, cfg: Config, rows: list[Row], busy: float) -> str:
    out = [
        "",
        f"Message size {format_size(size)} ({size} bytes), N={cfg.messages}, "
        f"C={cfg.concurrency} sessions, warm-up {cfg.warmup}; CPUs {busy:.0%} busy just before",
        "",
    ]
    header = (
        f"{'path':<32} {'accepted/s':>10} {'e2e/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'delivered':>11} {'queue p50/p99 s':>16} {'CPU ms/msg':>10} {'others':>6}"
    )
    out += [header, "-" * len(header)]
    for row in rows:
        if not row.ran:
            out.append(f"{row.name:<32} {row.note}")
            continue
        delivered = f"{row.delivered}/{row.accepted}" + ("" if row.complete else "!")
        queue = (
            "-" if row.queue_p50_s is None else f"{row.queue_p50_s:.3f}/{row.queue_p99_s or 0:.3f}"
        )
        out.append(
            f"{row.name:<32} {_num(row.accepted_rate):>10} {_num(row.e2e_rate):>9} "
            f"{_num(row.p50_ms, 2):>8} {_num(row.p99_ms, 2):>8} {delivered:>11} {queue:>16} "
            f"{_num(row.cpu_ms_per_msg, 2):>10} "
            f"{'-' if row.others_cpu is None else f'{row.others_cpu:.0%}':>6}"
        )
    notes = [(row.name, row.note) for row in rows if row.ran and row.note]
    for name, note in notes:
        out.append(f"  note ({name}): {note}")
    kinds = {row.kind: row for row in rows}
    postfix, postfix_rspamd = kinds.get("postfix"), kinds.get("postfix-rspamd")
    ceiling, source = kinds.get("ceiling"), kinds.get("source")
    for who, moat in (("Moat", kinds.get("moat")), ("Moat+ClamAV", kinds.get("moat-all"))):
        if not (moat and moat.ran):
            continue
        out.append("")
        for label, ref in (
            ("Postfix+Rspamd", postfix_rspamd),
            ("Postfix relay", postfix),
            ("ceiling (driver -> sink)", ceiling),
            ("ceiling (smtp-source -> sink)", source),
        ):
            if ref and ref.ran:
                line = (
                    f"  {who} / {label:<30} end-to-end {_ratio(moat.e2e_rate, ref.e2e_rate):>7}"
                    f"   accepted {_ratio(moat.accepted_rate, ref.accepted_rate):>7}"
                )
                if ref.kind.startswith("postfix"):
                    line += f"   CPU/msg {_ratio(total_cpu_ms(moat), total_cpu_ms(ref)):>7}"
                out.append(line)
    if any(row.kind.startswith("moat") and row.ran for row in rows):
        out.append(
            "  (CPU/msg: every process of the row, Moat's RabbitMQ, PostgreSQL and clamd included)"
        )
    return "\n".join(out)


def total_cpu_ms(row: Row) -> float | None:
    """A row's CPU per message with the shared services it used (RabbitMQ, PostgreSQL, clamd):
    the figure to compare with Postfix+Rspamd, whose every process is in its own column."""
    if row.cpu_ms_per_msg is None:
        return None
    return row.cpu_ms_per_msg + sum(row.shared_cpu_ms_per_msg.values())


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="SMTP throughput bench: Moat vs a Postfix relay vs the smtp-sink ceiling."
    )
    parser.add_argument("--messages", "-n", type=int, default=1000, help="messages per run")
    parser.add_argument("--concurrency", "-c", type=int, default=20, help="SMTP sessions")
    parser.add_argument("--sizes", default="5k,50k", help="comma-separated sizes (5k,50k,1m)")
    parser.add_argument("--skip-moat", action="store_true", help="measure the references only")
    parser.add_argument(
        "--skip-all-engines",
        action="store_true",
        help="no row for Moat with every engine on (ClamAV: a clamd of the bench's own)",
    )
    parser.add_argument(
        "--skip-rspamd",
        action="store_true",
        help="no Postfix+Rspamd row (Postfix scanning through Rspamd's milter interface)",
    )
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="Moat's database (default sqlite)",
    )
    parser.add_argument(
        "--pg-admin-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="where to CREATE/DROP the bench database for --database postgresql",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=40,
        help="warm-up messages before each measured run (not counted)",
    )
    parser.add_argument(
        "--per-connection",
        type=int,
        default=0,
        help="messages per connection before reconnecting (0 = keep it open, like smtp-source -d)",
    )
    parser.add_argument(
        "--phase-timeout", type=float, default=600, help="seconds the driver may take for one run"
    )
    parser.add_argument(
        "--delivery-timeout",
        type=float,
        default=300,
        help="seconds to wait, after sending, for the sink to get everything",
    )
    parser.add_argument(
        "--ceiling-runs",
        type=int,
        default=3,
        metavar="K",
        help="run each ceiling row K times and report the median (they are "
        "short, so single runs are noisy)",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="S",
        help="before each measured run, wait up to S seconds for the CPUs "
        "to be under 15%% busy (shared machines; default: no wait)",
    )
    parser.add_argument(
        "--moat-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for python -m services (repeatable), e.g. --moat-arg=--scanners=2",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="the driver uses STARTTLS to Moat (the 250 latency then includes TLS); the "
        "Postfix and ceiling rows stay in plain text",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args(argv)
    try:
        args.size_list = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if not args.size_list:
        parser.error("--sizes is empty")
    if args.messages < 1 or args.concurrency < 1 or args.ceiling_runs < 1:
        parser.error("--messages, --concurrency and --ceiling-runs must be at least 1")
    return args


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "--internal-sink":
        run_internal_sink(argv[1], int(argv[2]))
        return 0
    args = parse_args(argv)
    install_stop_handlers()
    problems: list[str] = []
    results: dict[str, Any] = {}
    reports: list[str] = []
    busy = cpu_busy(2.0)
    if busy > 0.2:
        log(
            f"WARNING: the CPUs are {busy:.0%} busy before the bench starts: something else "
            "is running, and the figures will be lower and noisier than they should be"
        )
    workdir = Path(tempfile.mkdtemp(prefix="moat-bench-"))
    os.chmod(workdir, 0o755)  # smtp-sink and Postfix run as 'postfix' and must traverse it
    try:
        with contextlib.ExitStack() as stack:
            missing = ensure_postfix(workdir)
            if missing:
                log(f"WARNING: {missing}; skipping smtp-source/smtp-sink/Postfix references")
                problems.append(missing)
            args.rspamd_missing = None if args.skip_rspamd or missing else ensure_rspamd()
            if args.rspamd_missing:
                log(f"WARNING: {args.rspamd_missing}; skipping the Postfix+Rspamd row")
                problems.append(args.rspamd_missing)
            elif not args.skip_rspamd and not missing:
                log(f"Postfix+Rspamd row: {rspamd_version()}")
            cfg = Config(
                messages=args.messages,
                concurrency=args.concurrency,
                warmup=args.warmup,
                per_connection=args.per_connection,
                phase_timeout=args.phase_timeout,
                delivery_timeout=args.delivery_timeout,
                fallback_sink=missing is not None,
                wait_idle=args.wait_idle,
                repeats=args.ceiling_runs,
                tls=args.tls,
            )
            for size in args.size_list:
                busy_before = cpu_busy(1.0)
                rows = bench_size(size, cfg, workdir, args, stack, problems)
                results[str(size)] = {
                    "cpu_busy_before": busy_before,
                    "rows": [asdict(r) for r in rows],
                }
                text = report(size, cfg, rows, busy_before)
                reports.append(text)
                print(text, flush=True)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        log("interrupted; everything started has been stopped")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if args.keep_tmp:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(machine_line())
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "messages": args.messages,
                    "concurrency": args.concurrency,
                    "warmup": args.warmup,
                    "database": args.database,
                    "machine": machine_line(),
                    "sizes": results,
                    "problems": problems,
                },
                indent=2,
            )
        )
    if problems:
        print("\nCould not run:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    return 0


def _cpu_times() -> tuple[int, int]:
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields), idle


def cpu_busy(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over the next ``seconds`` (0..1), from /proc/stat."""
    try:
        total0, idle0 = _cpu_times()
        time.sleep(seconds)
        total1, idle1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return 0.0
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def machine_line() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"machine: {os.cpu_count()} CPUs ({cpu}), Python {sys.version.split()[0]}"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
