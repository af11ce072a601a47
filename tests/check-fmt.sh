#!/usr/bin/env bash
# Formatting: every crate as `cargo fmt` writes it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo fmt --all --check
