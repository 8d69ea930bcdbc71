#!/usr/bin/env bash
# make install: create the virtualenv and install Moat into it, then touch the stamp file.
# Usage: scripts/install-venv.sh PYTHON VENV (run under flock by the Makefile).
#
# The Makefile holds a lock on VENV/.install.lock around this script, so two `make` runs at once
# (make install in one shell, make run in another) never run pip into the same virtualenv
# together; the one that waited finds the stamp newer than pyproject.toml here and does nothing.
set -euo pipefail

python="$1"
venv="$2"
stamp="$venv/.installed"

[ "$stamp" -nt pyproject.toml ] && exit 0

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  { echo "Moat needs Python 3.11 or newer (apt-get install python3 python3-venv)" >&2; exit 1; }
# A venv made without python3-venv has a python but no pip: make it again once venv works.
"$venv/bin/python" -m pip --version >/dev/null 2>&1 || "$python" -m venv "$venv" ||
  { echo "could not create $venv: apt-get install python3-venv" >&2; exit 1; }
echo "$venv/bin/python -m pip install -q -e '.[dev]'"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e '.[dev]'
touch "$stamp"
