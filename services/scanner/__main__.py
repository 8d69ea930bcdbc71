"""The scanner: ``python -m services.scanner`` runs the service; ``python -m services.scanner
check FILE...`` classifies files offline (see ``cli.py``).

Stateless workers: run as many replicas as throughput needs. Each takes a message id from the
``scan`` queue, runs every check, records the verdict with all findings, and sends clean mail on
to delivery; spam and viruses stay in quarantine.
"""

from __future__ import annotations

import logging
import sys

from moat import runtime
from moat.services import build
from moat.settings import Settings, load_settings
from moat.topology import SCAN
from services.scanner import cli
from services.scanner.scanning import Scanner
from services.scanner.worker import ScanConsumer

log = logging.getLogger("scanner")


async def main(settings: Settings) -> None:
    scanner = Scanner(settings)  # builds the checks: a bad registry fails before connecting
    parts = await build(settings)
    consumer = ScanConsumer(parts.broker, parts.repository, parts.store, scanner)
    await consumer.start()
    log.info(
        "consuming %s with prefetch %d; checks: %s",
        SCAN,
        settings.scanner.prefetch,
        ", ".join(check.name for check in scanner.checks),
    )
    try:
        await runtime.wait_for_stop_signal()
    finally:
        await consumer.stop(settings.shutdown_timeout)
        await parts.close()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        sys.exit(cli.main(load_settings(), sys.argv[1:]))
    runtime.run("scanner", load_settings(), main)
