#!/usr/bin/env python3
"""Submission-latency probe: times SMTP transactions while smtp-source loads a relay.

The harness (loadrun.py) measures rates, CPU and memory but no latency. This
probe is one extra SMTP client beside smtp-source's sessions. Whenever an
`smtp-source` process aimed at --relay is running, it sends one message every
--interval seconds (a new connection per message, like smtp-source without -d)
and records, per message:

  data_ms   end of DATA ("<CRLF>.<CRLF>" written) -> "250" read: the time the
            relay needs to make the message durable and answer
  total_ms  connect -> "250" after DATA (whole submission seen by a client)

Samples are tagged with the smtp-source PID and its -m value, so warm-up runs
can be left out. With no smtp-source running it sends nothing (it does not
disturb the harness's "machine quiet" wait). Messages go to --to (use a domain
that the relay delivers to a different sink than the harness's, otherwise the
harness's sink counts them). Loopback only; every wait is bounded.

On SIGTERM/SIGINT (or after --max-seconds) it writes a JSON summary to --out
and exits.

usage: probe.py --relay 127.0.0.1:2527 --to probe@probe.example --out FILE
"""

import argparse
import ipaddress
import json
import os
import signal
import socket
import sys
import time


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * (len(sorted_vals) - 1)))))
    return round(sorted_vals[k], 3)


def find_source(relay):
    """(pid, m) of a running smtp-source whose last argument is `relay`, else None."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        args = [a.decode("utf-8", "replace") for a in args if a]
        if args and os.path.basename(args[0]) == "smtp-source" and args[-1] == relay:
            m = None
            if "-m" in args:
                i = args.index("-m")
                if i + 1 < len(args) and args[i + 1].isdigit():
                    m = int(args[i + 1])
            return int(d), m
    return None


class Conn:
    def __init__(self, host, port, timeout):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def reply(self):
        """Reads one (possibly multi-line) reply; returns its code."""
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed")
                self.buf += chunk
                if len(self.buf) > 65536:
                    raise ConnectionError("reply too long")
            line, self.buf = self.buf.split(b"\r\n", 1)
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3])

    def cmd(self, text, want):
        self.sock.sendall(text.encode() + b"\r\n")
        code = self.reply()
        if code != want:
            raise ConnectionError(f"{text!r}: got {code}, wanted {want}")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def one_message(host, port, mail_from, rcpt, body, timeout, seq):
    t0 = time.perf_counter()
    c = Conn(host, port, timeout)
    try:
        if c.reply() != 220:
            raise ConnectionError("no 220")
        c.cmd("EHLO probe.bench.example", 250)
        c.cmd(f"MAIL FROM:<{mail_from}>", 250)
        c.cmd(f"RCPT TO:<{rcpt}>", 250)
        c.cmd("DATA", 354)
        head = (f"From: <{mail_from}>\r\nTo: <{rcpt}>\r\nSubject: probe {seq}\r\n"
                f"Message-Id: <probe.{os.getpid()}.{seq}@bench.example>\r\n\r\n").encode()
        c.sock.sendall(head + body + b"\r\n.\r\n")
        t_dot = time.perf_counter()
        code = c.reply()
        t_end = time.perf_counter()
        if code != 250:
            raise ConnectionError(f"end of data: {code}")
        try:
            c.sock.sendall(b"QUIT\r\n")
        except OSError:
            pass
        return (t_end - t_dot) * 1000.0, (t_end - t0) * 1000.0
    finally:
        c.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--relay", required=True, help="HOST:PORT (as given to smtp-source)")
    ap.add_argument("--to", default="probe@probe.example")
    ap.add_argument("--from", dest="mail_from", default="probe@bench.example")
    ap.add_argument("--size", type=int, default=4096, help="payload bytes")
    ap.add_argument("--interval", type=float, default=0.02, help="seconds between probes")
    ap.add_argument("--timeout", type=float, default=30.0, help="per socket operation")
    ap.add_argument("--max-seconds", type=float, default=7200.0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    host, _, port = a.relay.rpartition(":")
    if not ipaddress.ip_address(host).is_loopback:
        sys.exit(f"refusing non-loopback relay {host}")
    line = b"x" * 76 + b"\r\n"
    body = (line * (a.size // len(line) + 1))[:a.size]
    body = body[: body.rfind(b"\r\n") + 2] if b"\r\n" in body else body

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    samples, errors, seq = {}, 0, 0
    deadline = time.monotonic() + a.max_seconds
    next_at = time.monotonic()
    while not stop and time.monotonic() < deadline:
        src = find_source(a.relay)
        if src is None:
            time.sleep(0.05)
            continue
        now = time.monotonic()
        if now < next_at:
            time.sleep(next_at - now)
        next_at = max(next_at + a.interval, time.monotonic())
        seq += 1
        try:
            d, t = one_message(host, int(port), a.mail_from, a.to, body, a.timeout, seq)
            samples.setdefault(src, []).append((d, t))
        except (OSError, ConnectionError, ValueError) as e:
            errors += 1
            print(f"probe: {e}", file=sys.stderr)
    runs = []
    for (pid, m), vals in samples.items():
        data = sorted(v[0] for v in vals)
        total = sorted(v[1] for v in vals)
        runs.append({
            "source_pid": pid, "source_m": m, "samples": len(vals),
            "data_ms_p50": percentile(data, 50), "data_ms_p90": percentile(data, 90),
            "data_ms_p99": percentile(data, 99), "data_ms_max": round(data[-1], 3),
            "total_ms_p50": percentile(total, 50), "total_ms_p99": percentile(total, 99),
            "data_ms_all": [round(x, 3) for x in data],
        })
    with open(a.out, "w") as f:
        json.dump({"relay": a.relay, "errors": errors, "runs": runs}, f)
    print(f"probe: {sum(r['samples'] for r in runs)} samples, {errors} errors -> {a.out}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
