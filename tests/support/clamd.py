"""A real ``clamd`` for tests: Debian's clamav-daemon run as a child process with its own
configuration in a temporary directory, loading only the test signatures of
``tests/fixtures/clamav/`` (EICAR and this project's made-up test signatures), listening on a
unix socket in that directory and on a free TCP port on loopback.

    with ClamdServer() as clamd:
        settings = ClamAVSettings(enabled=True, socket=clamd.socket)
        clamd.stop(); ...; clamd.start()   # take it away and bring it back

clamd missing is an error, never a skip: ``scripts/ensure-clamav.sh`` (run by ``make test``)
installs it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "clamav"

# The test "malware": harmless strings and files that the fixture signatures name.
MARKER = b"MOAT-TEST-MALWARE-5f1d2c9e-not-a-virus"  # moat-test.ndb: Moat.Test.Marker-1
MARKER_SIGNATURE = "Moat.Test.Marker-1"
EICAR_SIGNATURE = "Moat.Test.EICAR-1"
HASH_SIGNATURE = "Moat.Test.HashFile-1"


def hash_test_file() -> bytes:
    """The file whose MD5 and size are in moat-test.hdb (Moat.Test.HashFile-1)."""
    return b"MOAT-TEST-HASH-FILE\n" + bytes(range(256)) * 4


def clamd_binary() -> str:
    path = shutil.which("clamd") or next(
        (p for p in ("/usr/sbin/clamd", "/usr/local/sbin/clamd") if Path(p).exists()), None
    )
    if path is None:
        raise RuntimeError(
            "clamd is not installed: run scripts/ensure-clamav.sh "
            "(or apt-get install clamav-daemon); the ClamAV tests need a real clamd"
        )
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ClamdServer:
    def __init__(self, stream_max_length: str = "25M", start_timeout: float = 30.0) -> None:
        self.binary = clamd_binary()
        # Short path: a unix socket path must fit in 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="moat-clamd-"))
        self.socket = self.dir / "clamd.sock"
        self.port = _free_port()
        self.start_timeout = start_timeout
        database = self.dir / "db"
        database.mkdir()
        for source in sorted(FIXTURES.glob("*.[hn]db")):
            shutil.copy(source, database / source.name)
        self.config = self.dir / "clamd.conf"
        self.config.write_text(
            "\n".join(
                [
                    "Foreground yes",
                    f"LocalSocket {self.socket}",
                    "FixStaleSocket yes",
                    "TCPAddr 127.0.0.1",
                    f"TCPSocket {self.port}",
                    f"DatabaseDirectory {database}",
                    f"TemporaryDirectory {self.dir}",
                    f"LogFile {self.dir / 'clamd.log'}",
                    "LogTime yes",
                    f"StreamMaxLength {stream_max_length}",
                    "MaxThreads 4",
                    "SelfCheck 0",
                    "Bytecode no",
                    "ScanMail yes",
                    "ScanArchive yes",
                    "",
                ]
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def tcp(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> float:
        """Start clamd and wait for PING -> PONG; the seconds it took."""
        assert self.process is None, "clamd is running already"
        started = time.monotonic()
        self.process = subprocess.Popen(
            [self.binary, "--config-file", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = started + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                raise RuntimeError(f"clamd exited at start:\n{self.log()[-3000:]}")
            if self.ping():
                return time.monotonic() - started
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"clamd did not answer PING in {self.start_timeout}s:\n{self.log()}")

    def ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect(str(self.socket))
                sock.sendall(b"zPING\0")
                return sock.recv(16) == b"PONG\0"
        except OSError:
            return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def log(self) -> str:
        path = self.dir / "clamd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> ClamdServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
