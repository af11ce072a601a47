#!/usr/bin/env bash
# API documentation of every crate builds without warnings (broken intra-doc links, bad HTML).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
