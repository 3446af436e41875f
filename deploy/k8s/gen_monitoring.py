#!/usr/bin/env python3
"""Writes components/monitoring's generated files from the rules and the
dashboard the rest of the project uses (deploy/prometheus, deploy/grafana):

  prometheus-rule.yaml    a PrometheusRule holding every group of deploy/prometheus/rules/*.yml
  grafana-dashboard.yaml  a ConfigMap holding deploy/grafana/dashboards/moemesh.json, labelled
                          grafana_dashboard: "1" for Grafana's dashboard sidecar

  deploy/k8s/gen_monitoring.py [--check]

The files are checked in; with --check it exits 1 if they are not what it
makes (tests/deploy_k8s_test.py runs that).
"""
import argparse
import json
import pathlib
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent
DEPLOY = HERE.parent
HEADER = "# Made by deploy/k8s/gen_monitoring.py from {}; do not edit.\n"


def prometheus_rule() -> str:
    groups = []
    sources = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
    for path in sources:
        groups += yaml.safe_load(path.read_text())["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "moemesh"},
        "spec": {"groups": groups},
    }
    names = ", ".join(str(p.relative_to(DEPLOY.parent)) for p in sources)
    return HEADER.format(names) + yaml.safe_dump(rule, sort_keys=False, width=120)


def grafana_dashboard() -> str:
    path = DEPLOY / "grafana" / "dashboards" / "moemesh.json"
    json.loads(path.read_text())  # it must parse
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "moemesh-grafana-dashboard", "labels": {"grafana_dashboard": "1"}},
        "data": {"moemesh.json": path.read_text()},
    }
    return HEADER.format(path.relative_to(DEPLOY.parent)) + yaml.safe_dump(config_map, sort_keys=False, width=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if the files are not what this makes")
    args = parser.parse_args()
    out = HERE / "components" / "monitoring"
    stale = []
    for name, text in (("prometheus-rule.yaml", prometheus_rule()), ("grafana-dashboard.yaml", grafana_dashboard())):
        path = out / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
    for path in stale:
        print(f"{path} is not what deploy/k8s/gen_monitoring.py makes: run it again")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
