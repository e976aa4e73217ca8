#!/usr/bin/env python3
"""Static checks of ops/ that promtool cannot make by itself (stdlib only).

    python3 ops/check.py DASHBOARD_RULES_OUT

1. Extracts every PromQL query of the Grafana dashboards (ops/dashboards/*.json),
   with Grafana's variables replaced by values PromQL accepts, and writes them
   to DASHBOARD_RULES_OUT as recording rules, one per query, for
   `promtool check rules` to parse (ops/check.sh does it).
2. Checks that every metric the rules and dashboards read is one the tenlives
   exporters register (read from their sources) or one the rules record, and
   that every label matcher names a label those series carry and, for
   `kind`, `reason` and `outcome`, a value the exporter spells.
3. Checks that every alert links a runbook that exists, and every runbook
   belongs to an alert.

Exits non-zero with a message naming the file and the query on any failure.
"""
import json
import pathlib
import re
import sys

OPS = pathlib.Path(__file__).resolve().parent
ROOT = OPS.parent
# The sources that register the metrics the rules may read.
EXPORTERS = [
    ROOT / "adapters/tokio/src/telemetry/exporter.rs",
    ROOT / "adapters/redis/src/limiter.rs",
]
# Where the exporter spells its label values (kinds, reasons, outcomes).
LABEL_SOURCES = [
    ROOT / "adapters/tokio/src/telemetry/decode.rs",
    ROOT / "adapters/tokio/src/telemetry/exporter.rs",
]
# Label names the series carry: the exporter's, and what Prometheus adds.
LABEL_NAMES = {"policy", "kind", "reason", "outcome", "job", "instance",
               "alertname", "alertstate", "severity"}
# Labels whose values are a closed set the exporter spells.
CLOSED_LABELS = {"kind", "reason", "outcome"}
# Grafana's built-in interval variables, as durations PromQL accepts.
GRAFANA_BUILTINS = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
}
# Series Prometheus itself produces that a dashboard may read.
PROMETHEUS_SERIES = {"ALERTS", "ALERTS_FOR_STATE", "up"}

errors = []


def exported_metrics():
    """Metric names the exporters register; counters also with `_total`."""
    names = set()
    for path in EXPORTERS:
        text = path.read_text()
        for m in re.finditer(r'register\(\s*"(tenlives_[a-z0-9_]+)"', text):
            names.add(m.group(1))
            names.add(m.group(1) + "_total")
    if not names:
        errors.append("no metric registrations found in the exporters' sources")
    return names


def exported_label_values():
    """Every snake_case string literal of the exporter's label sources: a
    superset of its `kind`, `reason` and `outcome` values."""
    values = set()
    for path in LABEL_SOURCES:
        values |= set(re.findall(r'"([a-z][a-z0-9_]*)"', path.read_text()))
    return values


def check_matchers(expr, where, values):
    """Label names in matchers are ones the series carry; values of the
    closed labels are ones the exporter spells (`code_<n>` for application
    kinds)."""
    for m in re.finditer(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', expr):
        name, value = m.group(1), m.group(3)
        if name not in LABEL_NAMES:
            errors.append(f"{where}: matches on label {name!r}, which no tenlives series carries")
        elif name in CLOSED_LABELS:
            for v in value.split("|"):
                if v not in values and not re.fullmatch(r"code_\d+", v):
                    errors.append(f"{where}: {name}={v!r} is not a value the exporter gives {name}")


def rule_files():
    return sorted((OPS / "rules").glob("*.yml"))


def recorded_and_alerts():
    """Recorded series names, and (alert, runbook_url) pairs, read from the
    rule files' text (promtool has already parsed them)."""
    recorded, alerts = set(), []
    for path in rule_files():
        current = None
        for line in path.read_text().splitlines():
            m = re.match(r"\s*- record:\s*(\S+)", line)
            if m:
                recorded.add(m.group(1))
            m = re.match(r"\s*- alert:\s*(\S+)", line)
            if m:
                current = m.group(1)
                alerts.append([current, None])
            m = re.match(r"\s*runbook_url:\s*(\S+)", line)
            if m:
                if current is None:
                    errors.append(f"{path}: runbook_url outside an alert")
                else:
                    alerts[-1][1] = m.group(1)
    return recorded, alerts


def substitute(expr, variables, where):
    def repl(m):
        name = m.group(1) or m.group(2)
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        if name in variables:
            return variables[name]
        errors.append(f"{where}: unknown Grafana variable ${name} in {expr!r}")
        return m.group(0)

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)


def dashboard_queries():
    """(where, expr) for every query target of every dashboard panel."""
    out = []
    for path in sorted((OPS / "dashboards").glob("*.json")):
        dash = json.loads(path.read_text())
        variables = {}
        for var in dash.get("templating", {}).get("list", []):
            # A query variable stands for label values: its "all" regex
            # is a valid stand-in wherever it is used as `label=~"$var"`.
            variables[var["name"]] = var.get("allValue") or ".*"

        def walk(panels):
            for panel in panels:
                for target in panel.get("targets", []):
                    where = f"{path.name}: panel {panel.get('title')!r} query {target.get('refId')}"
                    expr = target.get("expr")
                    if not expr:
                        errors.append(f"{where}: no expr")
                        continue
                    out.append((where, substitute(expr, variables, where)))
                walk(panel.get("panels", []))

        walk(dash.get("panels", []))
    return out


def metric_names(expr):
    """Series names an expression reads: identifiers followed by `{`, `[`,
    or standing alone, that are not functions, keywords or label names."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # drop string literals
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # drop range and subquery durations
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for m in re.finditer(r"(?<![0-9.A-Za-z_:])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word, after = m.group(0), expr[m.end():].lstrip()[:1]
        before = expr[: m.start()].rstrip()[-1:]
        if after == "(":  # a function or aggregation
            continue
        if after in ("=", "!") and before in ("{", ","):  # a label matcher
            continue
        if word in {"and", "or", "unless", "bool", "offset", "inf", "nan", "Inf", "NaN"}:
            continue
        names.add(word)
    return names


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    exported = exported_metrics()
    label_values = exported_label_values()
    recorded, alerts = recorded_and_alerts()
    known = exported | recorded

    for path in rule_files():
        code = "\n".join(l for l in path.read_text().splitlines() if not l.lstrip().startswith("#"))
        for line in code.splitlines():
            # Alert labels and annotations are not matchers.
            if re.match(r"\s*(severity|summary|description|runbook_url):", line):
                continue
            check_matchers(line, path.name, label_values)
        for m in re.finditer(r"\b(tenlives_[a-z0-9_]+)", code):
            if m.group(1) not in exported:
                errors.append(f"{path.name}: reads {m.group(1)}, which no tenlives exporter registers")

    queries = dashboard_queries()
    if not queries:
        errors.append("no dashboard queries found")
    lines = [
        "# Generated by ops/check.py: every dashboard query as a recording rule,",
        "# so that `promtool check rules` parses each one.",
        "groups:",
        "  - name: dashboard-queries",
        "    rules:",
    ]
    for i, (where, expr) in enumerate(queries):
        check_matchers(expr, where, label_values)
        for name in metric_names(expr):
            if name not in known and name not in PROMETHEUS_SERIES:
                errors.append(f"{where}: reads {name}, which is neither exported nor recorded")
        lines.append(f"      # {where}")
        lines.append(f"      - record: dashboard:query_{i}")
        lines.append("        expr: " + json.dumps(expr))
    pathlib.Path(sys.argv[1]).write_text("\n".join(lines) + "\n")

    runbooks = {p.name for p in (OPS / "runbooks").glob("*.md")}
    for alert, url in alerts:
        if url is None:
            errors.append(f"alert {alert} has no runbook_url")
        elif url != f"ops/runbooks/{alert}.md":
            errors.append(f"alert {alert}: runbook_url {url} is not ops/runbooks/{alert}.md")
        elif not (ROOT / url).is_file():
            errors.append(f"alert {alert}: runbook {url} does not exist")
    for name in runbooks - {f"{a}.md" for a, _ in alerts}:
        errors.append(f"runbook {name} belongs to no alert")

    if errors:
        for e in errors:
            print("ops/check.py:", e, file=sys.stderr)
        sys.exit(1)
    print(f"ops/check.py: {len(queries)} dashboard queries, {len(alerts)} alerts with runbooks, "
          f"{len(recorded)} recorded series; every metric read is exported or recorded")


if __name__ == "__main__":
    main()
