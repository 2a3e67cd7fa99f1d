#!/usr/bin/env bash
# Builds the static x86_64 binary the image ships, into target/static/leader-labeler, and
# prints its size. Preferred: the x86_64-unknown-linux-musl target (added with rustup when
# missing); ring's C code is compiled with musl-gcc (Debian's musl-tools, installed when
# missing) or, failing that, plain gcc, which works too. If the musl target cannot be
# added (rustup needs the Rust distribution server), falls back to a static glibc build
# (-C target-feature=+crt-static), which runs in a scratch image as well.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/static
mkdir -p "$out"
if scripts/deps.sh musl; then
  # Always the same value for the same machine: cargo rebuilds ring when it changes.
  if command -v musl-gcc >/dev/null 2>&1; then cc=musl-gcc; else cc=gcc; fi
  CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-$cc} \
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
size=$(stat -c %s "$out/leader-labeler")
echo "static binary ($kind): $out/leader-labeler ($size bytes)"
# The budget the README promises, for the musl binary the image ships (a static glibc
# build is larger and only a fallback).
budget=2000000
if [ "$kind" = musl ] && [ "$size" -gt "$budget" ]; then
  echo "static: $size bytes is over the $budget-byte budget; make room first (cargo bloat --release --target x86_64-unknown-linux-musl -n 40 shows where the bytes are)" >&2
  exit 1
fi
