"""Where the shared test corpus is: ``../shared/corpus`` beside the checkout (as on the
developers' machines and in CI), or ``$MOAT_CORPUS``."""

from __future__ import annotations

import os
from pathlib import Path

CORPUS = Path(
    os.environ.get("MOAT_CORPUS", Path(__file__).resolve().parents[3] / "shared" / "corpus")
)
