#!/usr/bin/env bash
# Make sure unar (Debian's `unar`, The Unarchiver) is installed: the attachments check runs it to
# extract compressed rar members (services/scanner/checks/archives.py, docs/checks/attachments.md).
# Quiet and quick when it is there. Installs it with apt-get as root, or with sudo when sudo
# needs no password; otherwise says what to run and goes on: without unar the gateway still
# runs, and a compressed rar is judged by its headers only (ARCHIVE_OPAQUE).
set -euo pipefail

command -v unar >/dev/null 2>&1 && exit 0

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "unar is not installed, so compressed rar attachments will not be opened:" >&2
  echo "  sudo apt-get install -y --no-install-recommends unar" >&2
  exit 0
fi
echo "rar: installing Debian's unar"
"${as_root[@]}" "$(dirname "$0")/apt-install.sh" --no-recommends unar
command -v unar >/dev/null 2>&1 || { echo "unar still not found after installing it" >&2; exit 1; }
