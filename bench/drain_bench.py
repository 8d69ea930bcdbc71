"""Scan-queue drain bench and per-message cost model.

    .venv/bin/python bench/drain_bench.py [--messages 2000] [--counts 1,2,4] [--size 5k]

For each scanner count K: a fresh Moat (SQLite file, spool, RabbitMQ vhost) with only its
ingress running takes the same N messages over SMTP (C sessions), so they wait in ``scan``;
ingress is stopped, K scanner processes (``python -m services.scanner``) are started and the
queue is drained. The drain window runs from the moment all K consumers are registered on
``scan`` (their start-up costs seconds of CPU and is not scanning) to the moment the last
message has its verdict (polled from the database, every 0.1 s). Then, on the first count
only, delivery is started and drains ``deliver`` into a sink.

Per phase it reads the CPU (user + system) of each service process from /proc, of RabbitMQ
(``beam.smp``: shared with whoever else uses it) and of the bench itself (the SMTP client),
and how busy the machine was with everything else (``others``). From those per-message costs
the cost model (``CostModel``) predicts throughput on n cores with K scanner replicas; its
drain predictions are printed next to the measured drains.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import smtp_bench as sb  # the bench helpers: messages, sink, driver, /proc CPU

CLK_TCK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1
DONE_SQL = "SELECT count(*) FROM messages WHERE status NOT IN ('received', 'queued')"


def pid_cpu(pid: int) -> float:
    """CPU seconds (user + system) of one process; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def service_pid(proc: Any) -> int:
    """The Python process under ``timeout`` (spawn wraps every child in coreutils timeout)."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    for _ in range(50):
        with contextlib.suppress(OSError):
            kids = children.read_text().split()
            if kids:
                return int(kids[0])
        if not sb.TIMEOUT_BIN:
            return int(proc.pid)
        time.sleep(0.05)
    return int(proc.pid)


RABBIT_PID = sb.rabbitmq_pid()


def rabbit_cpu() -> float:
    return pid_cpu(RABBIT_PID) if RABBIT_PID else 0.0


def self_cpu() -> float:
    own = os.times()
    return own.user + own.system


def machine_busy() -> tuple[int, int]:
    return sb._cpu_times()


def postgres_backends(database: str | None) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend serving ``database`` (its process title names
    the database), by pid. The server's shared processes (WAL writer, checkpointer) serve
    everyone on the machine and are left out."""
    found: dict[int, float] = {}
    if not database:
        return found
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith("postgres: ") and f" {database} " in title:
            found[int(entry.name)] = pid_cpu(int(entry.name))
    return found


@dataclass
class Window:
    """CPU of named processes and the machine over one phase."""

    pids: dict[str, int]
    pg_database: str | None = None
    started: float = field(default_factory=time.monotonic)
    cpu0: dict[str, float] = field(default_factory=dict)
    rabbit0: float = 0.0
    self0: float = 0.0
    machine0: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        self.cpu0 = {name: pid_cpu(pid) for name, pid in self.pids.items()}
        self.rabbit0, self.self0, self.machine0 = rabbit_cpu(), self_cpu(), machine_busy()
        self.pg0 = postgres_backends(self.pg_database)

    def close(self) -> dict[str, float]:
        """CPU seconds per name, plus rabbitmq, client, seconds, others (share of all CPUs)."""
        out = {name: pid_cpu(pid) - self.cpu0[name] for name, pid in self.pids.items()}
        out["rabbitmq"] = rabbit_cpu() - self.rabbit0
        out["client"] = self_cpu() - self.self0
        if self.pg_database:
            now = postgres_backends(self.pg_database)
            out["postgres"] = sum(cpu - self.pg0.get(pid, 0.0) for pid, cpu in now.items())
        seconds = time.monotonic() - self.started
        total, idle = machine_busy()
        busy = ((total - self.machine0[0]) - (idle - self.machine0[1])) / CLK_TCK
        # kernel threads (fsync, writeback) work for us: not counted as someone else's
        ours = sum(out.values()) + 0.0
        out["seconds"] = seconds
        out["others"] = max(0.0, busy - ours) / (seconds * CORES) if seconds > 0 else 0.0
        return out


class Moat(sb.MoatInstance):
    """A Moat whose services the bench starts one by one."""

    def prepare(self) -> None:
        rabbitmqctl = sb.shutil.which("rabbitmqctl")
        if not rabbitmqctl:
            raise sb.BenchError("rabbitmqctl not found")
        for argv in (
            [rabbitmqctl, "add_vhost", self.vhost],
            [rabbitmqctl, "set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*"],
        ):
            done = sb.run_cmd(argv, 90)
            if done.returncode != 0:
                raise sb.BenchError(f"{argv[1]} failed: {done.stderr.strip()[-300:]}")
            self.vhost_made = True
        if self.pg_db:
            sb._pg_exec(self.pg_admin_url, f'CREATE DATABASE "{self.pg_db}"')
        migrate = sb.run_cmd(
            [sys.executable, "-m", "moat.migrate"], 180, env=self.env(), cwd=self.base
        )
        if migrate.returncode != 0:
            raise sb.BenchError(f"migrate failed: {migrate.stderr.strip()[-500:]}")
        self.children: list[Any] = []

    def spawn(self, service: str, name: str, nice: int = 0) -> tuple[Any, int]:
        # ``nice`` as python -m services' supervisor.background_nice does it: before exec.
        niced = ["nice", "-n", str(nice)] if nice else []
        proc = sb.spawn(
            [*niced, sys.executable, "-m", f"services.{service}"],
            log_path=self.base / f"{name}.log",
            limit=self.limit,
            env=self.env(),
            cwd=self.base,
        )
        self.children.append(proc)
        return proc, service_pid(proc)

    def stop_children(self) -> None:
        for proc in self.children:
            sb.stop_group(proc, grace=30)
        self.children = []

    def done_count(self) -> int:
        if self.pg_db:
            # every message is clean: scanned = published to deliver (nobody consumes it yet)
            return queue_state(self.vhost, "deliver")[0]
        path = self.database_url.split("///", 1)[1]
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            db.execute("PRAGMA busy_timeout = 2000")
            return int(db.execute(DONE_SQL).fetchone()[0])


async def _queue_state(vhost: str, queue: str) -> tuple[int, int]:
    import aio_pika

    connection = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:5672/{vhost}")
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        result = declared.declaration_result
        return int(result.message_count or 0), int(result.consumer_count or 0)


def queue_state(vhost: str, queue: str) -> tuple[int, int]:
    """(messages ready, consumers) of ``queue``."""
    return asyncio.run(_queue_state(vhost, queue))


def wait_until(predicate: Any, timeout: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


@dataclass
class Drain:
    scanners: int
    messages: int  # drained inside the window
    seconds: float
    rate: float
    scanner_ms: float  # scanner CPU per message, all processes
    rabbit_ms: float
    per_process: list[float]  # cores each scanner process used in the window
    others: float  # share of all CPUs taken by other processes
    postgres_ms: float = 0.0  # PostgreSQL backends' CPU per message (0 with SQLite)
    fill: dict[str, float] = field(default_factory=dict)
    delivery: dict[str, float] = field(default_factory=dict)


def one_count(
    k: int, args: argparse.Namespace, workdir: Path, batch: list[tuple[str, bytes]], deliver: bool
) -> Drain:
    limit = 1800.0
    sink = sb.Sink(workdir, f"drain{k}", limit, not sb.have_postfix_tools())
    moat = Moat(workdir, f"drain{k}", sink.port, args.database, args.pg_admin_url, limit)
    try:
        moat.prepare()
        ingress, ingress_pid = moat.spawn("ingress", "ingress")
        sb.wait_smtp_banner(moat.smtp_port, 90, alive=lambda: ingress.poll() is None)
        warm = [(f"w{i}", sb.make_message("w", i, args.size)) for i in range(20)]
        sb.drive(moat.smtp_port, warm, 10)
        window = Window({"ingress": ingress_pid}, moat.pg_db)
        result = sb.drive(moat.smtp_port, batch, args.concurrency)
        # the confirmed ids are marked queued in batches; let the last one land
        time.sleep(0.5)
        fill = window.close()
        fill["accepted"] = result.accepted
        lat = sorted(result.latencies)
        fill["p50_ms"] = 1000 * (sb.percentile(lat, 0.5) or 0)
        fill["p99_ms"] = 1000 * (sb.percentile(lat, 0.99) or 0)
        sb.stop_group(ingress, grace=30)
        total = len(warm) + result.accepted
        ready, _ = queue_state(moat.vhost, "scan")
        sb.log(f"K={k}: filled scan with {ready} messages ({result.accepted} accepted)")

        procs = [moat.spawn("scanner", f"scanner-{n}") for n in range(1, k + 1)]
        if not wait_until(lambda: queue_state(moat.vhost, "scan")[1] >= k, 120, 0.05):
            raise sb.BenchError(f"{k} scanner consumers did not register")
        done0 = moat.done_count()
        window = Window({f"scanner-{n}": pid for n, (_, pid) in enumerate(procs, 1)}, moat.pg_db)
        if not wait_until(lambda: moat.done_count() >= total, args.timeout, 0.1):
            raise sb.BenchError(f"K={k}: the scan queue did not drain ({moat.done_count()})")
        drain = window.close()
        scanned = total - done0
        scanner_cpu = sum(v for n, v in drain.items() if n.startswith("scanner-"))
        out = Drain(
            scanners=k,
            messages=scanned,
            seconds=drain["seconds"],
            rate=scanned / drain["seconds"],
            scanner_ms=1000 * scanner_cpu / scanned,
            rabbit_ms=1000 * drain["rabbitmq"] / scanned,
            per_process=[drain[f"scanner-{n}"] / drain["seconds"] for n in range(1, k + 1)],
            others=drain["others"],
            postgres_ms=1000 * drain.get("postgres", 0.0) / scanned,
            fill={
                key: (
                    v / result.accepted * 1000
                    if key in ("ingress", "rabbitmq", "client", "postgres")
                    else v
                )
                for key, v in fill.items()
            },
        )
        sb.log(
            f"K={k}: drained {scanned} in {drain['seconds']:.2f}s = {out.rate:.0f}/s, "
            f"scanner {out.scanner_ms:.2f} ms/msg, others {100 * out.others:.0f}%"
        )
        if deliver:
            delivery, delivery_pid = moat.spawn("delivery", "delivery")
            # Delivery's start-up is not delivering: the window opens at its first arrival.
            if not wait_until(lambda: sink.count_files() > 0, 120, 0.02):
                raise sb.BenchError("delivery did not start delivering")
            first = sink.count_files()
            window = Window({"delivery": delivery_pid}, moat.pg_db)
            if not wait_until(lambda: sink.count_files() >= total, args.timeout, 0.05):
                raise sb.BenchError(f"delivery did not finish ({sink.count_files()}/{total})")
            stats = window.close()
            sent = total - first
            out.delivery = {
                "messages": sent,
                "rate": sent / stats["seconds"],
                "delivery_ms": 1000 * stats["delivery"] / sent,
                "rabbitmq_ms": 1000 * stats["rabbitmq"] / sent,
                "postgres_ms": 1000 * stats.get("postgres", 0.0) / sent,
                "sink_ms": 0.0,
                "others": stats["others"],
            }
        return out
    finally:
        moat.stop_children()
        moat.stop()
        sink.stop()


def database_ms(messages: int = 600) -> float:
    """CPU per message of the repository steps every message takes (bench/repository_bench):
    the database's share, which with SQLite runs inside each service's process."""
    import repository_bench as rb

    from moat.migrate import upgrade

    url = f"sqlite+aiosqlite:///{tempfile.mkdtemp(prefix='drain-db-')}/bench.db"
    upgrade(url)

    async def run() -> float:
        from moat.db import create_engine
        from moat.repository import Repository

        repository = Repository(create_engine(url))
        try:
            for _ in range(20):
                await rb.one_message(repository)
            slots = asyncio.Semaphore(10)

            async def guarded() -> None:
                async with slots:
                    await rb.one_message(repository)

            before = time.process_time()
            await asyncio.gather(*(guarded() for _ in range(messages)))
            return 1000 * (time.process_time() - before) / messages
        finally:
            await repository.close()

    return asyncio.run(run())


@dataclass
class CostModel:
    """CPU milliseconds per message per stage, measured; throughput predicted from them.

    A stage is one process (one event loop: at most one core) except the scanner, which runs
    K replicas. RabbitMQ and the load generator (SMTP client and sink) share the cores. On n
    cores of which a share ``others`` is taken by other work:

        rate = min(n * (1 - others) / sum(costs), 1000 / ingress, K * 1000 / scanner,
                   1000 / delivery)
    """

    ingress: float
    scanner: float
    delivery: float
    rabbitmq: float  # summed over the three hops
    client: float = 0.0  # SMTP client + sink: there only on a machine that runs the bench too
    database: float = 0.0  # SQLite: inside ingress, scanner and delivery (in-process)
    database_apart: bool = False  # PostgreSQL: a server of its own, sharing the cores

    def total(self, with_client: bool) -> float:
        return (
            self.ingress
            + self.scanner
            + self.delivery
            + self.rabbitmq
            + (self.database if self.database_apart else 0.0)
            + (self.client if with_client else 0.0)
        )

    def e2e(self, cores: float, scanners: int, with_client: bool = False) -> tuple[float, str]:
        limits = {
            "CPU": 1000 * cores / self.total(with_client),
            "ingress process": 1000 / self.ingress,
            "scanner processes": scanners * 1000 / self.scanner,
            "delivery process": 1000 / self.delivery,
        }
        name = min(limits, key=lambda key: limits[key])
        return limits[name], name

    @staticmethod
    def drain(cores: float, scanners: int, scanner_ms: float, rabbit_ms: float) -> float:
        """Scan queue only: K scanner processes and RabbitMQ on the cores free to them."""
        return min(scanners * 1000 / scanner_ms, 1000 * cores / (scanner_ms + rabbit_ms))


def report(drains: list[Drain], db_ms: float | None) -> dict[str, Any]:
    """``db_ms`` None: PostgreSQL, whose backends' CPU was measured per phase."""
    base = drains[0]
    fill = base.fill
    delivery = base.delivery
    postgres = None
    if db_ms is None:
        postgres = fill.get("postgres", 0.0) + base.postgres_ms + delivery.get("postgres_ms", 0.0)
    model = CostModel(
        ingress=fill["ingress"],
        scanner=base.scanner_ms,
        delivery=delivery.get("delivery_ms", 0.0) or float("nan"),
        rabbitmq=fill["rabbitmq"] + base.rabbit_ms + delivery.get("rabbitmq_ms", 0.0),
        client=fill["client"],
        database=db_ms if postgres is None else postgres,
        database_apart=postgres is not None,
    )
    print()
    print(f"machine: {sb.machine_line()}; load average {os.getloadavg()}")
    print()
    print(
        "| scanners | drained | seconds | msgs/s | scanner CPU ms/msg | RabbitMQ ms/msg "
        "| cores per scanner | others | model msgs/s (free cores) | model/measured |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    rows = []
    for d in drains:
        free = CORES * (1 - d.others)
        # the broker's and (PostgreSQL) the database server's share of a scan share the cores
        shared = base.rabbit_ms + base.postgres_ms
        predicted = CostModel.drain(free, d.scanners, base.scanner_ms, shared)
        rows.append({**asdict(d), "predicted": predicted, "free_cores": free})
        print(
            f"| {d.scanners} | {d.messages} | {d.seconds:.2f} | {d.rate:.0f} | "
            f"{d.scanner_ms:.2f} | {d.rabbit_ms:.2f} | "
            f"{', '.join(f'{c:.2f}' for c in d.per_process)} | {100 * d.others:.0f}% | "
            f"{predicted:.0f} ({free:.2f}) | {predicted / d.rate:.2f} |"
        )
    print()
    print("Per-message CPU by stage (ms), from the K=1 run:")
    print(
        f"  ingress {model.ingress:.2f} (fill: p50 {fill['p50_ms']:.1f} ms, "
        f"p99 {fill['p99_ms']:.1f} ms to 250, others {100 * fill['others']:.0f}%)"
    )
    print(f"  scanner {model.scanner:.2f}")
    print(f"  delivery {model.delivery:.2f} (drain {delivery.get('rate', 0):.0f}/s)")
    print(
        f"  RabbitMQ {model.rabbitmq:.2f} (ingress publish {fill['rabbitmq']:.2f}, "
        f"scan hop {base.rabbit_ms:.2f}, deliver hop {delivery.get('rabbitmq_ms', 0):.2f})"
    )
    if postgres is None:
        print(f"  database (SQLite, inside the three services) {model.database:.2f}")
    else:
        print(
            f"  database (PostgreSQL backends) {postgres:.2f} (ingress insert "
            f"{fill.get('postgres', 0):.2f}, verdict {base.postgres_ms:.2f}, delivery "
            f"{delivery.get('postgres_ms', 0):.2f})"
        )
    print(f"  SMTP client + sink (bench) {model.client:.2f}")
    print(
        f"  gateway total {model.total(False):.2f}, with the load generator {model.total(True):.2f}"
    )
    print()
    print("Predicted end-to-end msgs/s (gateway only; the client elsewhere) [limit]:")
    print("| cores | K=1 | K=2 | K=4 | K=8 |")
    print("| ---: | --- | --- | --- | --- |")
    predictions = {}
    for cores in (2, 4, 8, 16):
        cells = []
        for k in (1, 2, 4, 8):
            rate, limit = model.e2e(cores, k)
            predictions[f"{cores}x{k}"] = (rate, limit)
            cells.append(f"{rate:.0f} [{limit}]")
        print(f"| {cores} | " + " | ".join(cells) + " |")
    here, limit = model.e2e(CORES, 1, with_client=True)
    print(f"This machine with the bench's client and sink on it, K=1: {here:.0f}/s [{limit}]")
    return {"drains": rows, "model": asdict(model), "predictions": predictions}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/drain_bench.py", description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--counts", default="1,2,4", help="scanner counts, comma-separated")
    parser.add_argument("--size", type=sb.parse_size, default=5 * 1024)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--pg-admin-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="where to CREATE/DROP the bench database for --database postgresql",
    )
    parser.add_argument("--keep-tmp", action="store_true")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    sb.install_stop_handlers()
    workdir = Path(tempfile.mkdtemp(prefix="moat-drain-"))
    os.chmod(workdir, 0o755)  # smtp-sink runs as postfix and must traverse it
    batch = [(f"d{i}", sb.make_message("d", i, args.size)) for i in range(args.messages)]
    sb.log(f"load average {os.getloadavg()}; workdir {workdir}")
    try:
        drains = [
            one_count(k, args, workdir, batch, deliver=(n == 0)) for n, k in enumerate(counts)
        ]
        db_ms = database_ms() if args.database == "sqlite" else None
        result = report(drains, db_ms)
    finally:
        if not args.keep_tmp:
            sb.shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
