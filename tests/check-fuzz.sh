#!/usr/bin/env bash
# A 30-second fuzz smoke run of the SMTP protocol parser (tests/fuzz-smtp.sh), so a crash the
# fuzzer finds quickly fails CI. FUZZ_SECONDS overrides the length.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
FUZZ_SECONDS="${FUZZ_SECONDS:-30}" bash tests/fuzz-smtp.sh
