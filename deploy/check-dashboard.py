#!/usr/bin/env python3
"""Checks deploy/grafana/postrider.json and the PromQL of the Prometheus rule files.

- the dashboard is well-formed JSON with the expected schema, datasource variable, `job` and
  `instance` variables, unique panel ids and non-overlapping grid positions inside 24 columns;
- every PromQL expression (dashboard targets and variable queries, alert and recording rules)
  uses only metric names Postrider defines: those registered in crates/metrics/src/lib.rs plus
  the standard `up`;
- histogram suffixes (_bucket/_sum/_count) are used only on histograms, and label names in
  selectors and in by/without/on/ignoring clauses exist on the metrics of the expression;
- with --emit-rules FILE it writes every dashboard expression, Grafana variables replaced by
  concrete values, as recording rules into FILE so that `promtool check rules FILE` parses them.

Exit status 1 with one line per problem on failure. Only the Python standard library and PyYAML.
usage: deploy/check-dashboard.py [--emit-rules FILE]
"""

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
METRICS_RS = ROOT / "crates/metrics/src/lib.rs"
DASHBOARD = ROOT / "deploy/grafana/postrider.json"
RULE_FILES = [ROOT / "deploy/prometheus/alerts.yml", ROOT / "deploy/prometheus/recording.yml"]

# Labels of every known metric (without target labels job/instance, which every series has).
# "histogram" marks metrics exported as _bucket/_sum/_count.
KNOWN = {
    "postrider_messages_accepted_total": {"source"},
    "postrider_delivery_attempts_total": {"result"},
    "postrider_bounces_generated_total": set(),
    "postrider_bounces_total": {"category", "kind"},
    "postrider_inbound_reports_total": {"type"},
    "postrider_complaints_total": set(),
    "postrider_queue_messages": set(),
    "postrider_delivery_duration_seconds": {"histogram"},
    "postrider_smtp_sessions_total": set(),
    "postrider_smtp_rejections_total": {"reason"},
    "postrider_http_requests_total": {"route", "status"},
    "postrider_http_request_duration_seconds": {"route", "status", "histogram"},
    "postrider_store_flush_seconds": {"histogram"},
    "postrider_store_flush_batch": {"histogram"},
    "postrider_store_corrupt_records_total": set(),
    "postrider_queue_messages_by_state": {"state"},
    "postrider_queue_oldest_message_age_seconds": set(),
    "postrider_data_dir_free_bytes": set(),
    "postrider_store_size_bytes": set(),
    "postrider_build_info": {"version"},
    "postrider_smtp_transactions_total": {"result"},
    "postrider_smtp_auth_failures_total": {"reason"},
    "postrider_smtp_auth_lockouts_total": {"scope"},
    "postrider_smtp_overload": set(),
    "postrider_delivery_results_total": {"result", "status_class"},
    "postrider_delivery_by_domain_total": {"domain", "result"},
    "postrider_outbound_connections": set(),
    "postrider_dns_lookups_total": {"result"},
    "postrider_dns_cache_lookups_total": {"result"},
    "postrider_destinations_suspended": set(),
    "postrider_cluster_up": set(),
    "postrider_delivery_queue_time_seconds": {"histogram"},
    "postrider_outbound_tls_total": {"result"},
    "postrider_tls_policy_results_total": {"policy", "result"},
    "postrider_tls_reports_total": {"transport", "result"},
    "postrider_webhook_deliveries_total": {"result"},
    "postrider_webhook_outbox": set(),
    "postrider_webhook_dropped_total": set(),
    "postrider_config_reloads_total": {"result"},
    "postrider_sandbox_captured_total": {"outcome"},
    "postrider_config_last_reload_success_timestamp_seconds": set(),
    "postrider_delivery_status_codes_total": {"code"},
}
# Every metric is defined in lib.rs now; nothing is allowed on credit.
PENDING = {}
STANDARD = {"up": set()}
TARGET_LABELS = {"job", "instance"}

# Grafana variables -> concrete values for PromQL parsing.
GRAFANA_VARS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "6h",
    "$job": "postrider",
    "$instance": ".*",
}

problems = []


def problem(msg):
    problems.append(msg)


def defined_in_lib_rs():
    """Metric definitions in crates/metrics/src/lib.rs: name -> labels (plus "histogram").

    Reads each Rust statement (up to `;`) outside the tests that contains a metric name literal:
    the labels are the string literals of its `&[...]`, and a statement mentioning Histogram
    defines a histogram.
    """
    text = METRICS_RS.read_text(encoding="utf-8").split("#[cfg(test)]")[0]
    # Semicolons inside string literals (help texts) do not end statements.
    text = re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: m.group(0).replace(";", ","), text)
    found = {}
    for statement in text.split(";"):
        names = re.findall(r'"(postrider_[a-z0-9_]+)"', statement)
        if len(names) != 1:
            continue
        labels = set()
        m = re.search(r"&\[([^\]]*)\]", statement.split(names[0], 1)[1])
        if m:
            labels = set(re.findall(r'"([a-z_]+)"', m.group(1)))
        if "istogram" in statement:
            labels.add("histogram")
        found[names[0]] = labels
    return found


def strip_strings(expr):
    """Replaces string literals by empty ones so label values do not look like names."""
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def check_expr(where, expr, catalogue, in_lib):
    """Checks one PromQL expression's metric and label names."""
    bare = strip_strings(expr)
    metrics_used = set()
    for name in re.findall(r"\b(postrider_[a-z0-9_]+|up)\b(?!\s*\()", bare):
        base = name
        suffix = None
        if name not in catalogue:
            m = re.match(r"(.+)_(bucket|sum|count)$", name)
            if m and m.group(1) in catalogue:
                base, suffix = m.group(1), m.group(2)
        if base not in catalogue:
            problem(f"{where}: unknown metric {name}")
            continue
        is_histogram = "histogram" in catalogue[base]
        if is_histogram and suffix is None:
            problem(f"{where}: histogram {base} used without _bucket/_sum/_count")
        if suffix and not is_histogram:
            problem(f"{where}: {name}: {base} is not a histogram")
        if base.startswith("postrider_") and base not in in_lib and base not in PENDING:
            problem(f"{where}: {base} is not registered in {METRICS_RS.relative_to(ROOT)}")
        metrics_used.add((base, suffix))
    if not metrics_used:
        problem(f"{where}: no known metric in expression {expr!r}")
        return
    allowed = set(TARGET_LABELS)
    for base, suffix in metrics_used:
        allowed |= catalogue[base] - {"histogram"}
        if suffix == "bucket":
            allowed.add("le")
    # Selector label names: metric{label op "value", ...}
    for name, body in re.findall(r"\b(postrider_[a-z0-9_]+|up)\s*\{([^}]*)\}", bare):
        for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", body):
            own = set(TARGET_LABELS)
            base = re.sub(r"_(bucket|sum|count)$", "", name) if name not in catalogue else name
            own |= catalogue.get(base, set()) - {"histogram"}
            if name.endswith("_bucket"):
                own.add("le")
            if label not in own:
                problem(f"{where}: {name} has no label {label!r}")
    # Grouping and matching clauses.
    for clause in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", bare):
        for label in [x.strip() for x in clause.split(",") if x.strip()]:
            if label not in allowed:
                problem(f"{where}: label {label!r} is not on any metric of the expression")


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def check_dashboard(catalogue, in_lib):
    """Structure checks; returns (where, expr) for every dashboard expression."""
    try:
        dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        problem(f"{DASHBOARD}: not valid JSON: {e}")
        return []
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        problem("dashboard: schemaVersion missing or older than 36")
    for key in ("title", "uid", "panels", "templating"):
        if key not in dash:
            problem(f"dashboard: missing {key}")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds_var = variables.get("DS_PROMETHEUS")
    if not ds_var or ds_var.get("type") != "datasource" or ds_var.get("query") != "prometheus":
        problem("dashboard: needs a datasource variable DS_PROMETHEUS of type prometheus")
    for name in ("job", "instance"):
        if name not in variables or variables[name].get("type") != "query":
            problem(f"dashboard: missing query variable {name}")
    exprs = []
    for name, v in variables.items():
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.fullmatch(r"label_values\((.*),\s*([a-z_]+)\)", q or "")
            if not m:
                problem(f"dashboard variable {name}: expected label_values(selector, label), got {q!r}")
            else:
                exprs.append((f"variable {name}", m.group(1)))
    ids = set()
    occupied = {}
    for p in walk_panels(dash.get("panels", [])):
        title = p.get("title", "?")
        pid = p.get("id")
        if pid in ids:
            problem(f"panel {title!r}: duplicate id {pid}")
        ids.add(pid)
        g = p.get("gridPos", {})
        if g.get("x", 0) + g.get("w", 0) > 24:
            problem(f"panel {title!r}: wider than the 24-column grid")
        for dx in range(g.get("w", 0)):
            for dy in range(g.get("h", 0)):
                cell = (g["x"] + dx, g["y"] + dy)
                if cell in occupied:
                    problem(f"panel {title!r} overlaps panel {occupied[cell]!r}")
                    break
                occupied[cell] = title
            else:
                continue
            break
        if p.get("type") == "row":
            continue
        ds = p.get("datasource", {})
        if ds.get("uid") != "${DS_PROMETHEUS}":
            problem(f"panel {title!r}: datasource is not ${{DS_PROMETHEUS}}")
        targets = p.get("targets", [])
        if not targets:
            problem(f"panel {title!r}: no targets")
        for t in targets:
            expr = t.get("expr", "")
            if not expr:
                problem(f"panel {title!r} target {t.get('refId')}: empty expr")
                continue
            if t.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
                problem(f"panel {title!r} target {t.get('refId')}: datasource is not ${{DS_PROMETHEUS}}")
            if 'instance=~"$instance"' not in expr or 'job=~"$job"' not in expr:
                problem(f"panel {title!r}: expression ignores the job/instance variables: {expr}")
            exprs.append((f"panel {title!r} target {t.get('refId')}", expr))
    for where, expr in exprs:
        check_expr(where, expr, catalogue, in_lib)
    return exprs


def rule_exprs():
    out = []
    for path in RULE_FILES:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for group in doc.get("groups", []):
            for rule in group.get("rules", []):
                name = rule.get("alert") or rule.get("record")
                out.append((f"{path.name} {name}", rule["expr"]))
    return out


def substitute(expr):
    for var, value in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    if "$" in expr:
        problem(f"unsubstituted Grafana variable in {expr!r}")
    return expr


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emit-rules", type=Path, help="write dashboard expressions as a rule file for promtool")
    args = parser.parse_args()

    in_lib = defined_in_lib_rs()
    for name in in_lib:
        if name not in KNOWN and name not in PENDING:
            # Histograms appear in lib.rs without suffix; anything else is new and undocumented here.
            problem(f"{name} is registered in lib.rs but unknown to deploy/check-dashboard.py: add it to KNOWN")
    for name in KNOWN:
        if name not in in_lib:
            problem(f"{name} is listed as defined but is not registered in lib.rs")
    for name, labels in in_lib.items():
        listed = KNOWN.get(name, PENDING.get(name))
        if listed is not None and listed != labels:
            problem(f"{name}: lib.rs defines labels {sorted(labels)}, this check expects {sorted(listed)}")
    landed = sorted(n for n in PENDING if n in in_lib)
    if landed:
        print(f"note: now registered in lib.rs, can move from PENDING to KNOWN: {', '.join(landed)}")
    catalogue = {**KNOWN, **PENDING, **STANDARD}

    dash_exprs = check_dashboard(catalogue, in_lib)
    for where, expr in rule_exprs():
        check_expr(where, expr, catalogue, in_lib)

    if args.emit_rules:
        rules = [{"record": f"dashboard:expr_{i}", "expr": substitute(e)} for i, (_, e) in enumerate(dash_exprs)]
        args.emit_rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-expressions", "rules": rules}]}, sort_keys=False), encoding="utf-8")
        print(f"wrote {len(rules)} dashboard expressions to {args.emit_rules}")

    if problems:
        for p in problems:
            print(f"check-dashboard: {p}", file=sys.stderr)
        return 1
    print(f"check-dashboard: {len(dash_exprs)} dashboard expressions and {len(rule_exprs())} rule expressions use known metrics and labels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
