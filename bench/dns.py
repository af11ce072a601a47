#!/usr/bin/env python3
"""Minimal authoritative DNS server on loopback for the Postrider benchmark.

Postfix's benchmark configuration sends everything to a relay host; Postrider
resolves MX records. This server gives it MX records that point at loopback,
so the same smtp-sink receives the mail and no real DNS is ever asked.

For every `--zone DOMAIN=IPV4` it answers (UDP only, Python standard library):

  DOMAIN        MX    10 mx.DOMAIN
  mx.DOMAIN     A     IPV4
  DOMAIN, mx.DOMAIN, any other type: NOERROR with no answer (and an SOA)
  any other name: NXDOMAIN (with an SOA)

Answers are tiny (never truncated), so no TCP listener is needed. Refuses to
bind anything that is not a loopback address. Runs until SIGTERM/SIGINT.

usage: dns.py --listen 127.0.0.1:5357 --zone sink.example=127.0.0.1 [--zone ...]
"""

import argparse
import ipaddress
import signal
import socket
import struct
import sys

TYPE_A, TYPE_SOA, TYPE_MX, TYPE_AAAA = 1, 6, 15, 28
CLASS_IN = 1
TTL = 300
MAX_QUERY = 512


def encode_name(name):
    """Uncompressed wire form of a domain name."""
    out = b""
    for label in name.strip(".").split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad label in {name!r}")
        out += bytes([len(raw)]) + raw
    return out + b"\x00"


def parse_question(msg):
    """(qname lower-case without the trailing dot, qtype, qclass, end offset) or None."""
    pos, labels = 12, []
    while True:
        if pos >= len(msg):
            return None
        n = msg[pos]
        pos += 1
        if n == 0:
            break
        if n & 0xC0 or pos + n > len(msg) or len(labels) > 127:
            return None  # no compression in questions; bounded
        labels.append(msg[pos:pos + n].decode("ascii", "replace").lower())
        pos += n
    if pos + 4 > len(msg):
        return None
    qtype, qclass = struct.unpack("!HH", msg[pos:pos + 4])
    return ".".join(labels), qtype, qclass, pos + 4


def rr(rtype, rdata, name=b"\xc0\x0c"):
    """One resource record; the owner defaults to a pointer at the question name."""
    return name + struct.pack("!HHIH", rtype, CLASS_IN, TTL, len(rdata)) + rdata


def soa_rr(zone):
    rdata = (encode_name("ns." + zone) + encode_name("hostmaster." + zone)
             + struct.pack("!IIIII", 1, 3600, 600, 86400, 60))
    return rr(TYPE_SOA, rdata, name=encode_name(zone))


def answer(msg, zones):
    """The response to one query, or None for garbage."""
    if len(msg) < 12:
        return None
    qid, flags, qdcount = struct.unpack("!HHH", msg[:6])
    if flags & 0x8000 or qdcount != 1:
        return None
    q = parse_question(msg)
    if q is None:
        return None
    qname, qtype, qclass, end = q
    question = msg[12:end]
    answers, authority, rcode = [], [], 0
    zone = next((z for z in zones if qname == z or qname == "mx." + z), None)
    if zone is None or qclass != CLASS_IN:
        rcode = 3  # NXDOMAIN
        if zone is None:
            # closest zone we serve, else none
            zone = next((z for z in zones if qname.endswith("." + z)), None)
    elif qname == zone and qtype == TYPE_MX:
        answers.append(rr(TYPE_MX, struct.pack("!H", 10) + encode_name("mx." + zone)))
    elif qname == "mx." + zone and qtype == TYPE_A:
        answers.append(rr(TYPE_A, socket.inet_aton(zones[zone])))
    if not answers and zone is not None:
        authority.append(soa_rr(zone))
    rd = flags & 0x0100
    out_flags = 0x8000 | 0x0400 | rd | rcode  # QR, AA, copy RD
    header = struct.pack("!HHHHHH", qid, out_flags, 1, len(answers), len(authority), 0)
    return header + question + b"".join(answers) + b"".join(authority)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", required=True, help="IP:PORT on loopback")
    ap.add_argument("--zone", action="append", required=True, help="DOMAIN=IPV4 (repeatable)")
    a = ap.parse_args()
    host, _, port = a.listen.rpartition(":")
    if not ipaddress.ip_address(host).is_loopback:
        sys.exit(f"refusing to listen on non-loopback {host}")
    zones = {}
    for z in a.zone:
        dom, _, ip = z.partition("=")
        ipaddress.IPv4Address(ip)
        zones[dom.lower().strip(".")] = ip
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, int(port)))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"dns.py: serving {', '.join(zones)} on {a.listen}", file=sys.stderr, flush=True)
    try:
        while True:
            msg, peer = sock.recvfrom(MAX_QUERY)
            try:
                resp = answer(msg, zones)
            except (ValueError, struct.error):
                resp = None
            if resp is not None:
                sock.sendto(resp, peer)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
