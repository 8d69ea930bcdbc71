"""Evaluating the classifier: ``make evaluate`` (``python -m services.scanner.classifier.
evaluation``).

Two figures for a labelled corpus, messages in time order (their Date header; a TREC index in
its own order):

- **static**: the model as shipped, learning nothing;
- **online** (the TREC spam-track protocol): classify each message, then learn it with its true
  label — the same update the ``learn`` command and the feedback API make (the ``learn_*``
  settings) — before the next one. ``--on-error`` learns only the misclassified ones, as a
  user reporting mistakes would.

Sources: ``--corpus DIR`` (with ``ham/`` and ``spam/``), ``--ham DIR``/``--spam DIR``,
``--index FILE`` (TREC: ``spam path`` / ``ham path`` lines, paths relative to the file), and
``--phishing`` (a directory or a .tar.gz of spam-only messages, read without unpacking:
recall only). Nothing is written; the shipped model is not changed.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moat.settings import ClassifierSettings
from services.scanner.checks.base import parse
from services.scanner.classifier.model import SHIPPED_MODEL, Model
from services.scanner.classifier.tokenizer import tokens
from services.scanner.classifier.training import (
    EARLY,
    LATER,
    auc,
    corpus_files,
    figures,
    load_labelled,
    message_date,
    recall_at_fpr,
    train,
)


@dataclass(frozen=True)
class Item:
    name: str
    spam: bool
    raw: bytes


def from_dirs(ham: Path | None, spam: Path | None) -> list[Item]:
    files = []
    for folder, label in ((ham, False), (spam, True)):
        if folder is None:
            continue
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.name.startswith((".", "README")):
                files.append((path, label))
    return from_files(files)


def from_files(files: list[tuple[Path, bool]]) -> list[Item]:
    """The messages of ``(path, spam)`` pairs in time order (their Date header)."""
    items = [Item(str(path), spam, path.read_bytes()) for path, spam in files]
    return sorted(items, key=lambda item: (message_date(item.raw), item.name))


def from_index(index: Path) -> list[Item]:
    items = []
    for line in index.read_text().splitlines():
        label, _, relative = line.strip().partition(" ")
        if label.lower() in ("spam", "ham") and relative:
            path = (index.parent / relative.strip()).resolve()
            items.append(Item(str(path), label.lower() == "spam", path.read_bytes()))
    return items  # a TREC index is in time order already


def spam_only(source: Path) -> Iterator[Item]:
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.is_file():
                yield Item(str(path), True, path.read_bytes())
        return
    with tarfile.open(source, "r:*") as archive:
        for member in archive:
            if member.isfile():
                handle = archive.extractfile(member)
                if handle is not None:
                    yield Item(member.name, True, handle.read())


@dataclass
class Run:
    static: list[float]
    online: list[float]
    labels: list[bool]
    milliseconds: list[float]


def run(
    items: list[Item] | Iterator[Item],
    model: Model,
    settings: ClassifierSettings,
    *,
    learn: bool = True,
    on_error: bool = False,
) -> Run:
    shipped = model.weights.copy()
    result = Run([], [], [], [])
    try:
        for item in items:
            started = time.perf_counter()
            features = model.features(tokens(parse("eval", item.raw), settings.max_text_bytes))
            online = model.probability(features)
            result.milliseconds.append((time.perf_counter() - started) * 1000)
            result.static.append(model.probability(features, shipped))
            result.online.append(online)
            result.labels.append(item.spam)
            wrong = (online >= settings.spam_probability) != item.spam
            if learn and (wrong or not on_error):
                model.update(
                    features,
                    item.spam,
                    settings.learn_rate,
                    settings.learn_max_steps,
                    settings.learn_margin,
                )
    finally:
        model.weights[:] = shipped
    return result


def describe(title: str, probabilities: list[float], labels: list[bool], threshold: float) -> None:
    scores = np.array(probabilities, dtype=np.float64)
    truth = np.array(labels, dtype=bool)
    print(f"  {title}:")
    for at in sorted({0.5, threshold}):
        print("    " + figures(scores, truth, at).line())
    if truth.any() and (~truth).any():
        print(f"    1-AUC {100 * (1 - auc(scores, truth)):.3f}%", end="")
        for target in (0.001, 0.005, 0.01):
            recall, _ = recall_at_fpr(scores, truth, target)
            print(f"  recall@FPR{100 * target:g}% {100 * recall:.2f}%", end="")
        print()


def summarise(name: str, result: Run, settings: ClassifierSettings, learned: bool) -> None:
    times = np.array(result.milliseconds)
    spam = sum(result.labels)
    print(f"{name}: {len(result.labels)} messages ({spam} spam, {len(result.labels) - spam} ham)")
    describe(
        "static (the model as shipped)", result.static, result.labels, settings.spam_probability
    )
    if learned:
        describe(
            "online (classify, then learn each, in order)",
            result.online,
            result.labels,
            settings.spam_probability,
        )
    if len(times):
        print(
            f"  cost per message (parse + tokenise + score): mean {times.mean():.2f} ms, "
            f"median {np.median(times):.2f} ms, p99 {np.percentile(times, 99):.2f} ms"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.scanner.classifier.evaluation")
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL)
    parser.add_argument("--empty", action="store_true", help="start online from an empty model")
    parser.add_argument("--corpus", type=Path, help="a directory with ham/ and spam/")
    parser.add_argument("--ham", type=Path)
    parser.add_argument("--spam", type=Path)
    parser.add_argument("--index", type=Path, help="a TREC index file (spam|ham PATH lines)")
    parser.add_argument("--phishing", type=Path, help="spam only: a directory or a .tar.gz")
    parser.add_argument("--on-error", action="store_true", help="learn only the mistakes")
    parser.add_argument("--no-learn", action="store_true", help="static figures only")
    parser.add_argument("--limit", type=int, default=0, help="at most this many messages")
    parser.add_argument(
        "--later",
        type=Path,
        metavar="CORPUS",
        help="the SpamAssassin corpus: train on its early collections (2002), evaluate on the "
        "later ones (2003-2005) in date order",
    )
    args = parser.parse_args(argv)
    settings = ClassifierSettings()
    model = Model.empty() if args.empty else Model.load(args.model)
    learn = not args.no_learn
    done = False
    if args.later:
        files = corpus_files(args.later)
        early = [(path, spam) for path, spam in files if path.name.startswith(EARLY)]
        later = [(path, spam) for path, spam in files if path.name.startswith(LATER)]
        if not early or not later:
            parser.error(f"{args.later}: no SpamAssassin collections (easy_ham.*, spam_2.*...)")
        trained = train(load_labelled(early, quiet=True))
        items = from_files(later)
        summary = run(items, trained, settings, learn=learn, on_error=args.on_error)
        summarise(
            f"{args.later}: the later collections, by a model trained on the early ones "
            f"({len(early)} messages)",
            summary,
            settings,
            learn,
        )
        done = True
    if args.corpus or args.ham or args.spam:
        ham = args.ham or (args.corpus / "ham" if args.corpus else None)
        spam = args.spam or (args.corpus / "spam" if args.corpus else None)
        items = from_dirs(ham, spam)
        items = items[: args.limit] if args.limit else items
        summary = run(items, model, settings, learn=learn, on_error=args.on_error)
        summarise(f"{ham} + {spam}", summary, settings, learn)
        done = True
    if args.index:
        items = from_index(args.index)
        items = items[: args.limit] if args.limit else items
        summary = run(items, model, settings, learn=learn, on_error=args.on_error)
        summarise(str(args.index), summary, settings, learn)
        done = True
    if args.phishing:
        phishing: Iterator[Item] = spam_only(args.phishing)
        if args.limit:
            phishing = (item for _, item in zip(range(args.limit), phishing, strict=False))
        summary = run(phishing, model, settings, learn=learn, on_error=args.on_error)
        summarise(f"{args.phishing} (spam only: recall)", summary, settings, learn)
        done = True
    if not done:
        parser.error(
            "nothing to evaluate: give --corpus, --ham/--spam, --index, --phishing or --later"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
