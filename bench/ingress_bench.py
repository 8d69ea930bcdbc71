"""Where the time to 250 goes: the ingress path, step by step, at C concurrent sessions.

    .venv/bin/python bench/ingress_bench.py [--messages 1000] [--concurrency 20] [--alone]

A fresh Moat (SQLite, spool, RabbitMQ vhost) whose ingress is ``bench/ingress_probe.py``
(the real service with timers); by default a scanner and delivery run too, relaying to a sink,
so the ingress competes for the CPU as it does in ``smtp_bench.py`` (``--alone``: ingress only,
the messages wait in ``scan``). The client's time to 250 (end of DATA to the reply, from
``smtp_bench``'s driver) is printed next to the ingress's own steps: spool write with its
fsyncs, database insert, publish until the broker's confirm, the whole ``handle_DATA``, and
how late the ingress's event loop woke up (stalls).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import drain_bench as db
import smtp_bench as sb


def pct(values: list[float], fraction: float) -> float:
    return 1000 * (sb.percentile(sorted(values), fraction) or 0.0)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/ingress_bench.py", description=__doc__)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--size", type=sb.parse_size, default=5 * 1024)
    parser.add_argument("--alone", action="store_true", help="no scanner, no delivery")
    parser.add_argument("--profile", action="store_true", help="cProfile the ingress too")
    parser.add_argument(
        "--spool",
        choices=("fsync", "syncfs", "group-dir"),
        default="fsync",
        help="fsync: Moat's spool; the others: batched-flush experiments (ingress_probe.py)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the scanner and delivery this much nicer (supervisor.background_nice)",
    )
    parser.add_argument("--moat-env", action="append", default=[], help="NAME=VALUE for Moat")
    args = parser.parse_args(argv)
    sb.install_stop_handlers()
    workdir = Path(tempfile.mkdtemp(prefix="moat-ingress-"))
    os.chmod(workdir, 0o755)  # smtp-sink runs as postfix and must traverse it
    limit = 1200.0
    sink = sb.Sink(workdir, "ingress", limit, not sb.have_postfix_tools())
    moat = db.Moat(workdir, "ingress", sink.port, "sqlite", "", limit)
    out = workdir / "probe.json"
    try:
        moat.prepare()
        env = moat.env()
        env.update(item.split("=", 1) for item in args.moat_env)
        if args.spool != "fsync":
            env["MOAT_PROBE_SPOOL"] = args.spool
        if args.profile:
            env["MOAT_PROBE_PROFILE"] = "1"
        probe = sb.spawn(
            [sys.executable, str(Path(__file__).resolve().parent / "ingress_probe.py"), str(out)],
            log_path=workdir / "ingress.log",
            limit=limit,
            env=env,
            cwd=moat.base,
        )
        moat.children.append(probe)
        if not args.alone:
            moat.spawn("scanner", "scanner", nice=args.nice)
            moat.spawn("delivery", "delivery", nice=args.nice)
        sb.wait_smtp_banner(moat.smtp_port, 90, alive=lambda: probe.poll() is None)
        warm = [(f"w{i}", sb.make_message("w", i, args.size)) for i in range(40)]
        sb.drive(moat.smtp_port, warm, 10)
        if not args.alone:
            sink.wait_files(len(warm), 120)
        batch = [(f"i{i}", sb.make_message("i", i, args.size)) for i in range(args.messages)]
        load = os.getloadavg()
        busy0 = sb._cpu_times()
        started = time.monotonic()
        result = sb.drive(moat.smtp_port, batch, args.concurrency)
        seconds = time.monotonic() - started
        busy1 = sb._cpu_times()
        delivered_after = None
        if not args.alone:  # end to end: until the sink has every message (throughput)
            sink.wait_files(len(warm) + result.accepted, 300)
            delivered_after = time.monotonic() - started
        sb.stop_group(probe, grace=30)
        data = json.loads(out.read_text())
    finally:
        moat.stop_children()
        moat.stop()
        sink.stop()
    busy = ((busy1[0] - busy0[0]) - (busy1[1] - busy0[1])) / ((busy1[0] - busy0[0]) or 1)
    times = {k: v[len(warm) :] for k, v in data["times"].items()}
    print(f"machine: {sb.machine_line()}; load average before {load}; CPUs {100 * busy:.0f}% busy")
    print(
        f"{result.accepted} accepted in {seconds:.2f}s ({result.accepted / seconds:.0f}/s), "
        f"C={args.concurrency}, {'ingress alone' if args.alone else 'with scanner and delivery'}"
        f", spool {args.spool}{f', scanner and delivery nice +{args.nice}' if args.nice else ''}"
    )
    if delivered_after is not None:
        print(
            f"all delivered to the sink {delivered_after:.2f}s after the first was sent "
            f"({result.accepted / delivered_after:.0f}/s end to end)"
        )
    if result.latencies and seconds > 0:
        # A closed loop: each session sends its next message when the 250 comes, so once the
        # gateway is saturated (CPU here) the mean cycle is C / rate, whatever the steps cost.
        mean = 1000 * sum(result.latencies) / len(result.latencies)
        cycle = 1000 * args.concurrency * seconds / max(1, result.accepted)
        print(f"mean time to 250 {mean:.1f} ms; Little's law: C / rate = {cycle:.1f} ms a cycle")
    print("| step | p50 ms | p90 ms | p99 ms | max ms |")
    print("| --- | ---: | ---: | ---: | ---: |")
    rows = [("client: end of DATA -> 250", result.latencies)]
    rows += [
        ("handle_DATA (all steps)", times["data"]),
        ("spool write + fsyncs (thread)", times["spool"]),
        ("database insert (batch writer)", times["db"]),
        ("publish -> broker confirm", times["publish"]),
        ("event loop wake-up lateness", data["lags"]),
    ]
    for name, values in rows:
        if values:
            print(
                f"| {name} | {pct(values, 0.5):.1f} | {pct(values, 0.9):.1f} | "
                f"{pct(values, 0.99):.1f} | {1000 * max(values):.1f} |"
            )
    stamps = data["cpu_at"][len(warm) - 1 :]  # from the last warm-up message on
    if len(stamps) > 1:
        per = 1000 * (stamps[-1] - stamps[0]) / (len(stamps) - 1)
        print(f"ingress CPU (its process, measured messages only): {per:.2f} ms/msg")
    prof = Path(f"{out}.prof.txt")
    if prof.exists():
        print(prof.read_text()[:14000])
    sb.shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
