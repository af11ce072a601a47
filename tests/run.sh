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
cargo test --workspace --locked --no-fail-fast

for extra in tests/check-*.sh; do
  [[ -e $extra ]] || continue
  echo "== $extra"
  bash "$extra"
done
