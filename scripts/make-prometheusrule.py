#!/usr/bin/env python3
"""Write k8s/components/prometheus-operator/prometheusrule.yaml from the one source of Moat's
alert rules, deploy/prometheus/moat-alerts.yaml: the same ``groups:``, under the ``spec:`` of a
Prometheus Operator ``PrometheusRule``. Run it after changing the rule file (a unit test,
tests/unit/test_deployment_files.py, fails while the two differ):

    .venv/bin/python scripts/make-prometheusrule.py          # rewrite the PrometheusRule
    .venv/bin/python scripts/make-prometheusrule.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "deploy" / "prometheus" / "moat-alerts.yaml"
TARGET = ROOT / "k8s" / "components" / "prometheus-operator" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/moat-alerts.yaml by scripts/make-prometheusrule.py: edit the
# rule file and run the script, never this file (a unit test fails while the two differ).
"""


def prometheus_rule(groups: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "moat", "labels": {"app.kubernetes.io/part-of": "moat"}},
        "spec": {"groups": groups},
    }


def render() -> str:
    groups = yaml.safe_load(SOURCE.read_text())["groups"]
    body = yaml.safe_dump(prometheus_rule(groups), sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


def main(argv: list[str]) -> int:
    text = render()
    if argv == ["--check"]:
        if TARGET.read_text() != text:
            print(f"{TARGET.relative_to(ROOT)} is out of date: run {sys.argv[0]}", file=sys.stderr)
            return 1
        return 0
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    TARGET.write_text(text)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
