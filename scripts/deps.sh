#!/usr/bin/env bash
# Installs what a build target needs and a fresh machine lacks, only when it is missing.
#   scripts/deps.sh musl      x86_64 musl target (+ musl-tools for ring's C code)
#   scripts/deps.sh arm64     aarch64 musl target, cross gcc, qemu-user to run it
#   scripts/deps.sh image     an image builder (podman, docker with a daemon, or buildah)
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! have apt-get; then
    echo "deps: please install ${missing[*]} (no apt-get here)" >&2
    exit 1
  fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "deps: installing ${missing[*]}" >&2
  $sudo apt-get update -q >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}" >&2
}

rust_target() {
  if ! rustup target list --installed 2>/dev/null | grep -qx "$1"; then
    echo "deps: adding Rust target $1" >&2
    rustup target add "$1" >&2
  fi
}

case "${1:-}" in
  musl)
    rust_target x86_64-unknown-linux-musl
    have musl-gcc || apt_install musl-tools
    ;;
  arm64)
    rust_target aarch64-unknown-linux-musl
    apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
    ;;
  image)
    if have podman || { have docker && docker info >/dev/null 2>&1; } || have buildah; then
      exit 0
    fi
    apt_install buildah
    ;;
  *)
    echo "usage: $0 musl|arm64|image" >&2
    exit 2
    ;;
esac
