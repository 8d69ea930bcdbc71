"""Every message of the shared corpus through the classifier check, once: proves that none
makes it raise, and measures its cost and what it flags per folder.

    .venv/bin/python bench/classifier_eval.py [/work/shared/corpus]

The phishing tarball is read without unpacking (its messages are data only, never shipped).
"""

from __future__ import annotations

import asyncio
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moat.settings import ClassifierSettings, Settings
from services.scanner.checks import parse
from services.scanner.checks.classifier import ClassifierCheck
from services.scanner.classifier.engine import Classifier


def messages(corpus: Path) -> Iterator[tuple[str, bytes]]:
    for folder in ("spamassassin/ham", "spamassassin/spam", "mime-fixtures", "auth-test-vectors"):
        for path in sorted((corpus / folder).rglob("*")):
            if path.is_file():
                yield folder, path.read_bytes()
    tarball = corpus / "phishing_pot" / "phishing-sample2500.tar.gz"
    if tarball.exists():
        with tarfile.open(tarball, "r:gz") as archive:
            for member in archive:
                handle = archive.extractfile(member) if member.isfile() else None
                if handle is not None:
                    yield "phishing_pot", handle.read()


async def main(corpus: Path) -> int:
    check = ClassifierCheck(Settings(), Classifier(ClassifierSettings(poll_interval=0), None))
    stats: dict[str, dict[str, float]] = {}
    errors = 0
    started = time.perf_counter()
    for folder, raw in messages(corpus):
        entry = stats.setdefault(folder, {"n": 0, "spam": 0, "ham": 0, "ms": 0.0})
        begin = time.perf_counter()
        try:
            [finding] = await check.check(parse("bench", raw))
        except Exception as exc:
            errors += 1
            print(f"{folder}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        entry["ms"] += (time.perf_counter() - begin) * 1000
        entry["n"] += 1
        # The old BAYES_SPAM / BAYES_HAM cut-offs, so figures stay comparable across versions.
        entry["spam"] += (finding.probability or 0.0) >= 0.9
        entry["ham"] += (finding.probability or 0.0) <= 0.2
    total = sum(entry["n"] for entry in stats.values())
    print(f"{total} messages in {time.perf_counter() - started:.1f}s, {errors} raised")
    for folder, entry in stats.items():
        n = max(1, entry["n"])
        print(
            f"  {folder:20s} {int(entry['n']):5d}  p>=0.9 {100 * entry['spam'] / n:6.2f}%  "
            f"p<=0.2 {100 * entry['ham'] / n:6.2f}%  check {entry['ms'] / n:.2f} ms/msg"
        )
    return 1 if errors else 0


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[2] / "shared" / "corpus"
    sys.exit(asyncio.run(main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)))
