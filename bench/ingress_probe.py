"""The ingress service with timers on the steps before its 250: ``python bench/ingress_probe.py
OUT.json`` runs ``services.ingress`` as ``python -m services.ingress`` would, and on stop
writes to OUT.json, per accepted message, how long each step took (wall clock, the event loop's
waits included): the spool write (temp file, fsync, rename, directory fsync, in a thread), the
database insert (the batch writer), the publish until the broker's confirm, and the whole of
``handle_DATA``. A ticker records how late the event loop wakes up (its stalls), and the
process's CPU time is read at the start and the end. With ``MOAT_PROBE_PROFILE=1`` cProfile
runs too and the 30 costliest functions (cumulative, then by their own time) go to
OUT.json.prof.txt.

With ``MOAT_PROBE_SPOOL=syncfs`` the spool write is replaced by an experiment, batched
flushing: each write writes its temporary file and renames it without an fsync, then waits for
one ``syncfs(2)`` of the spool's file system that started after its rename; writes that arrive
while one runs share the next. The same durability before the 250 (file and directory entry
on disk), one flush for many messages, but a flush of everything dirty on that file system.
``MOAT_PROBE_SPOOL=group-dir`` keeps the file fsync and shares only the directory fsyncs.

Used by ``bench/ingress_bench.py``; it patches the classes at run time and changes no code.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import json
import os
import pstats
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moat import runtime, spool
from moat.broker import Broker
from moat.repository import Repository
from moat.settings import load_settings
from services.ingress import __main__ as ingress_main
from services.ingress.handler import IngressHandler

# The local directory backend (``MessageStore`` itself, before the store had backends).
MessageStore: Any = getattr(spool, "DirectoryStore", spool.MessageStore)


class GroupFlush:
    """Group commit: ``await flush(key)`` returns once a flush that started after the call
    has finished; callers that arrive during a flush share the next one."""

    def __init__(self, do_flush: Callable[[Any], None]) -> None:
        self.do_flush = do_flush
        self.pending: dict[Any, asyncio.Future[None]] = {}
        self.running: set[Any] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    async def flush(self, key: Any) -> None:
        future = self.pending.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self.pending[key] = future
            if key not in self.running:
                self.running.add(key)
                task = asyncio.create_task(self._run(key))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        await asyncio.shield(future)

    async def _run(self, key: Any) -> None:
        try:
            while key in self.pending:
                future = self.pending.pop(key)
                try:
                    await asyncio.to_thread(self.do_flush, key)
                except Exception as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(None)
        finally:
            self.running.discard(key)


def _syncfs(path: Any) -> None:
    import ctypes

    fd = os.open(path, os.O_RDONLY)
    try:
        if ctypes.CDLL("libc.so.6", use_errno=True).syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed")
    finally:
        os.close(fd)


def _fsync_dir(path: Any) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def batched_spool(mode: str) -> None:
    flusher = GroupFlush(_syncfs if mode == "syncfs" else _fsync_dir)

    def put(store: MessageStore, message_id: str, data: bytes) -> Path:
        final = store.path(message_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = final.with_name(f"{final.stem}.tmp-probe-{os.getpid()}")
        with open(temporary, "wb") as handle:
            handle.write(data)
            if mode != "syncfs":
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, final)
        return final

    async def write(store: MessageStore, message_id: str, data: bytes) -> None:
        final = await asyncio.to_thread(put, store, message_id, data)
        await flusher.flush(store.root if mode == "syncfs" else final.parent)

    MessageStore.write = write  # type: ignore[method-assign]


TIMES: dict[str, list[float]] = {"spool": [], "db": [], "publish": [], "data": []}
LAGS: list[float] = []
CPU_AT: list[float] = []  # process CPU time when each handle_DATA ended


def timed(name: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        finally:
            TIMES[name].append(time.perf_counter() - started)
            if name == "data":
                CPU_AT.append(time.process_time())

    return wrapper


async def ticker(every: float = 0.005) -> None:
    while True:
        expected = time.perf_counter() + every
        await asyncio.sleep(every)
        LAGS.append(max(0.0, time.perf_counter() - expected))


def main() -> None:
    out = Path(sys.argv[1])
    mode = os.environ.get("MOAT_PROBE_SPOOL", "")
    if mode in ("syncfs", "group-dir"):
        batched_spool(mode)
    MessageStore.write = timed("spool", MessageStore.write)  # type: ignore[method-assign]
    Repository.record_received = timed("db", Repository.record_received)  # type: ignore[method-assign]
    Broker.publish = timed("publish", Broker.publish)  # type: ignore[method-assign]
    IngressHandler.handle_DATA = timed("data", IngressHandler.handle_DATA)  # type: ignore[method-assign]
    service_main = ingress_main.main

    async def probed(settings: Any) -> None:
        tick = asyncio.create_task(ticker())
        try:
            await service_main(settings)
        finally:
            tick.cancel()

    profiler = cProfile.Profile() if os.environ.get("MOAT_PROBE_PROFILE") == "1" else None
    cpu0 = time.process_time()
    if profiler:
        profiler.enable()
    try:
        runtime.run("ingress", load_settings(), probed)
    finally:
        if profiler:
            profiler.disable()
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
            # Where the CPU itself goes (time in the function, not in what it calls).
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(30)
            Path(f"{out}.prof.txt").write_text(text.getvalue())
        out.write_text(
            json.dumps(
                {"times": TIMES, "lags": LAGS, "cpu_at": CPU_AT, "cpu": time.process_time() - cpu0}
            )
        )


if __name__ == "__main__":
    main()
