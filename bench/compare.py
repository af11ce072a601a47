#!/usr/bin/env python3
"""Side-by-side table of a bench/vs-postfix.sh run: Postfix vs Postrider per matrix row.

Reads OUT/postfix/summary.txt and OUT/postrider/summary.txt (the one-line-per-configuration
output of the harness's run-relay.sh), OUT/postrider/probe-*.json (bench/probe.py) and
OUT/dns-cpu.txt, and prints a Markdown table. Ratios are Postrider / Postfix for rates and
Postfix / Postrider for CPU per message (so > 1 means Postrider is better in both).

usage: compare.py OUT [--warmup-m 500]
"""

import argparse
import glob
import json
import os


def parse_summary(path):
    rows = {}
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3 or "=" not in parts[1]:
                continue
            d = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
            key = (d.get("conc"), d.get("rcpts"), d.get("reuse"), "verify_msgs" in d)
            rows[key] = d
    return rows


def num(d, k):
    try:
        return float(d[k])
    except (KeyError, TypeError, ValueError):
        return None


def fmt(v, digits=0):
    if v is None:
        return "–"
    return f"{v:.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def name(key):
    conc, rcpts, reuse, verify = key
    s = f"c={conc}"
    if rcpts and rcpts != "1":
        s += f" r={rcpts}"
    if reuse == "1":
        s += " -d"
    if verify:
        s += " verify"
    return s


def probe_stats(out, warmup_m):
    """p50/p99 of data_ms over all non-warm-up smtp-source runs in probe files."""
    res = {}
    for path in sorted(glob.glob(os.path.join(out, "postrider", "probe-*.json"))):
        tag = os.path.basename(path)[len("probe-"):-len(".json")]
        with open(path) as f:
            p = json.load(f)
        vals = []
        for r in p.get("runs", []):
            if r.get("source_m") == warmup_m:
                continue
            vals.extend(r.get("data_ms_all", []))
        vals.sort()
        if vals:
            def pct(q):
                return vals[min(len(vals) - 1, int(round(q / 100 * (len(vals) - 1))))]
            res[tag] = {"samples": len(vals), "p50": pct(50), "p90": pct(90), "p99": pct(99),
                        "max": vals[-1], "errors": p.get("errors", 0)}
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--warmup-m", type=int, default=500)
    a = ap.parse_args()
    pf = parse_summary(os.path.join(a.out, "postfix", "summary.txt"))
    pr = parse_summary(os.path.join(a.out, "postrider", "summary.txt"))
    dns = {}
    dns_path = os.path.join(a.out, "dns-cpu.txt")
    if os.path.exists(dns_path):
        with open(dns_path) as f:
            for line in f:
                k, _, v = line.strip().partition(" ")
                dns[k] = v
    keys = [k for k in pf if k in pr] + [k for k in pr if k not in pf] + [k for k in pf if k not in pr]
    print("| run | n×reps | Postfix e2e msg/s | Postrider e2e msg/s | **e2e ratio** "
          "| Postfix inject msg/s | Postrider inject msg/s "
          "| Postfix CPU ms/msg | Postrider CPU ms/msg | **CPU ratio** "
          "| Postfix PSS / RSS-sum MiB | Postrider RSS MiB | other CPU % (Postfix / Postrider) "
          "| status |")
    print("| --- " * 14 + "|")
    for k in keys:
        f, r = pf.get(k, {}), pr.get(k, {})
        n = (f or r).get("n", "?")
        reps = (f or r).get("reps", "?")
        e_f, e_r = num(f, "e2e_msgs_per_s"), num(r, "e2e_msgs_per_s")
        c_f, c_r = num(f, "relay_cpu_ms_per_msg"), num(r, "relay_cpu_ms_per_msg")
        er, cr = ratio(e_r, e_f), ratio(c_f, c_r)
        status = f"{f.get('status', '–')} / {r.get('status', '–')}"
        if k[3]:
            status += (f"; verify Postfix {f.get('verify_msgs')}/{f.get('verify_rcpts')}/"
                       f"{f.get('verify_unique_msgid')}, Postrider {r.get('verify_msgs')}/"
                       f"{r.get('verify_rcpts')}/{r.get('verify_unique_msgid')} (txns/rcpts/ids)")
        print(f"| {name(k)} | {n}×{reps} | {fmt(e_f)} | {fmt(e_r)} | **{fmt(er, 2)}×** "
              f"| {fmt(num(f, 'inject_msgs_per_s'))} | {fmt(num(r, 'inject_msgs_per_s'))} "
              f"| {fmt(c_f, 2)} | {fmt(c_r, 2)} | **{fmt(cr, 2)}×** "
              f"| {fmt(num(f, 'relay_pss_peak_mib'))} / {fmt(num(f, 'relay_rss_peak_mib'))} "
              f"| {fmt(num(r, 'relay_rss_peak_mib'))} "
              f"| {fmt(num(f, 'other_cpu_pct'))} / {fmt(num(r, 'other_cpu_pct'))} | {status} |")
    probes = probe_stats(a.out, a.warmup_m)
    if probes:
        print()
        print("Postrider submission latency (bench/probe.py, one extra client, end of DATA → 250):")
        print()
        print("| run | samples | p50 ms | p90 ms | p99 ms | max ms | probe errors |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for tag, s in probes.items():
            print(f"| {tag} | {s['samples']} | {s['p50']:.2f} | {s['p90']:.2f} | {s['p99']:.2f} "
                  f"| {s['max']:.2f} | {s['errors']} |")
    if dns:
        print()
        print("CPU of bench/dns.py (Postrider's DNS, counted in Postrider's 'other CPU', not in its"
              " CPU/msg): " + ", ".join(f"{k} {v}" for k, v in dns.items()))


if __name__ == "__main__":
    main()
