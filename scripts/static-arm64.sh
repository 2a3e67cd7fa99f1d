#!/usr/bin/env bash
# Cross-builds the static aarch64 musl binary and runs its --version under qemu. Installs
# what is missing (scripts/deps.sh arm64): the Rust target, Debian's gcc-aarch64-linux-gnu
# (compiles ring's C code and links) and qemu-user.
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-musl
bin=target/$target/release/leader-labeler
scripts/deps.sh arm64
export CC_aarch64_unknown_linux_musl=${CC_aarch64_unknown_linux_musl:-aarch64-linux-gnu-gcc}
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER:-aarch64-linux-gnu-gcc}
cargo build --release --target $target >&2
qemu=$(command -v qemu-aarch64 || command -v qemu-aarch64-static) ||
  { echo "static-arm64: no qemu-aarch64 (Debian: qemu-user)" >&2; exit 1; }
version=$("$qemu" "$bin" --version) || { echo "static-arm64: $bin did not run under $qemu" >&2; exit 1; }
case "$version" in
  "leader-labeler "*) ;;
  *) echo "static-arm64: unexpected --version output: $version" >&2; exit 1 ;;
esac
echo "$version (under $(basename "$qemu"))"
echo "static arm64 binary (musl): $bin ($(stat -c %s "$bin") bytes)"
