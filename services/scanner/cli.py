"""Offline commands, like ``spamassassin -t`` and ``sa-learn``:

python -m services.scanner check FILE...           classify message files, one JSON line each
python -m services.scanner learn --spam|--ham FILE...  learn them into the classifier's store
python -m services.scanner forget                  undo everything learned
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from moat.model import Category, MessageEnvelope
from moat.settings import Settings
from services.scanner.scanning import Scanner
from services.scanner.verdict import Undecidable


async def check_files(settings: Settings, files: list[Path], rcpt: str | None) -> int:
    """Print one JSON object per file; 0 when every file was classified."""
    scanner = Scanner(settings)
    envelope = MessageEnvelope(rcpt_tos=(rcpt,) if rcpt else ())
    status = 0
    for path in files:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            print(json.dumps({"file": str(path), "error": str(exc)}), flush=True)
            status = 1
            continue
        result = await scanner.scan(path.name, raw, envelope)
        findings = [f.model_dump(mode="json") for f in result.findings]
        line: dict[str, object] = {"file": str(path)}
        try:
            verdict = scanner.judge(result)
            line |= {"verdict": verdict.verdict, "action": verdict.action, "score": verdict.score}
        except Undecidable as exc:
            # An engine could not be reached: show it, with what the rest found.
            table = settings.scanner_policy(scanner.policy_domain(envelope)).symbol_table
            counted = (table.score(f) for f in result.findings)
            score = sum(f.score for f in counted if f.category != Category.INFO)
            line |= {
                "verdict": None,
                "action": None,
                "score": round(score, 3),
                "undecided": str(exc),
            }
        line["spam_probability"] = next(
            (f.get("probability") for f in findings if f.get("probability") is not None), None
        )
        line["findings"] = findings
        print(json.dumps(line), flush=True)
    return status


async def learn_files(settings: Settings, files: list[Path], spam: bool) -> int:
    """Learn each file with the label into the database the scanners read (like sa-learn);
    one JSON line per file. 0 when every file was learned (or had been already)."""
    from moat.db import create_engine
    from services.scanner.classifier.engine import Classifier

    classifier = Classifier(settings.scanner.classifier, create_engine(settings.database_url))
    status = 0
    try:
        for path in files:
            line: dict[str, object] = {"file": str(path)}
            try:
                result = await classifier.learn(path.read_bytes(), spam, "cli")
            except OSError as exc:
                line["error"] = str(exc)
                status = 1
            else:
                line |= {
                    "label": result.label,
                    "learned": result.learned,
                    "generation": result.generation,
                    "probability_before": round(result.probability_before, 6),
                }
                if not result.learned:
                    line["note"] = f"already learned as {result.label}"
            print(json.dumps(line), flush=True)
    finally:
        await classifier.close()
    return status


async def forget_all(settings: Settings) -> int:
    """Undo everything learned (every scanner picks it up at its next poll); one JSON line."""
    from moat.db import create_engine
    from services.scanner.classifier.store import FeedbackStore

    store = FeedbackStore(create_engine(settings.database_url))
    try:
        forgotten = await store.forget()
    finally:
        await store.close()
    print(
        json.dumps(
            {
                "generation": forgotten.generation,
                "features_reset": forgotten.features,
                "messages_forgotten": forgotten.messages,
            }
        ),
        flush=True,
    )
    return 0


def add_commands(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """Add check, learn and forget to ``parser`` (``args.command``; None when not required and
    none was given: ``python -m services.scanner`` alone runs the service)."""
    commands = parser.add_subparsers(dest="command", required=required, title="offline commands")
    check = commands.add_parser("check", help="classify message files; one JSON line per file")
    check.add_argument("files", nargs="+", type=Path)
    check.add_argument("--rcpt", help="recipient address whose domain policy applies")
    learn = commands.add_parser(
        "learn", help="teach the classifier: files are spam or ham (written to the database)"
    )
    label = learn.add_mutually_exclusive_group(required=True)
    label.add_argument("--spam", action="store_true", help="the files are spam")
    label.add_argument("--ham", action="store_true", help="the files are ham (not spam)")
    learn.add_argument("files", nargs="+", type=Path)
    commands.add_parser(
        "forget",
        help="undo everything learned: back to the shipped model (e.g. after a model upgrade)",
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run the command ``add_commands`` parsed; its exit status."""
    if args.command == "check":
        return asyncio.run(check_files(settings, args.files, args.rcpt))
    if args.command == "learn":
        return asyncio.run(learn_files(settings, args.files, args.spam))
    if args.command == "forget":
        return asyncio.run(forget_all(settings))
    return 2


def main(settings: Settings, argv: list[str]) -> int:
    """One offline command, from its arguments (``["check", "a.eml"]``)."""
    parser = argparse.ArgumentParser(prog="python -m services.scanner")
    add_commands(parser, required=True)
    return run(settings, parser.parse_args(argv))


if __name__ == "__main__":
    from moat.settings import load_settings

    sys.exit(main(load_settings(), sys.argv[1:]))
