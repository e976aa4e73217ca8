#!/bin/sh
# Checks the Prometheus rules, their unit tests, the Grafana dashboard's
# queries and the runbook links. Needs promtool (Debian/Ubuntu: the
# `prometheus` package) and python3. Run from anywhere: ops/check.sh
set -eu
ops=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

promtool check rules "$ops"/rules/*.yml
(cd "$ops/tests" && promtool test rules ./*.test.yml)
python3 "$ops/check.py" "$tmp/dashboard.rules.yml"
promtool check rules "$tmp/dashboard.rules.yml"
