#!/usr/bin/env bash
# make bench: builds leader-labeler (static, as shipped), its image tarball if an engine
# is available, and the client-go baseline (pinned to the test control plane's
# Kubernetes version), then measures both on one local control plane.
#   bench/run.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."

cache=${LEADER_LABELER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/leader-labeler}
baseline=$cache/client-go-baseline-v0.36.3
if [ ! -x "$baseline" ] || [ bench/baseline/main.go -nt "$baseline" ]; then
  echo "bench: building the client-go baseline" >&2
  (cd bench/baseline && GOTOOLCHAIN=local GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$baseline" .)
fi
make --no-print-directory static >&2
make --no-print-directory image-tar >&2 || echo "bench: no image engine; image size not measured" >&2
cargo build --release --quiet
cargo run --release --quiet --example bench -- --baseline "$baseline" "$@"
# "Rolling update through a Service": the same rollouts through kube-proxy for both
# implementations, on the traffic rig (tests/traffic.rs; root, a network namespace of its
# own). Adds its rows to bench/results.json and bench/RESULTS.md.
cargo test --test traffic -- bench
