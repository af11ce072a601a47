#!/usr/bin/env bash
# Short fuzz run of the sans-IO SMTP protocol (crates/smtp/fuzz, target "protocol").
# Works on stable rustc through RUSTC_BOOTSTRAP; installs cargo-fuzz from crates.io if needed.
# FUZZ_SECONDS sets the run time (default 30).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
seconds="${FUZZ_SECONDS:-30}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
cd "$root/crates/smtp/fuzz"
mkdir -p corpus/protocol
RUSTC_BOOTSTRAP=1 cargo fuzz run protocol -s none corpus/protocol seeds/protocol -- -max_total_time="$seconds"
