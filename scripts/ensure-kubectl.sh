#!/usr/bin/env bash
# For the tests: make sure kubectl is installed, for `kubectl kustomize` (tests/unit/
# test_deployment_files.py renders every overlay of k8s/ with it). Quiet when it is there.
# The overlays use kustomize components, which need the kustomize built into kubectl 1.21 or
# newer; Debian's own kubernetes-client package is older (1.20): the test says so if that is
# all there is.
set -euo pipefail

command -v kubectl >/dev/null 2>&1 && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "kubectl is not installed: sudo apt-get install -y kubectl (or kubernetes-client)" >&2
  exit 1
fi
if apt-cache show kubectl >/dev/null 2>&1; then
  "$(dirname "$0")/apt-install.sh" --no-recommends kubectl
else
  "$(dirname "$0")/apt-install.sh" --no-recommends kubernetes-client
fi
command -v kubectl >/dev/null 2>&1 || { echo "kubectl still not found after installing it" >&2; exit 1; }
