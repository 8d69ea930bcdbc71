"""Every message of the shared corpus (public ham and spam, real phishing, malformed and tricky
MIME samples) goes through the scanner with every registered check, without a crash, and gets
a verdict. DNS goes to a real server on loopback that knows no names (the internet is out of
reach), and ClamAV runs only where its own tests start clamd."""

from __future__ import annotations

import asyncio
import tarfile
import time
from collections import Counter
from pathlib import Path

import pytest

from moat.migrate import upgrade
from moat.model import MessageEnvelope
from moat.settings import Settings
from services.scanner.scanning import Scanner
from services.scanner.verdict import Undecidable
from tests.support.corpus import CORPUS
from tests.support.fakedns import FakeDNS

pytestmark = pytest.mark.e2e


def corpus_files(tmp_path: Path) -> list[Path]:
    files = sorted(
        path
        for folder in ("spamassassin", "mime-fixtures")
        for path in (CORPUS / folder).rglob("*")
        if path.is_file() and path.name.lower() not in ("readme.md", "readme", "license")
    )
    archive = CORPUS / "phishing_pot" / "phishing-sample2500.tar.gz"
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    return files + sorted((tmp_path / "phishing").glob("*.eml"))


@pytest.mark.skipif(not CORPUS.is_dir(), reason="the shared corpus is not beside the checkout")
def test_every_corpus_message_gets_a_verdict(tmp_path: Path) -> None:
    files = corpus_files(tmp_path)
    assert len(files) > 8000
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'moat.db'}"  # the sender lists' rules
    upgrade(database_url)
    with FakeDNS() as dns:
        settings = Settings(
            database_url=database_url,
            domains={"example.test": {"relay": "127.0.0.1:25"}},
            dns={"nameservers": ["127.0.0.1"], "port": dns.port, "timeout": 1},
        )
        scanner = Scanner(settings)
        envelope = MessageEnvelope(
            mail_from="sender@outside.test",
            rcpt_tos=("bob@example.test",),
            client_address="192.0.2.10",
            helo="outside.test",
        )
        verdicts: Counter[str] = Counter()
        undecided: list[tuple[str, str]] = []
        table = settings.scanner_policy("example.test").symbol_table
        unknown: Counter[str] = Counter()  # symbols a check emitted that the table lacks

        async def scan_all() -> None:
            limit = asyncio.Semaphore(16)

            async def one(path: Path) -> None:
                async with limit:
                    result = await scanner.scan(path.name, path.read_bytes(), envelope)
                    unknown.update(
                        f.symbol
                        for f in result.findings
                        if table.get(f.symbol) is None and not f.symbol.endswith(("_NONE", "_FAIL"))
                    )
                    try:
                        verdicts[scanner.judge(result).verdict] += 1
                    except Undecidable as exc:
                        undecided.append((str(path), str(exc)))

            await asyncio.gather(*(one(path) for path in files))

        started = time.monotonic()
        asyncio.run(scan_all())
        elapsed = time.monotonic() - started
    print(f"\n{len(files)} messages in {elapsed:.1f}s: {dict(verdicts)}")
    assert not undecided, undecided[:10]
    assert not unknown, unknown
    assert sum(verdicts.values()) == len(files)
