"""How a service process starts and stops: its command line, logging, uvloop, and a clean stop
on SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

from moat.logs import setup_logging
from moat.settings import Settings

__all__ = ["SETTINGS_HELP", "run", "service_parser", "setup_logging", "wait_for_stop_signal"]

SETTINGS_HELP = """\
settings: the YAML file named by MOAT_CONFIG (make run: ./moat.yaml), else the defaults; any
value overridden by a MOAT_* environment variable, nested keys joined by __
(MOAT_SMTP__LISTEN=0.0.0.0:25, MOAT_DATABASE_URL=..., MOAT_BROKER__URL=...). Every setting,
with its default and meaning, is in moat.example.yaml."""


def service_parser(service: str, doc: str | None, reads: str) -> argparse.ArgumentParser:
    """The command line of ``python -m services.<service>``. A service takes no options: its
    settings say everything. ``--help`` says what it does and what it reads, and exits before
    the settings are loaded or anything is connected."""
    return argparse.ArgumentParser(
        prog=f"python -m services.{service}",
        description=(doc or "").replace("``", "").strip(),
        epilog=f"{reads.strip()}\n\n{SETTINGS_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


async def wait_for_stop_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def run(
    service: str, settings: Settings, main: Callable[[Settings], Coroutine[Any, Any, None]]
) -> None:
    """Run a service's ``main`` on uvloop until it returns or a stop signal arrives."""
    setup_logging(service, settings.log_level, settings.log_format)
    logging.getLogger(service).info("starting (env=%s)", settings.env)
    uvloop.run(main(settings))
