"""The API process does not load the scanner: no classifier, no numpy, no archive readers.
Feedback is recorded by the API and learned by a scanner (services/scanner/feedback.py)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.harness import ROOT

FORBIDDEN = ("numpy", "scipy", "py7zr", "rarfile", "olefile", "services.scanner")


def test_importing_the_api_loads_nothing_of_the_scanner() -> None:
    # A fresh interpreter: this one has imported the scanner for other tests.
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys; import services.api.app, services.api.__main__; "
            "print(json.dumps(sorted(sys.modules)))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    modules = json.loads(loaded.stdout)
    assert "services.api.routes.feedback" in modules  # the feedback route is there...
    found = [m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert found == []  # ...without what learning needs
