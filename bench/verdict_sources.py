"""The whole scanner's verdict, per source, on the corpora the shipped model was not trained
on (``mailing-lists``, ``foff-milter-tests``, ``newsletters-unspy``,
``spam-archive-glitchyzorua``): how much ham is not clean, how much spam is caught.

    .venv/bin/python bench/verdict_sources.py [CORPUS]   # default ../shared/corpus

Since the shipped model is trained on every permitted source (``make train``), these figures
are no longer evidence: ``bench/verdict_loso.py`` measures the same verdict with models that
did not see the scored source. The helpers here (an offline scanner, a message judged without
its ``X-Spam-*`` fields) are shared with it.

``X-Spam-*`` fields are removed first (they leak the label). DNS goes to a server on loopback
that knows no names, so SPF/DKIM/DMARC cannot pass: authentication's credit for the mail is
missing here, and every DKIM signature is ``DKIM_INVALID`` (no key). The figures are a floor
for false positives, not a production measurement; compare versions, not products.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moat.migrate import upgrade
from moat.model import MessageEnvelope, Verdict
from moat.settings import Settings
from services.scanner.scanning import Scanner
from services.scanner.verdict import Undecidable
from tests.support.fakedns import FakeDNS

SOURCES = ("mailing-lists", "foff-milter-tests", "newsletters-unspy", "spam-archive-glitchyzorua")
X_SPAM = re.compile(rb"(?im)^x-spam-[^:]*:.*(?:\r?\n[ \t].*)*\r?\n")
ENVELOPE = MessageEnvelope(
    mail_from="sender@outside.test",
    rcpt_tos=("bob@example.test",),
    client_address="192.0.2.10",
    helo="outside.test",
)


def without_x_spam(raw: bytes) -> bytes:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = raw.partition(b"\n\n")
    return X_SPAM.sub(b"", head + b"\n")[:-1] + sep + body


def offline_settings(database_url: str, dns_port: int) -> Settings:
    """The scanner's settings for a bench run: one protected domain (``ENVELOPE``'s recipient),
    DNS at ``dns_port`` on loopback (a ``FakeDNS`` that knows no names)."""
    return Settings(
        database_url=database_url,
        domains={"example.test": {"relay": "127.0.0.1:25"}},
        dns={"nameservers": ["127.0.0.1"], "port": dns_port, "timeout": 1},
    )


def fresh_database() -> str:
    """A new SQLite database, migrated (the sender lists and the feedback store read it)."""
    url = f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/moat.db"
    upgrade(url)
    return url


async def judge(scanner: Scanner, name: str, raw: bytes) -> Verdict | None:
    """The scanner's verdict on a message without its ``X-Spam-*`` fields; None: undecidable
    (a check failed)."""
    result = await scanner.scan(name, without_x_spam(raw), ENVELOPE)
    try:
        return scanner.judge(result)
    except Undecidable:
        return None


async def main(corpus: Path, database_url: str) -> int:
    flagged: Counter[str] = Counter()
    with FakeDNS() as dns:
        scanner = Scanner(offline_settings(database_url, dns.port))
        for source in SOURCES:
            for label in ("ham", "spam"):
                folder = corpus / source / label
                if not folder.is_dir():
                    continue
                verdicts: Counter[str] = Counter()
                for path in sorted(p for p in folder.iterdir() if p.suffix not in (".md", ".tsv")):
                    verdict = await judge(scanner, path.name, path.read_bytes())
                    if verdict is None:
                        verdicts["undecided"] += 1
                        continue
                    verdicts[str(verdict.verdict)] += 1
                    if label == "ham" and verdict.verdict != "clean":
                        flagged.update(f.symbol for f in verdict.findings if f.score > 0)
                total = sum(verdicts.values())
                bad = total - verdicts["clean"]
                print(
                    f"{source:26s} {label:4s} {total:5d}  not clean {bad:5d} "
                    f"({100 * bad / max(1, total):5.1f}%)  {dict(verdicts)}"
                )
    print("symbols on ham not clean:", flagged.most_common(12))
    return 0


if __name__ == "__main__":
    logging.disable(logging.WARNING)  # the sender lists' and the store's polls are not news
    default = Path(__file__).resolve().parents[2] / "shared" / "corpus"
    sys.exit(
        asyncio.run(main(Path(sys.argv[1]) if len(sys.argv) > 1 else default, fresh_database()))
    )
