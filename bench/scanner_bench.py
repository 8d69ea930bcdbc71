#!/usr/bin/env python3
"""Scanner throughput bench: one Moat scanner process against one Rspamd worker process.

Run from the repository root::

    .venv/bin/python bench/scanner_bench.py [--messages N] [--concurrency C] [--corpus DIR ...]
                                            [--skip-rspamd] [--json FILE]

Both sides get the same N messages (a deterministic sample of the SpamAssassin corpus, read
into memory first) with the same envelope, C at a time, and the same DNS server: a FakeDNS
(tests/support/fakedns.py) on loopback, in a child process of its own, answering NXDOMAIN to
everything, so no check waits on the internet and no packet leaves the machine.

* Moat: ``Scanner(settings)`` from services/scanner/scanning.py, ``scan`` + ``judge`` per
  message (what the queue worker does, minus the spool read and the database write), C scans
  at a time on one event loop in this process. CPU is this process's ``time.process_time``.
* Rspamd: a private instance (Debian's package, installed if missing) with one normal worker on
  a loopback port, fed over HTTP ``/checkv2`` by C keep-alive connections (httpx). CPU is that
  of its processes, from /proc.

bench/README.md has the details. A timing never fails the run; the exit status is non-zero only
when something could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ipaddress
import json
import logging
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rspamd_peer
from rspamd_peer import PROFILES, RSPAMD, rspamd_modules_off
from smtp_bench import stop_group

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "spamassassin"
DEFAULT_DIRS = (CORPUS / "ham", CORPUS / "spam")
RCPT = "bob@example.test"
PROTECTED_DOMAIN = "example.test"
SEED = 20261129
TIMEOUT_BIN = shutil.which("timeout")
CLK_TCK = os.sysconf("SC_CLK_TCK")

ACTIONS = ("no action", "greylist", "add header", "rewrite subject", "soft reject", "reject")
DNS_FAIL = re.compile(r"(DNSFAIL|TEMPFAIL)$")


class BenchError(Exception):
    """A step of the bench could not run (as opposed to a slow result)."""


class BenchTimeout(BaseException):
    """The whole run took longer than ``--timeout``."""


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Signals, children, CPU from /proc
# --------------------------------------------------------------------------------------------

_stopping = False


def _on_signal(signum: int, frame: Any) -> None:
    """First SIGINT/SIGTERM/SIGHUP unwinds (every ``finally`` stops what it started); later
    ones are ignored so the clean-up is not cut short."""
    global _stopping
    if _stopping:
        return
    _stopping = True
    raise KeyboardInterrupt(f"signal {signum}")


def _on_alarm(signum: int, frame: Any) -> None:
    global _stopping
    if _stopping:
        return
    _stopping = True
    raise BenchTimeout("the run exceeded --timeout")


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(argv: list[str], *, log_path: Path, limit: float, **kwargs: Any) -> subprocess.Popen:
    """``argv`` in its own session under coreutils ``timeout`` (a last bound on its life)."""
    if TIMEOUT_BIN:
        argv = [TIMEOUT_BIN, "-k", "10", f"{int(limit)}s", *argv]
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            argv,
            stdout=kwargs.pop("stdout", out),
            stderr=out,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            **kwargs,
        )


def _stat(pid: str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from the 3rd (state) on


def group_cpu(pgid: int) -> dict[int, tuple[str, float]]:
    """user+system CPU seconds of every live process in process group ``pgid``."""
    result: dict[int, tuple[str, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat(entry.name)
        if fields is None or int(fields[2]) != pgid:
            continue
        try:
            comm = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            comm = "?"
        result[int(entry.name)] = (comm, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return result


def pid_cpu(pid: int) -> float:
    fields = _stat(str(pid))
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / CLK_TCK


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    name: str  # label/file name
    label: str  # the directory's name (ham, spam, ...)
    raw: bytes
    mail_from: str
    client_ip: str


_IP_IN_BRACKETS = re.compile(rb"\[(\d{1,3}(?:\.\d{1,3}){3})\]")


def _envelope_of(raw: bytes) -> tuple[str, str]:
    """MAIL FROM (Return-Path, else From) and the client address (the first public IPv4 in
    brackets in the Received headers, top down): the same envelope for both scanners."""
    headers = BytesHeaderParser().parsebytes(raw)
    mail_from = ""
    for name in ("Return-Path", "From"):
        with contextlib.suppress(Exception):
            pairs = getaddresses([str(v) for v in headers.get_all(name, [])])
            found = next((addr for _, addr in pairs if "@" in addr), "")
            if found:
                mail_from = found
                break
    client_ip = ""
    for value in headers.get_all("Received", []) or []:
        for match in _IP_IN_BRACKETS.finditer(str(value).encode("ascii", "replace")):
            with contextlib.suppress(ValueError):
                ip = ipaddress.IPv4Address(match.group(1).decode())
                if ip.is_global:
                    client_ip = str(ip)
                    break
        if client_ip:
            break
    return mail_from, client_ip


def load_messages(dirs: list[Path], count: int, seed: int) -> list[Sample]:
    files: list[tuple[str, Path]] = []
    for directory in dirs:
        if not directory.is_dir():
            raise BenchError(f"corpus directory {directory} does not exist")
        files += [(directory.name, p) for p in sorted(directory.iterdir()) if p.is_file()]
    if not files:
        raise BenchError("no messages in the corpus directories")
    if count > len(files):
        log(f"only {len(files)} messages in the corpus; using them all instead of {count}")
        count = len(files)
    picked = random.Random(seed).sample(files, count)
    samples = []
    for label, path in picked:
        raw = path.read_bytes()
        if raw.startswith(b"From "):  # an mbox separator line, never part of mail on the wire
            raw = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
        mail_from, client_ip = _envelope_of(raw)
        samples.append(Sample(f"{label}/{path.name}", label, raw, mail_from, client_ip))
    return samples


# --------------------------------------------------------------------------------------------
# FakeDNS in a child process (so its CPU is neither Moat's nor Rspamd's, and both use it)
# --------------------------------------------------------------------------------------------

_DNS_CHILD = r"""
import json, socket, sys, time
sys.path.insert(0, sys.argv[1])
from dnslib.server import DNSLogger
from tests.support.fakedns import FakeDNS
limit = float(sys.argv[2])
with FakeDNS() as dns:
    dns.server.server.logger = DNSLogger("-recv,-send,-request,-reply,-truncated,-error,-data")
    sock = dns.server.server.socket
    for opt in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if opt is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
                break
            except OSError:
                pass
    print(json.dumps({"port": dns.port}), flush=True)
    started = time.monotonic()
    for line in sys.stdin:
        if time.monotonic() - started > limit:
            break
        queries = dns.queries
        zones = {}
        for name, qtype in queries:
            zone = ".".join(name.split(".")[-3:])
            zones[zone] = zones.get(zone, 0) + 1
        print(json.dumps({"queries": len(queries), "zones": zones}), flush=True)
"""


class DnsChild:
    def __init__(self, workdir: Path, limit: float) -> None:
        self.proc = spawn(
            [sys.executable, "-c", _DNS_CHILD, str(REPO), str(limit)],
            log_path=workdir / "fakedns.log",
            limit=limit + 30,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.port = int(self._read(30)["port"])
        self.pid = self._python_pid()

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            raise BenchError("the FakeDNS child did not answer (see fakedns.log)")
        return dict(json.loads(line))

    def _python_pid(self) -> int:
        # Under ``timeout`` the Python process is the child of the one we started.
        if not TIMEOUT_BIN:
            return self.proc.pid
        for pid, _ in group_cpu(self.proc.pid).items():
            if pid != self.proc.pid:
                return pid
        return self.proc.pid

    def stats(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"q\n")
        self.proc.stdin.flush()
        return self._read(30)

    def cpu(self) -> float:
        return pid_cpu(self.pid)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            if self.proc.stdin:
                self.proc.stdin.close()
        stop_group(self.proc, grace=5)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    processes: str
    messages: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    by_label: dict[str, Counter[str]] = field(default_factory=dict)
    errors: int = 0
    dns_queries: int = 0
    dns_cpu_seconds: float = 0.0
    client_cpu_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float | None:
        return self.messages / self.seconds if self.seconds > 0 else None

    @property
    def cpu_ms(self) -> float | None:
        return 1000 * self.cpu_seconds / self.messages if self.messages else None

    def count(self, label: str, outcome: str) -> None:
        self.outcomes[outcome] += 1
        self.by_label.setdefault(label, Counter())[outcome] += 1

    def as_json(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k not in ("latencies_ms", "outcomes")}
        data |= {
            "outcomes": dict(self.outcomes),
            "by_label": {label: dict(c) for label, c in self.by_label.items()},
            "msgs_per_s": self.rate,
            "cpu_ms_per_msg": self.cpu_ms,
            "p50_ms": percentile(self.latencies_ms, 0.50),
            "p90_ms": percentile(self.latencies_ms, 0.90),
            "p99_ms": percentile(self.latencies_ms, 0.99),
            "max_ms": max(self.latencies_ms, default=None),
        }
        return data


def zone_delta(before: dict[str, Any], after: dict[str, Any], top: int = 8) -> dict[str, int]:
    """Queries per zone (last three labels) between two FakeDNS snapshots, most first."""
    delta = {z: n - before["zones"].get(z, 0) for z, n in after["zones"].items()}
    return dict(sorted(((z, n) for z, n in delta.items() if n > 0), key=lambda kv: -kv[1])[:top])


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]


async def drive(
    samples: list[Sample],
    concurrency: int,
    one: Callable[[Sample], Awaitable[str]],
    result: Result | None,
    limit: float,
) -> None:
    """Run ``one`` over the samples, C at a time; record latency and outcome in ``result``."""
    queue: asyncio.Queue[Sample] = asyncio.Queue()
    for sample in samples:
        queue.put_nowait(sample)

    async def worker() -> None:
        while True:
            try:
                sample = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            started = time.perf_counter()
            try:
                outcome = await one(sample)
            except Exception as exc:  # counted, never fatal: the table shows it
                if result is not None:
                    result.errors += 1
                    if result.errors <= 3:
                        result.notes.append(f"error on {sample.name}: {exc!r}"[:300])
                continue
            if result is not None:
                result.latencies_ms.append((time.perf_counter() - started) * 1000)
                result.count(sample.label, outcome)

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        done, pending = await asyncio.wait(tasks, timeout=limit)
        if pending:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if result is not None:
                result.notes.append(f"phase stopped after {limit:.0f}s (--phase-timeout)")
    finally:
        for task in tasks:
            task.cancel()


# --------------------------------------------------------------------------------------------
# Moat
# --------------------------------------------------------------------------------------------


async def bench_moat(samples: list[Sample], cfg: argparse.Namespace, dns: DnsChild) -> Result:
    from moat.migrate import upgrade
    from moat.model import MessageEnvelope
    from moat.settings import Settings
    from services.scanner.scanning import Scanner
    from services.scanner.verdict import Undecidable

    moat_env = sorted(k for k in os.environ if k.startswith("MOAT_"))
    # A migrated database of its own: the sender lists and the classifier's feedback read it,
    # and without it every message is undecidable (a check failed), which measures nothing.
    database_url = f"sqlite+aiosqlite:///{tempfile.mkdtemp(prefix='moat-scanbench-')}/moat.db"
    await asyncio.to_thread(upgrade, database_url)  # alembic runs a loop of its own
    settings = Settings(
        env="dev",
        database_url=database_url,
        domains={PROTECTED_DOMAIN: {"relay": "127.0.0.1:25"}},
        dns={"nameservers": ["127.0.0.1"], "port": dns.port},
    )
    built = time.perf_counter()
    scanner = Scanner(settings)
    build_s = time.perf_counter() - built
    names = [check.name for check in scanner.checks]
    result = Result("moat", "1 (this process, one event loop)")
    result.extra |= {"checks": names, "build_seconds": round(build_s, 3)}
    if moat_env:
        result.notes.append(f"MOAT_* environment in effect: {', '.join(moat_env)}")

    envelopes = {
        s.name: MessageEnvelope(mail_from=s.mail_from, rcpt_tos=(RCPT,), client_address=s.client_ip)
        for s in samples
    }
    counter = iter(range(10**9))

    async def one(sample: Sample) -> str:
        message_id = f"bench{next(counter):08d}"
        scanned = await scanner.scan(message_id, sample.raw, envelopes[sample.name])
        try:
            return str(scanner.judge(scanned).verdict.value)
        except Undecidable:
            return "undecidable"

    log(f"moat: checks {', '.join(names)}; warm-up {cfg.warmup}")
    await drive(samples[: cfg.warmup], cfg.concurrency, one, None, cfg.phase_timeout)
    dns_before = dns.stats()
    dns_cpu_before = dns.cpu()
    cpu_before = time.process_time()
    started = time.perf_counter()
    await drive(samples, cfg.concurrency, one, result, cfg.phase_timeout)
    result.seconds = time.perf_counter() - started
    result.cpu_seconds = time.process_time() - cpu_before
    result.dns_cpu_seconds = dns.cpu() - dns_cpu_before
    dns_after = dns.stats()
    result.dns_queries = dns_after["queries"] - dns_before["queries"]
    result.extra["dns_zones"] = zone_delta(dns_before, dns_after)
    result.messages = len(result.latencies_ms)
    if result.outcomes["undecidable"]:
        result.notes.append(
            f"{result.outcomes['undecidable']} undecidable (a check failed): not a full scan"
        )
    return result


# --------------------------------------------------------------------------------------------
# Rspamd
# --------------------------------------------------------------------------------------------


class RspamdInstance:
    """One normal worker scanning over HTTP (``/checkv2``), no proxy, DNS to the bench's
    FakeDNS: the configuration is ``bench/rspamd_peer.py``'s, shared with smtp_bench."""

    def __init__(self, workdir: Path, dns_port: int, profile: str, limit: float) -> None:
        self.root = workdir / "rspamd"
        (self.root / "db").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = rspamd_peer.write_config(
            self.root,
            normal_port=self.port,
            workers=1,
            nameserver=f"127.0.0.1:{dns_port}",  # FakeDNS: NXDOMAIN for everything
            retransmits=2,
            profile=profile,
            header="moat scanner bench",
        )
        self.argv = rspamd_peer.command(self.root, self.conf, self.root / "db")
        self.proc = spawn(self.argv, log_path=self.root / "stdout.log", limit=limit)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        try:
            return (self.root / "log" / "rspamd.log").read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 15) -> str:
        text = self.log_text() or (self.root / "stdout.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    async def wait_ready(self, client: Any, timeout: float) -> list[str]:
        """/ping answers, and the worker has loaded the hyperscan database the helper compiles
        at start (until then regexps run without it, slower). Returns notes."""
        deadline = time.monotonic() + timeout
        pinged = False
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"rspamd exited ({self.proc.returncode}):\n{self.tail()}")
            if not pinged:
                with contextlib.suppress(Exception):
                    reply = await client.get(f"{self.url}/ping", timeout=2)
                    pinged = reply.status_code == 200 and reply.text.strip() == "pong"
            if pinged:
                text = self.log_text()
                if re.search(r"\(normal\).*(hyperscan_ready|hyperscan database .* loaded)", text):
                    return []
                if "hyperscan" in text and "not supported" in text:
                    return ["rspamd runs without hyperscan"]
            await asyncio.sleep(0.5)
        if not pinged:
            raise BenchError(f"rspamd did not answer /ping in {timeout:.0f}s:\n{self.tail()}")
        return [f"no 'hyperscan loaded' line in rspamd's log after {timeout:.0f}s; measured anyway"]

    def cpu(self) -> dict[int, tuple[str, float]]:
        return group_cpu(self.proc.pid)

    def stop(self) -> None:
        stop_group(self.proc, grace=10)


def rspamd_headers(sample: Sample, profile: str) -> dict[str, str]:
    headers = {"Rcpt": RCPT}
    if profile != "dns":
        headers["Hostname"] = "unknown"  # the MTA's rDNS result: no PTR lookup by rspamd
    if sample.mail_from:
        headers["From"] = sample.mail_from
    if sample.client_ip:
        headers["IP"] = sample.client_ip
    return headers


async def bench_rspamd(
    samples: list[Sample], cfg: argparse.Namespace, dns: DnsChild, workdir: Path
) -> Result:
    import httpx

    result = Result("rspamd", "1 normal worker (+ main and hs_helper, idle)")
    rspamd = RspamdInstance(workdir, dns.port, cfg.rspamd_profile, cfg.timeout + 60)
    try:
        limits = httpx.Limits(
            max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency
        )
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            log(f"rspamd: starting on 127.0.0.1:{rspamd.port} (config {rspamd.conf})")
            started = time.monotonic()
            result.notes += await rspamd.wait_ready(client, cfg.rspamd_start_timeout)
            result.extra["start_seconds"] = round(time.monotonic() - started, 1)
            probe = await client.post(
                f"{rspamd.url}/checkv2",
                content=samples[0].raw,
                headers=rspamd_headers(samples[0], cfg.rspamd_profile),
            )
            if probe.status_code != 200 or "action" not in probe.json():
                raise BenchError(f"/checkv2 answered {probe.status_code}: {probe.text[:300]}")
            result.extra["probe_symbols"] = len(probe.json().get("symbols", {}))
            dns_failed: Counter[str] = Counter()

            async def one(sample: Sample) -> str:
                reply = await client.post(
                    f"{rspamd.url}/checkv2",
                    content=sample.raw,
                    headers=rspamd_headers(sample, cfg.rspamd_profile),
                )
                reply.raise_for_status()
                data = reply.json()
                for symbol in data.get("symbols", {}):
                    if DNS_FAIL.search(symbol):
                        dns_failed[symbol] += 1
                return str(data.get("action", "?"))

            log(f"rspamd: ready after {result.extra['start_seconds']}s; warm-up {cfg.warmup}")
            await drive(samples[: cfg.warmup], cfg.concurrency, one, None, cfg.phase_timeout)
            dns_failed.clear()
            dns_before = dns.stats()
            dns_cpu_before = dns.cpu()
            before = rspamd.cpu()
            client_before = time.process_time()
            t0 = time.perf_counter()
            await drive(samples, cfg.concurrency, one, result, cfg.phase_timeout)
            result.seconds = time.perf_counter() - t0
            after = rspamd.cpu()
            result.client_cpu_seconds = time.process_time() - client_before
            result.dns_cpu_seconds = dns.cpu() - dns_cpu_before
            stats = dns.stats()
            result.dns_queries = stats["queries"] - dns_before["queries"]
            result.extra["dns_zones"] = zone_delta(dns_before, stats)
            per_process = {
                f"{after[pid][0]} [{pid}]": round(after[pid][1] - before.get(pid, ("", 0.0))[1], 3)
                for pid in after
            }
            result.extra["cpu_seconds_by_process"] = per_process
            result.cpu_seconds = sum(per_process.values())
            if dns_failed:
                result.notes.append(
                    "DNS failures reported by rspamd (FakeDNS overloaded?): "
                    + ", ".join(f"{k} x{v}" for k, v in dns_failed.most_common())
                )
            result.extra["dns_fail_symbols"] = dict(dns_failed)
        result.messages = len(result.latencies_ms)
        result.extra["modules_off"] = rspamd_modules_off(cfg.rspamd_profile)
        result.extra["version"] = _rspamd_version()
        return result
    finally:
        rspamd.stop()
        if cfg.keep_tmp:
            log(f"rspamd files kept in {rspamd.root}")


def _rspamd_version() -> str:
    with contextlib.suppress(Exception):
        out = subprocess.run([str(RSPAMD), "--version"], capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0]
    return "?"


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def report(results: list[Result], cfg: argparse.Namespace, n: int) -> str:
    lines = [
        f"scanner bench: {n} messages, concurrency {cfg.concurrency}, "
        f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        "",
        "| scanner | processes | msgs/s | CPU ms/msg | p50 ms | p99 ms | DNS q/msg | results |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        outcomes = ", ".join(f"{k} {v}" for k, v in r.outcomes.most_common())
        if r.errors:
            outcomes += f", ERRORS {r.errors}"
        qpm = r.dns_queries / r.messages if r.messages else None
        lines.append(
            f"| {r.name} | {r.processes} | {_num(r.rate)} | {_num(r.cpu_ms, 2)} "
            f"| {_num(percentile(r.latencies_ms, 0.5), 2)} "
            f"| {_num(percentile(r.latencies_ms, 0.99), 2)} | {_num(qpm)} | {outcomes} |"
        )
    lines.append("")
    by_name = {r.name: r for r in results}
    moat, rspamd = by_name.get("moat"), by_name.get("rspamd")
    if moat and rspamd:
        lines.append(
            f"Moat / Rspamd: msgs/s {_ratio(moat.rate, rspamd.rate)}, "
            f"CPU per message {_ratio(moat.cpu_ms, rspamd.cpu_ms)}"
        )
    for r in results:
        lines.append(f"{r.name}:")
        for label, counts in sorted(r.by_label.items()):
            lines.append(f"  {label}: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
        if r.messages:
            lines.append(
                f"  FakeDNS CPU {1000 * r.dns_cpu_seconds / r.messages:.2f} ms/msg"
                + (
                    f"; bench HTTP client CPU {1000 * r.client_cpu_seconds / r.messages:.2f} ms/msg"
                    if r.client_cpu_seconds
                    else ""
                )
            )
        if r.dns_queries:
            lines.append(f"  DNS queries by zone: {r.extra.get('dns_zones')}")
        if r.name == "moat":
            lines.append(f"  checks ({len(r.extra['checks'])}): {', '.join(r.extra['checks'])}")
        if r.name == "rspamd":
            lines.append(f"  {r.extra.get('version')}, profile {cfg.rspamd_profile}")
            lines.append(f"  modules off: {', '.join(r.extra.get('modules_off', []))}")
            lines.append(f"  CPU by process: {r.extra.get('cpu_seconds_by_process')}")
        lines += [f"  note: {note}" for note in r.notes]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=2000, help="messages to scan (default 2000)")
    p.add_argument("--concurrency", type=int, default=16, help="scans in flight (default 16)")
    p.add_argument(
        "--corpus",
        type=Path,
        action="append",
        default=[],
        help="another directory of message files (one message per file); repeatable",
    )
    p.add_argument("--seed", type=int, default=SEED, help="seed of the sample")
    p.add_argument("--warmup", type=int, default=50, help="messages scanned first, not counted")
    p.add_argument("--skip-rspamd", action="store_true")
    p.add_argument(
        "--rspamd-profile",
        choices=PROFILES,
        default="local",
        help="local: DNS modules off too; auth: SPF/DKIM/DMARC run (like Moat's auth check), "
        "the rest off; dns: they all run; FakeDNS answers",
    )
    p.add_argument("--rspamd-start-timeout", type=float, default=300.0)
    p.add_argument("--phase-timeout", type=float, default=900.0, help="longest one side may run")
    p.add_argument("--timeout", type=float, default=2400.0, help="longest the whole run may take")
    p.add_argument("--json", type=Path, help="write the results here as JSON")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    args = p.parse_args(argv)
    if args.messages < 1 or args.concurrency < 1 or args.warmup < 0:
        p.error("--messages and --concurrency must be >= 1, --warmup >= 0")
    return args


async def run(cfg: argparse.Namespace, workdir: Path) -> tuple[list[Result], int, list[str]]:
    failures: list[str] = []
    # the default corpus sits beside the main checkout; a git worktree elsewhere passes --corpus
    defaults = [d for d in DEFAULT_DIRS if d.is_dir()]
    samples = load_messages([*defaults, *cfg.corpus], cfg.messages, cfg.seed)
    log(f"{len(samples)} messages in memory, {sum(len(s.raw) for s in samples) / 1e6:.1f} MB")
    results: list[Result] = []
    dns = DnsChild(workdir, cfg.timeout)
    try:
        log(f"FakeDNS (NXDOMAIN for everything) on 127.0.0.1:{dns.port}")
        try:
            results.append(await bench_moat(samples, cfg, dns))
        except BenchError as exc:
            failures.append(f"moat: {exc}")
        if not cfg.skip_rspamd:
            try:
                missing = await asyncio.to_thread(rspamd_peer.ensure_rspamd, 600)
                if missing:
                    raise BenchError(missing)
                results.append(await bench_rspamd(samples, cfg, dns, workdir))
            except BenchError as exc:
                failures.append(f"rspamd: {exc}")
    finally:
        dns.stop()
    for r in results:
        if r.errors or r.messages < len(samples):
            failures.append(f"{r.name}: {r.messages}/{len(samples)} scanned, {r.errors} errors")
    return results, len(samples), failures


def main(argv: list[str]) -> int:
    cfg = parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(int(cfg.timeout))
    workdir = Path(tempfile.mkdtemp(prefix="moat-scanbench-"))
    workdir.chmod(0o755)  # rspamd's workers run as _rspamd and read below it
    status = 0
    try:
        results, n, failures = asyncio.run(run(cfg, workdir))
        print(report(results, cfg, n), flush=True)
        if cfg.json:
            cfg.json.write_text(
                json.dumps(
                    {
                        "messages": n,
                        "concurrency": cfg.concurrency,
                        "seed": cfg.seed,
                        "rspamd_profile": cfg.rspamd_profile,
                        "results": [r.as_json() for r in results],
                        "failures": failures,
                    },
                    indent=2,
                    default=str,
                )
            )
        for failure in failures:
            print(f"could not run: {failure}", file=sys.stderr)
        status = 1 if failures else 0
    except BenchError as exc:
        print(f"could not run: {exc}", file=sys.stderr)
        status = 1
    except BenchTimeout as exc:
        print(f"could not run: {exc} ({cfg.timeout:.0f}s)", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 130
    finally:
        signal.alarm(0)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if cfg.keep_tmp:
            log(f"temp dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
