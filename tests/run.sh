#!/usr/bin/env bash
# Runs Postrider's whole test suite: unit, integration and end-to-end tests of every crate
# (real relay binary, real SMTP peers and a real DNS server, all on loopback), then the
# extra checks that live as scripts beside this file.
#
# usage: tests/run.sh            (from anywhere inside the repository)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# The web console's end-to-end test drives a real headless Chromium.
bash tests/install-chromium.sh

# The compatibility tests (tests/e2e/compat.rs) run the Postmark and Resend Python SDKs from a
# virtual environment they create: python3 must be able to make one with pip.
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "== installing python3 with venv and pip"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-pip >/dev/null
fi
# The cluster tests (tests/e2e/cluster.rs) start their own redis-server on loopback (Debian 12
# has no valkey package; the protocol is the same). The service itself is not started.
if ! command -v redis-server >/dev/null 2>&1; then
  echo "== installing redis-server"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq redis-server >/dev/null
fi
# The PROXY protocol test (tests/e2e/proxy_protocol.rs) puts a real HAProxy in front of the
# relay, started by the test itself; the service is not started.
if ! command -v haproxy >/dev/null 2>&1; then
  echo "== installing haproxy"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq haproxy >/dev/null
fi
cargo test --workspace --locked --no-fail-fast

for extra in tests/check-*.sh; do
  [[ -e $extra ]] || continue
  echo "== $extra"
  bash "$extra"
done
