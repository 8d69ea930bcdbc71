"""How the classifier does on mail from sources and years it was not trained on.

    .venv/bin/python bench/detection_eval.py --name baseline            # every message
    .venv/bin/python bench/detection_eval.py --name try --max-per-source 800   # a quick look

Splits (docs/classifier.md, "Honest evaluation"):

- **leave-one-source-out**: train on every permitted source but one, score that one;
- **train-older/test-newer**: train on mail dated before 2022, score mail dated 2022 or later;
- **phishing_pot** (CC BY-NC, test only): scored by a model trained on every permitted source;
- **online**: from a model trained on the SpamAssassin corpus only, the other sources in date
  order, each message classified and then learned (the feedback step), the first 3,000.

Never scored on what it trained on: a test message whose Message-ID or whitespace-normalised body
hash is in the training part is left out of the test part; the newsletter pairs sent to two
addresses stay together. Calibration (when the code has one) is fitted inside the training part
only, on predictions for its own sources by models that did not see them.

Label leaks and anonymisation: the tokenizer ignores filters' verdict headers (X-Spam-* ...);
on top of that, tokens naming the corpora's anonymisation (``[removed]``, ``example.com``,
``baddomain.com``, the newsletter project's recipient domain) are dropped from every message, and
the sender/recipient tokens of the redacted spam archive (its From/To/Message-ID were replaced).

Writes ``bench/results/<name>.json``, ``<name>.md`` and ``<name>-reliability.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import re
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import astuple, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.scanner.checks.base import parse
from services.scanner.classifier import calibration, training
from services.scanner.classifier.model import Model, hash_tokens
from services.scanner.classifier.tokenizer import tokens
from services.scanner.classifier.training import auc, message_date, recall_at_fpr

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus"
SOURCES = training.PERMITTED
NEWER = datetime(2022, 1, 1, tzinfo=UTC).timestamp()
ONLINE_FIRST = 3000
_SPACE = re.compile(rb"\s+")
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_MESSAGE_ID = re.compile(rb"^message-id:\s*(<[^>\r\n]{3,}>)", re.IGNORECASE | re.MULTILINE)


@dataclass
class Mail:
    name: str
    source: str
    spam: bool
    when: float
    group: str  # messages that must stay on the same side of a split
    keys: tuple[str, ...]  # Message-ID and body hash, for de-duplication
    tokens: frozenset[str]
    size: int
    cpu_ms: float  # parse + tokenise


@dataclass
class Scores:
    probabilities: npt.NDArray[np.float64]
    labels: npt.NDArray[np.bool_]
    extra: dict[str, object] = field(default_factory=dict)


def dedupe_keys(raw: bytes, redacted: bool) -> tuple[str, ...]:
    parts = _BLANK_LINE.split(raw, maxsplit=1)
    head, body = parts[0], _SPACE.sub(b"", parts[1] if len(parts) > 1 else b"")
    keys = ["body:" + hashlib.md5(body).hexdigest()] if body else []
    match = _MESSAGE_ID.search(head)
    if match and not redacted:
        keys.append("mid:" + match.group(1).decode("latin-1").lower())
    return tuple(keys)


def tokenise(name: str, raw: bytes, redacted: bool) -> tuple[frozenset[str], float]:
    started = time.process_time()
    found = tokens(parse(name[-26:], raw))
    elapsed = (time.process_time() - started) * 1000
    return frozenset(training.clean(found, redacted)), elapsed


def group_of(source: str, name: str) -> str:
    if source == "newsletters":  # the same newsletter to two addresses: one group
        return source + ":" + re.sub(r"[.-]u[12]\.eml$", "", name)
    return source + ":" + name


def load(corpus: Path, max_per_source: int, cache: Path | None) -> list[Mail]:
    tokenizer_hash = hashlib.sha256(
        (ROOT / "services/scanner/classifier/tokenizer.py").read_bytes()
    ).hexdigest()[:12]
    # the fields as tuples, not Mail objects: a Mail pickled by this file run as a script is
    # ``__main__.Mail``, which the benches that import it could not read back
    key = f"{tokenizer_hash}-{max_per_source}-fields"
    if cache and (cache / f"{key}.pickle").exists():  # bench-private cache, our own file
        with open(cache / f"{key}.pickle", "rb") as handle:
            return [Mail(*fields) for fields in pickle.load(handle)]
    mails: list[Mail] = []
    for source, folder in SOURCES.items():
        files = [
            (path, label == "spam")
            for label in ("ham", "spam")
            if (corpus / folder / label).is_dir()
            for path in sorted((corpus / folder / label).iterdir())
            if path.is_file()
        ]
        if max_per_source and len(files) > max_per_source:
            # deterministic subsample, both classes in proportion
            files = sorted(files, key=lambda f: hashlib.sha256(f[0].name.encode()).digest())
            files = files[:max_per_source]
        redacted = source in training.REDACTED
        for path, spam in files:
            raw = path.read_bytes()
            found, cpu = tokenise(path.name, raw, redacted)
            mails.append(
                Mail(
                    path.name,
                    source,
                    spam,
                    message_date(raw),
                    group_of(source, path.name),
                    dedupe_keys(raw, redacted),
                    found,
                    len(raw),
                    cpu,
                )
            )
        print(f"  {source}: {len(files)} messages", file=sys.stderr, flush=True)
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
        with open(cache / f"{key}.pickle", "wb") as handle:
            pickle.dump([astuple(m) for m in mails], handle)
    return mails


def per_source(mails: Sequence[Mail], limit: int) -> list[Mail]:
    """At most ``limit`` messages of each source, the same deterministic subsample ``load``
    takes (by the hash of the file name), from an already loaded corpus."""
    kept: list[Mail] = []
    for source in SOURCES:
        own = sorted(
            (m for m in mails if m.source == source),
            key=lambda m: hashlib.sha256(m.name.encode()).digest(),
        )
        kept += own[:limit]
    return kept


def phishing(corpus: Path, limit: int) -> Iterator[tuple[str, bytes]]:
    tarball = corpus / "phishing_pot" / "phishing-sample2500.tar.gz"
    if not tarball.exists():
        return
    with tarfile.open(tarball, "r:gz") as archive:
        count = 0
        for member in archive:
            handle = archive.extractfile(member) if member.isfile() else None
            if handle is None:
                continue
            yield member.name, handle.read()
            count += 1
            if limit and count >= limit:
                return


# --- training and scoring -----------------------------------------------------------------------


def examples(mails: Sequence[Mail], bits: int) -> list[training.Example]:
    return [
        training.Example(m.name, m.spam, hash_tokens(m.tokens, bits), m.when, m.source)
        for m in mails
    ]


def fit(train_mails: Sequence[Mail], bits: int, params: training.Params, calibrate: bool) -> Model:
    """The model as ``make train`` builds it from these messages; with ``calibrate``, its
    calibration fitted on the training part's own sources, each scored by a model without it."""
    built = examples(train_mails, bits)
    model = training.train(built, params, [m.source for m in train_mails])
    if not calibrate:
        return model
    margins, known, scored = training.out_of_source(built, params)
    if len(scored):
        model.calibration = calibration.fit(
            margins,
            known,
            np.array([e.spam for e in scored]),
            np.array([e.source for e in scored]),
        )
    return model


def score(model: Model, mails: Sequence[Mail]) -> Scores:
    started = time.process_time()
    probabilities = np.array([model.probability(hash_tokens(m.tokens, model.bits)) for m in mails])
    per_message = (time.process_time() - started) * 1000 / max(1, len(mails))
    return Scores(
        probabilities, np.array([m.spam for m in mails], dtype=bool), {"score_ms": per_message}
    )


# --- figures --------------------------------------------------------------------------------------


def ece(
    probabilities: npt.NDArray[np.float64], labels: npt.NDArray[np.bool_], bins: int = 10
) -> float:
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(probabilities, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for index in range(bins):
        chosen = which == index
        if chosen.any():
            total += chosen.mean() * abs(probabilities[chosen].mean() - labels[chosen].mean())
    return float(total)


def summary(result: Scores, thresholds: Sequence[float]) -> dict[str, object]:
    p, y = result.probabilities, result.labels
    spam, ham = int(y.sum()), int((~y).sum())
    out: dict[str, object] = {"spam": spam, "ham": ham}
    both = bool(spam and ham)
    out["auc"] = auc(p, y) if both else None
    for threshold in thresholds:
        out[f"fpr@{threshold:g}"] = float((p[~y] >= threshold).mean()) if ham else None
        out[f"recall@{threshold:g}"] = float((p[y] >= threshold).mean()) if spam else None
    for target in (0.001, 0.005):
        out[f"recall@fp{100 * target:g}%"] = recall_at_fpr(p, y, target)[0] if both else None
    out["ham>=0.99"] = int((p[~y] >= 0.99).sum())
    out["brier"] = float(np.mean((p - y) ** 2))
    out["ece"] = ece(p, y)
    out.update(result.extra)
    return out


def verdict_threshold() -> float:
    """The spam probability from which the classifier's band alone reaches the spam verdict
    (the symbol table's BAYES_xx scores against the default threshold)."""
    from moat.settings import Settings
    from moat.symbols import BAYES_BANDS

    needed = Settings().scanner.spam_threshold
    reaching = [lower for _symbol, lower, score in BAYES_BANDS if score >= needed]
    return float(min(reaching)) if reaching else 1.0


# --- online ---------------------------------------------------------------------------------------


def online(model: Model, stream: Sequence[Mail]) -> dict[str, object]:
    from moat.settings import ClassifierSettings

    settings = ClassifierSettings()
    probabilities, labels, learn_ms = [], [], []
    for mail in stream:
        features = hash_tokens(mail.tokens, model.bits)
        probabilities.append(model.probability(features))
        labels.append(mail.spam)
        started = time.process_time()
        model.update(
            features,
            mail.spam,
            settings.learn_rate,
            settings.learn_max_steps,
            settings.learn_margin,
        )
        learn_ms.append((time.process_time() - started) * 1000)
    p, y = np.array(probabilities), np.array(labels, dtype=bool)
    return {
        "messages": len(stream),
        "spam": int(y.sum()),
        "1-auc%": 100 * (1 - auc(p, y)),
        "learn_ms": float(np.mean(learn_ms)),
        **{
            k: v
            for k, v in summary(Scores(p, y), (0.5,)).items()
            if k.startswith(("recall", "fpr"))
        },
    }


# --- the run ------------------------------------------------------------------------------


def unseen(train_part: Sequence[Mail], test_part: Sequence[Mail]) -> list[Mail]:
    """The test messages the training part has not seen: not the same Message-ID, not the same
    body (whitespace aside), not the other copy of a newsletter sent to two addresses."""
    seen = {key for m in train_part for key in m.keys}
    groups = {m.group for m in train_part}
    return [m for m in test_part if m.group not in groups and not seen & set(m.keys)]


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """The options that say how each split's model is trained (shared by the benches that
    train per split)."""
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--max-per-source", type=int, default=0, help="a subsample; 0: all")
    parser.add_argument(
        "--cache",
        default="/tmp/moat-detection-eval",
        help="token sets by tokenizer version (our own pickle files); '' for none",
    )
    parser.add_argument("--c", type=float, default=0.0, help="Params.c; 0: the default")
    parser.add_argument("--balance", type=float, default=None, help="Params.balance")
    parser.add_argument("--calibrate", action="store_true", help="as make train --calibrate")


def params_of(args: argparse.Namespace) -> training.Params:
    return training.Params(
        c=args.c if args.c else training.Params.c,
        balance=training.Params.balance if args.balance is None else args.balance,
    )


def splits(
    mails: Sequence[Mail], sources: Sequence[str] = tuple(SOURCES)
) -> dict[str, tuple[list[Mail], list[Mail]]]:
    """The held-out splits, by title: (training part, test part) before de-duplication (see
    ``unseen``). Leave each source out in turn; then mail dated before 2022 against mail dated
    2022 or later (undated mail in neither)."""
    out: dict[str, tuple[list[Mail], list[Mail]]] = {}
    for source in sources:
        out[f"leave out {source}"] = (
            [m for m in mails if m.source != source],
            [m for m in mails if m.source == source],
        )
    dated = [m for m in mails if m.when]
    out["older -> 2022+"] = (
        [m for m in dated if m.when < NEWER],
        [m for m in dated if m.when >= NEWER],
    )
    return out


def run(args: argparse.Namespace) -> dict[str, object]:
    print("tokenising", file=sys.stderr, flush=True)
    mails = load(args.corpus, args.max_per_source, args.cache)
    params = params_of(args)
    bits = params.bits
    sources = list(SOURCES)
    threshold = verdict_threshold()
    thresholds = sorted({0.5, 0.9, threshold})
    results: dict[str, object] = {}
    curves: dict[str, Scores] = {}
    for title, (train_part, test_part) in splits(mails, sources).items():
        started = time.perf_counter()
        before = len(test_part)
        test_part = unseen(train_part, test_part)
        if not train_part or not test_part:
            results[title] = {"skipped": "nothing to train on or nothing to score"}
            continue
        model = fit(train_part, bits, params, args.calibrate)
        result = score(model, test_part)
        curves[title] = result
        results[title] = summary(result, thresholds)
        results[title]["train"] = len(train_part)
        results[title]["duplicates_left_out"] = before - len(test_part)
        print(
            f"{title}: {json.dumps(results[title])} ({time.perf_counter() - started:.0f}s)",
            file=sys.stderr,
            flush=True,
        )

    everything = fit(mails, bits, params, args.calibrate)
    phish = []
    cpu = []
    for name, raw in phishing(args.corpus, args.max_per_source):
        found, ms = tokenise(name, raw, False)
        cpu.append(ms)
        phish.append(everything.probability(hash_tokens(found, bits)))
    if phish:
        p = np.array(phish)
        results["phishing_pot (all permitted sources)"] = {
            "spam": len(p),
            **{f"recall@{t:g}": float((p >= t).mean()) for t in thresholds},
            "brier": float(np.mean((p - 1) ** 2)),
        }

    stream = sorted(
        (m for m in mails if m.source != "spamassassin" and m.when), key=lambda m: m.when
    )
    start = fit([m for m in mails if m.source == "spamassassin"], bits, params, args.calibrate)
    results["online (from SpamAssassin-trained, other sources in date order)"] = online(
        start, stream[:ONLINE_FIRST]
    )

    sizes = np.array([m.size for m in mails])
    cpu_all = np.array([m.cpu_ms for m in mails])
    near_5k = (sizes >= 3000) & (sizes <= 8000)
    results["cpu"] = {
        "parse+tokenise ms/msg (all)": float(cpu_all.mean()),
        "parse+tokenise ms/msg (3-8 KB)": float(cpu_all[near_5k].mean()),
        "score ms/msg": float(np.mean([c.extra["score_ms"] for c in curves.values()])),
    }
    results["verdict_threshold"] = threshold
    results["model"] = {
        k: v for k, v in everything.meta.items() if isinstance(v, int | float | str)
    }
    plot(curves, args.output / f"{args.name}-reliability.png", args.name)
    return results


def plot(curves: dict[str, Scores], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 6))
    axis.plot([0, 1], [0, 1], "k:", label="perfect")
    edges = np.linspace(0, 1, 11)
    for name, result in curves.items():
        p, y = result.probabilities, result.labels
        which = np.clip(np.digitize(p, edges[1:-1]), 0, 9)
        xs, ys = [], []
        for index in range(10):
            chosen = which == index
            if chosen.sum() >= 5:
                xs.append(p[chosen].mean())
                ys.append(y[chosen].mean())
        axis.plot(xs, ys, "o-", label=f"{name} (n={len(p)})")
    axis.set_xlabel("predicted spam probability (10 bins, >= 5 messages)")
    axis.set_ylabel("fraction that is spam")
    axis.set_title(f"Reliability on held-out splits: {title}")
    axis.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")


def markdown(results: dict[str, object], name: str) -> str:
    thresholds = sorted({0.5, 0.9, float(results["verdict_threshold"])})  # type: ignore[arg-type]
    columns = ["spam", "ham", "auc"]
    for t in thresholds:
        columns += [f"fpr@{t:g}", f"recall@{t:g}"]
    columns += ["recall@fp0.1%", "recall@fp0.5%", "ham>=0.99", "brier", "ece"]
    lines = [f"# Detection evaluation: {name}", "", "| split | " + " | ".join(columns) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")

    def cell(value: object, column: str) -> str:
        if value is None:
            return "-"
        if column in ("spam", "ham", "ham>=0.99"):
            return str(value)
        if column.startswith(("fpr", "recall")):
            return f"{100 * float(value):.2f}%"  # type: ignore[arg-type]
        return f"{float(value):.4f}"  # type: ignore[arg-type]

    for split, figures in results.items():
        if isinstance(figures, dict) and "spam" in figures and split not in ("cpu", "model"):
            row = [cell(figures.get(c), c) for c in columns]
            lines.append(f"| {split} | " + " | ".join(row) + " |")
    for key in ("online (from SpamAssassin-trained, other sources in date order)", "cpu", "model"):
        lines += ["", f"**{key}**: `{json.dumps(results.get(key))}`"]
    lines += [
        "",
        f"verdict threshold (the classifier's band alone reaches the spam score): "
        f"p >= {results['verdict_threshold']:.4f}",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/detection_eval.py")
    add_training_options(parser)
    parser.add_argument("--name", default="run", help="<output>/<name>.{json,md,png}")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.cache = Path(args.cache) if args.cache else None  # Path("") would be "."
    started = time.perf_counter()
    results = run(args)
    results["wall_seconds"] = round(time.perf_counter() - started)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"{args.name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.output / f"{args.name}.md").write_text(markdown(results, args.name))
    print(markdown(results, args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
