#!/usr/bin/env bash
# For the tests: make sure Debian's chromium and its matching chromedriver are installed, for
# the web page's browser test (tests/e2e/test_ui_browser.py, Selenium from PyPI). Debian ships
# the two at the same version and updates them together; nothing is downloaded at run time.
set -euo pipefail

have() { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }

if ! have; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "chromium is not installed (the browser test is skipped):" \
      "sudo apt-get install -y --no-install-recommends chromium chromium-driver" >&2
    exit 0
  fi
  echo "Chromium: installing Debian's chromium and chromium-driver"
  "$(dirname "$0")/apt-install.sh" --no-recommends chromium chromium-driver fonts-dejavu-core ||
    { echo "could not install chromium (the browser test is skipped)" >&2; exit 0; }
fi
have && echo "Chromium: $(/usr/bin/chromium --version 2>/dev/null || echo installed)"
exit 0
