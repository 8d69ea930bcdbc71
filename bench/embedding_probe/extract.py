"""Probe: see README.md. The visible text (Subject and text parts, HTML reduced to text) of
every permitted message, to /tmp/embed/texts.jsonl."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import detection_eval as de

from services.scanner.checks.base import parse
from services.scanner.classifier.tokenizer import (
    decode_header_text,
    html_to_text,
    part_text,
    raw_header,
)

corpus = de.DEFAULT_CORPUS if len(sys.argv) < 2 else Path(sys.argv[1])
with open("/tmp/embed/texts.jsonl", "w") as out:
    for source, folder in de.SOURCES.items():
        for label in ("ham", "spam"):
            d = corpus / folder / label
            if not d.is_dir():
                continue
            for path in sorted(p for p in d.iterdir() if p.is_file()):
                msg = parse(path.name[-26:], path.read_bytes())
                subject = decode_header_text(raw_header(msg.message, "subject"))
                texts = [subject]
                for part in msg.parts:
                    if part.content_type not in ("text/plain", "text/html"):
                        continue
                    t = part_text(part.part, part.payload[:20000])
                    if part.content_type == "text/html":
                        t = html_to_text(t, set())
                    texts.append(t)
                text = " ".join(" ".join(texts).split())[:2000]
                out.write(
                    json.dumps(
                        {"source": source, "name": path.name, "spam": label == "spam", "text": text}
                    )
                    + "\n"
                )
print("ok")
