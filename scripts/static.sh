#!/usr/bin/env bash
# Builds the static x86_64 binary the image ships, into target/static/leader-labeler.
# Preferred: the musl target. If it cannot be installed here (rustup needs the Rust
# distribution server, which some build machines cannot reach), falls back to a static
# glibc build (-C target-feature=+crt-static), which works in a scratch image too.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/static
mkdir -p "$out"
if scripts/deps.sh musl; then
  CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-$(command -v musl-gcc || echo gcc)} \
    cargo build --release --target x86_64-unknown-linux-musl >&2
  cp target/x86_64-unknown-linux-musl/release/leader-labeler "$out/leader-labeler"
  kind=musl
else
  echo "static: musl target unavailable; building a static glibc binary instead" >&2
  RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu >&2
  cp target/x86_64-unknown-linux-gnu/release/leader-labeler "$out/leader-labeler"
  kind="glibc, static"
fi
if ldd "$out/leader-labeler" 2>&1 | grep -q "=>"; then
  echo "static: $out/leader-labeler is dynamically linked" >&2
  exit 1
fi
echo "static binary ($kind): $out/leader-labeler ($(stat -c %s "$out/leader-labeler") bytes)"
