#!/usr/bin/env bash
# Lints every crate and test target; any warning fails the run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo clippy --workspace --all-targets --locked -- -D warnings
