#!/usr/bin/env python3
"""Postrider and Postfix side by side against receivers that answer like real ones.

A discard sink that accepts everything hides what deferrals, refusals and slow hosts cost. Here
both relays get the same load (smtp-source, N messages of SIZE bytes over CONC sessions, spread
over three destination domains, each with its own MX host on 127.0.0.11-13) and the same
answers from bench's mixed sink (postrider-bench-sink, see its --help): per recipient 90 %
accepted, 7 % `451 4.2.1`, 3 % `550 5.1.1`; the third domain's host is slow (every end of data
waits 50 ms). Bounces go to sender@bench.example, whose MX (127.0.0.14) accepts everything.

Postrider resolves the domains through bench/dns.py (DNS on the path). Postfix, whose harness
configuration does no DNS, gets the same hosts through a transport map (its relayhost is turned
off for the run; /etc/postfix/main.cf is restored afterwards).

Per relay and repetition it reports: e2e msg/s (N / time until every message got its first
answer at a receiver), relay CPU ms per message (cgroup accounting, as the harness's loadrun),
peak RSS, and the outcome counts: delivered, deferred, refused at the receivers, bounce reports
received, messages left queued; and it checks nothing was lost or sent twice (every message
answered exactly once, one bounce per refused message, the deferred ones still queued).

usage: bench/realistic.py [--n 6000] [--conc 21] [--size 4096] [--reps 1]
                          [--relays postfix,postrider] [--bin PATH] [--sink-bin PATH]
Needs root (Postfix, cgroups), the peer harness installed ($PEERS/install.sh) and a release build
of postrider and of postrider-bench-sink (built here unless --bin / --sink-bin are given).
Only loopback addresses are used.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEERS = os.environ.get("PEERS", "/work/shared/bench/peers")
sys.path.insert(0, os.path.join(PEERS, "lib"))
import loadrun  # noqa: E402  (the harness's CPU/RSS accounting)

SMTP_PORT, HTTP_PORT, DNS_PORT, SINK_PORT, POSTFIX_PORT = 2527, 8027, 5357, 2626, 2525
DOMAINS = {"d1.example": "127.0.0.11", "d2.example": "127.0.0.12", "d3.example": "127.0.0.13"}
BOUNCE_DOMAIN, BOUNCE_HOST = "bench.example", "127.0.0.14"
SLOW_HOST = "127.0.0.13"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def wait_port(port, host="127.0.0.1", timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
        if f"{host}:{port}" in out:
            return True
        time.sleep(0.1)
    return False


def stop(proc, sig=signal.SIGTERM, timeout=30):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class MixedSink:
    """The mixed receivers, fresh for every run; their counts come from the status file."""

    def __init__(self, binary, workdir):
        self.status = os.path.join(workdir, "sink-status.json")
        hosts = [f"{ip}" for d, ip in DOMAINS.items() if ip != SLOW_HOST]
        args = [binary, "--port", str(SINK_PORT), "--status", self.status]
        for ip in hosts:
            args += ["--host", ip]
        args += ["--host", f"{SLOW_HOST}:slow=50ms", "--host", f"{BOUNCE_HOST}:accept-all"]
        self.proc = subprocess.Popen(args, stderr=open(os.path.join(workdir, "sink.log"), "a"))
        for ip in list(DOMAINS.values()) + [BOUNCE_HOST]:
            if not wait_port(SINK_PORT, ip):
                raise RuntimeError(f"sink did not listen on {ip}:{SINK_PORT}")

    def counts(self):
        try:
            with open(self.status) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def answered(self):
        c = self.counts()
        return sum(sum(c.get(ip, {}).values()) for ip in DOMAINS.values())

    def close(self):
        stop(self.proc)
        return self.counts()


class Postrider:
    name = "postrider"

    def __init__(self, binary, workdir):
        self.data = os.path.join("/var/tmp", "postrider-realistic-data")
        shutil.rmtree(self.data, ignore_errors=True)
        with open(os.path.join(HERE, "postrider-bench.toml")) as f:
            conf = f.read()
        conf = conf[: conf.index("\n[[routes]]")]  # DNS on the path
        for k, v in {"DATA_DIR": self.data, "SMTP_PORT": SMTP_PORT, "HTTP_PORT": HTTP_PORT,
                     "DNS_PORT": DNS_PORT, "SINK_PORT": SINK_PORT, "LOG_LEVEL": "info"}.items():
            conf = conf.replace(f"@{k}@", str(v))
        path = os.path.join(workdir, "postrider.toml")
        with open(path, "w") as f:
            f.write(conf)
        self.proc = subprocess.Popen([binary, "serve", "--config", path],
                                     stdout=open(os.path.join(workdir, "postrider.log"), "a"),
                                     stderr=subprocess.STDOUT)
        if not wait_port(SMTP_PORT):
            raise RuntimeError("postrider did not start")
        self.port, self.roots = SMTP_PORT, [self.proc.pid]

    def queued(self):
        body = urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/metrics", timeout=5).read().decode()
        m = re.search(r"^postrider_queue_messages (\S+)$", body, re.M)
        return int(float(m.group(1))) if m else -1

    def close(self):
        stop(self.proc, timeout=35)
        shutil.rmtree(self.data, ignore_errors=True)


class Postfix:
    name = "postfix"
    MAIN_CF = "/etc/postfix/main.cf"

    def __init__(self, workdir):
        self.backup = os.path.join(workdir, "main.cf.orig")
        shutil.copy2(self.MAIN_CF, self.backup)
        transport = ", ".join(f"{d}=smtp:[{ip}]:{SINK_PORT}" for d, ip in DOMAINS.items())
        transport += f", {BOUNCE_DOMAIN}=smtp:[{BOUNCE_HOST}]:{SINK_PORT}"
        subprocess.run(["postconf", "-e", "relayhost =", f"transport_maps = inline:{{ {transport} }}"], check=True)
        subprocess.run(["postsuper", "-d", "ALL"], capture_output=True)
        subprocess.run(["postfix", "start"], capture_output=True, check=True)
        if not wait_port(POSTFIX_PORT):
            raise RuntimeError("postfix did not start")
        with open("/var/spool/postfix/pid/master.pid") as f:
            self.roots = [int(f.read().strip())]
        self.port = POSTFIX_PORT

    def queued(self):
        out = subprocess.run(["postqueue", "-j"], capture_output=True, text=True).stdout
        return len([line for line in out.splitlines() if line.strip()])

    def close(self):
        subprocess.run(["postfix", "stop"], capture_output=True)
        time.sleep(1)
        subprocess.run(["postsuper", "-d", "ALL"], capture_output=True)
        shutil.copy2(self.backup, self.MAIN_CF)


def inject(port, n, conc, size):
    """Three smtp-source processes, one per domain, started together; -N numbers recipients."""
    per, sessions = n // len(DOMAINS), max(1, conc // len(DOMAINS))
    procs = []
    for domain in DOMAINS:
        procs.append(subprocess.Popen(
            ["smtp-source", "-s", str(sessions), "-m", str(per), "-l", str(size), "-N",
             "-f", f"sender@{BOUNCE_DOMAIN}", "-t", f"rcpt@{domain}", "-M", "client.bench.example",
             f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    return procs, per * len(DOMAINS)


def one_run(relay_factory, sink_bin, args, workdir):
    sink = MixedSink(sink_bin, workdir)
    relay = relay_factory()
    result = {"relay": relay.name}
    try:
        loadrun.wait_quiet(10, 120, relay.name)
        group = loadrun.CpuGroup(f"realistic-{relay.name}")
        group.add_tree(relay.roots)
        monitor = loadrun.Monitor(relay.roots, cgroup=group)
        monitor.start()
        cpu0, t0 = group.usage_s(), time.time()
        procs, n = inject(relay.port, args.n, args.conc, args.size)
        inject_s = None
        last, last_move = -1, time.time()
        while True:
            answered = sink.answered()
            if inject_s is None and all(p.poll() is not None for p in procs):
                inject_s = time.time() - t0
            if answered >= n:
                break
            if answered != last:
                last, last_move = answered, time.time()
            if time.time() - last_move > 60:
                result["status"] = f"stalled at {answered}/{n}"
                break
            time.sleep(0.01)
        e2e_s = time.time() - t0
        cpu_s = group.usage_s() - cpu0
        for p in procs:
            p.wait(60)
            err = p.stderr.read().decode(errors="replace").strip()
            if p.returncode != 0 or err:
                result.setdefault("source_errors", []).append(err[-300:])
        # let the bounce reports arrive
        deadline = time.time() + 60
        while time.time() < deadline:
            c = sink.counts()
            refused = sum(c.get(ip, {}).get("refused", 0) for ip in DOMAINS.values())
            if c.get(BOUNCE_HOST, {}).get("accepted", 0) >= refused:
                break
            time.sleep(0.2)
        time.sleep(1)
        queued = relay.queued()
        monitor.stop()
        group.close()
    finally:
        relay.close()
        counts = sink.close()
    delivered = sum(counts.get(ip, {}).get("accepted", 0) for ip in DOMAINS.values())
    deferred = sum(counts.get(ip, {}).get("deferred", 0) for ip in DOMAINS.values())
    refused = sum(counts.get(ip, {}).get("refused", 0) for ip in DOMAINS.values())
    bounces = counts.get(BOUNCE_HOST, {}).get("accepted", 0)
    lost = []
    if delivered + deferred + refused != n:
        lost.append(f"receivers answered {delivered + deferred + refused} recipients for {n} messages")
    if bounces != refused:
        lost.append(f"{bounces} bounce reports for {refused} refused recipients")
    if queued != deferred:
        lost.append(f"{queued} messages queued, {deferred} deferred")
    result.update({
        "n": n, "conc": args.conc, "size": args.size,
        "inject_msgs_per_s": round(n / inject_s, 1) if inject_s else None,
        "e2e_msgs_per_s": round(n / e2e_s, 1),
        "relay_cpu_ms_per_msg": round(cpu_s * 1000 / n, 3),
        "peak_rss_mib": round(monitor.peak_rss / 1024, 1),
        "peak_pss_mib": round(monitor.peak_pss / 1024, 1),
        "delivered": delivered, "deferred": deferred, "refused": refused,
        "bounce_reports": bounces, "queued_after": queued,
        "check": "ok" if not lost else "; ".join(lost),
    })
    result.setdefault("status", "ok")
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=6000)
    ap.add_argument("--conc", type=int, default=21)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--relays", default="postfix,postrider")
    ap.add_argument("--bin", help="postrider binary (default: build target/release/postrider)")
    ap.add_argument("--sink-bin", help="postrider-bench-sink binary (default: build it)")
    ap.add_argument("--out", default=f"/tmp/postrider-bench/realistic-{time.strftime('%Y%m%d-%H%M%S')}")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (Postfix and cgroup accounting need it)")
    os.makedirs(args.out, exist_ok=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    if not args.bin or not args.sink_bin:
        log("# building postrider and postrider-bench-sink (release)")
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "postrider",
                        "-p", "postrider-testkit", "--bin", "postrider", "--bin", "postrider-bench-sink"],
                       cwd=ROOT, check=True)
    binary = args.bin or os.path.join(target, "release", "postrider")
    sink_bin = args.sink_bin or os.path.join(target, "release", "postrider-bench-sink")
    zones = [a for d, ip in list(DOMAINS.items()) + [(BOUNCE_DOMAIN, BOUNCE_HOST)] for a in ("--zone", f"{d}={ip}")]
    dns = subprocess.Popen([sys.executable, os.path.join(HERE, "dns.py"), "--listen", f"127.0.0.1:{DNS_PORT}"] + zones,
                           stderr=open(os.path.join(args.out, "dns.log"), "a"))
    results = []
    try:
        relays = args.relays.split(",")
        for rep in range(args.reps):
            order = relays if rep % 2 == 0 else list(reversed(relays))
            for name in order:
                workdir = tempfile.mkdtemp(prefix=f"{name}-", dir=args.out)
                factory = (lambda w=workdir: Postrider(binary, w)) if name == "postrider" else (lambda w=workdir: Postfix(w))
                r = one_run(factory, sink_bin, args, workdir)
                r["rep"] = rep + 1
                log(json.dumps(r))
                results.append(r)
                with open(os.path.join(args.out, "runs.jsonl"), "a") as f:
                    f.write(json.dumps(r) + "\n")
    finally:
        stop(dns)
    cols = ["relay", "rep", "e2e_msgs_per_s", "relay_cpu_ms_per_msg", "peak_rss_mib", "peak_pss_mib", "delivered",
            "deferred", "refused", "bounce_reports", "queued_after", "check"]
    print("| " + " | ".join(cols) + " |")
    print("|" + " --- |" * len(cols))
    for r in results:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return 0 if all(r["check"] == "ok" and r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
