"""Generated inputs for differential tests: strings made of random runs of fragments, so that
the interesting shapes (a scheme, an address, a bracket) come up often enough to count."""

from __future__ import annotations

import random
from collections.abc import Sequence


def fragment_strings(
    fragments: Sequence[str], count: int, *, seed: int, longest: int, shortest: int = 1
) -> list[str]:
    """``count`` strings, each ``shortest`` to ``longest`` fragments drawn at random."""
    rng = random.Random(seed)
    return [
        "".join(rng.choice(fragments) for _ in range(rng.randint(shortest, longest)))
        for _ in range(count)
    ]
