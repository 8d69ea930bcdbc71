"""Run the whole gateway in the foreground: ``python -m services`` (what ``make run`` does).

Applies the database migrations, then starts ingress, scanner(s), delivery and api as child
processes with the same settings. Ctrl-C (or SIGTERM) stops them all; if one dies, the others
are stopped too and the exit status says so.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time

from moat.migrate import upgrade
from moat.runtime import setup_logging
from moat.settings import load_settings

log = logging.getLogger("moat")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m services", description=__doc__)
    parser.add_argument("--scanners", type=int, default=1, help="scanner processes to run")
    parser.add_argument("--no-migrate", action="store_true", help="skip database migrations")
    args = parser.parse_args()

    settings = load_settings()
    setup_logging("moat", settings.log_level)
    if not args.no_migrate:
        upgrade(settings.database_url)
    names = ["api", "delivery", *(["scanner"] * args.scanners), "ingress"]
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for name in names:
        # Children ignore the terminal's Ctrl-C; we stop them in order, ingress first.
        child = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            env=os.environ,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
        children.append((name, child))
    log.info(
        "Moat is running: SMTP on %s, API on https://%s, domains: %s. Ctrl-C stops it.",
        settings.smtp.listen,
        settings.api.listen,
        ", ".join(settings.domains) or "(none)",
    )

    exit_code = 0
    while not stopping:
        for name, child in children:
            if child.poll() is not None:
                log.error("%s exited with status %s; stopping the others", name, child.returncode)
                stopping, exit_code = True, 1
        time.sleep(0.2)

    for _name, child in reversed(children):
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + 20
    for name, child in reversed(children):
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in time; killing it", name)
            child.kill()
    log.info("stopped")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
