#!/usr/bin/env bash
# Crash-safety stress: kill the relay with SIGKILL under concurrent SMTP and HTTP load, with
# deliveries in flight, restart it, and check that no acknowledged message is lost and none is
# delivered twice outside the at-least-once window. Runs ITERATIONS kill/restart rounds
# (default 20) in one test; CI runs a 2-round version as part of the normal suite.
#
# usage: tests/crash-stress.sh [ITERATIONS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export POSTRIDER_CRASH_ITERATIONS=${1:-20}
cargo test --release -p postrider --test e2e crash::sigkill_under_load -- --nocapture --test-threads=1 2>&1 | grep -E "crash test:|test result|panicked|FAILED|assert"
