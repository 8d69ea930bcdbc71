"""The whole scanner's verdict (every check, not the classifier alone) on the held-out part of
the SpamAssassin corpus that training never saw: spam recall, ham flagged, and which ham.

    .venv/bin/python bench/verdict_eval.py [CORPUS]     # default ../shared/corpus/spamassassin

The checks and settings are those of ``python -m services.scanner check`` (the settings file
and ``MOAT_*`` environment apply; no broker, no database: the shipped model learns nothing).
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moat.model import MessageEnvelope
from moat.settings import load_settings
from services.scanner.classifier.training import SPAMASSASSIN, corpus_files, held_out
from services.scanner.scanning import Scanner

ENVELOPE = MessageEnvelope()  # as `check` without --rcpt: the global policy


async def main(corpus: Path) -> int:
    files = [(path, spam) for path, spam in corpus_files(corpus) if held_out(path.name)]
    scanner = Scanner(load_settings())
    verdicts: dict[bool, Counter[str]] = {True: Counter(), False: Counter()}
    flagged_ham: list[str] = []
    for path, spam in files:
        result = await scanner.scan(path.name, path.read_bytes(), ENVELOPE)
        verdict = scanner.judge(result)
        verdicts[spam][str(verdict.verdict)] += 1
        if not spam and verdict.verdict != "clean":
            symbols = sorted(f.symbol for f in result.findings if f.score > 0)
            flagged_ham.append(
                f"  {path.name[:40]}: {verdict.verdict} {verdict.score:.1f} {symbols}"
            )
    spam_total, ham_total = sum(verdicts[True].values()), sum(verdicts[False].values())
    caught = spam_total - verdicts[True]["clean"]
    as_spam = verdicts[False]["spam"]
    not_clean = ham_total - verdicts[False]["clean"]
    print(f"held-out part of {corpus}: {spam_total} spam, {ham_total} ham, every check on")
    print(f"  spam: {dict(verdicts[True])}; recall (not clean) {100 * caught / spam_total:.2f}%")
    print(
        f"  ham: {dict(verdicts[False])}; as spam {as_spam} ({100 * as_spam / ham_total:.2f}%), "
        f"not clean {not_clean} ({100 * not_clean / ham_total:.2f}%)"
    )
    print("\n".join(flagged_ham))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(Path(sys.argv[1]) if len(sys.argv) > 1 else SPAMASSASSIN)))
