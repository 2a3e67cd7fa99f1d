#!/usr/bin/env bash
# Installs what a build target needs and a fresh machine lacks, only when it is missing.
# Idempotent: with everything present it installs nothing and prints nothing.
#   scripts/deps.sh musl      Rust target x86_64-unknown-linux-musl; Debian musl-tools
#                             (optional: gcc also compiles ring's C code for musl)
#   scripts/deps.sh arm64     Rust target aarch64-unknown-linux-musl; Debian
#                             gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, and qemu-user
#                             unless qemu-aarch64(-static) is already there
#   scripts/deps.sh image     an image builder that makes an image index: podman, or
#                             else Debian buildah (daemonless); jq for the tarball
#   scripts/deps.sh podman    podman (and conmon) for the image check's `podman load`,
#                             unpacked from Debian's packages into a cache folder, not
#                             installed (an installed podman would become the image
#                             engine); prints that folder's podman on stdout
#   scripts/deps.sh node      the node tests' container runtime: Debian containerd (1.6,
#                             with ctr) and runc, busybox-static for the local sandbox
#                             and app image, and buildah to build that image
#   scripts/deps.sh traffic   the node's, plus pod networking for the traffic rig: the CNI
#                             reference plugins (Debian containernetworking-plugins:
#                             bridge, host-local, loopback, portmap), nftables for
#                             kube-proxy and iptables for the bridge plugin (and for
#                             kube-proxy's other mode, TRAFFIC_PROXY_MODE=iptables), conntrack for the
#                             rig's counters of dropped connections
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
    # Optional: without musl-gcc, ring's C code is compiled with plain gcc.
    have musl-gcc || (apt_install musl-tools) ||
      echo "deps: musl-tools not installed; using gcc for ring's C code" >&2
    ;;
  arm64)
    rust_target aarch64-unknown-linux-musl
    apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross
    have qemu-aarch64 || have qemu-aarch64-static || apt_install qemu-user
    ;;
  image)
    have jq || apt_install jq
    have podman || have buildah || apt_install buildah
    ;;
  podman)
    dir=${LEADER_LABELER_CACHE:-$HOME/.cache/leader-labeler}/podman
    if [ ! -x "$dir/root/usr/bin/podman" ] || [ ! -x "$dir/root/usr/bin/conmon" ]; then
      have apt-get && have dpkg || { echo "deps: the podman load check needs Debian's apt-get and dpkg" >&2; exit 1; }
      echo "deps: unpacking Debian's podman and conmon into $dir" >&2
      rm -rf "$dir" && mkdir -p "$dir/debs"
      get() { (cd "$dir/debs" && apt-get download -q podman conmon) >/dev/null 2>&1; }
      get || { apt-get update -q >/dev/null 2>&1 || true; get; } ||
        { echo "deps: apt-get download podman conmon failed" >&2; exit 1; }
      for d in "$dir"/debs/*.deb; do dpkg -x "$d" "$dir/root"; done
      printf '[engine]\nconmon_path = ["%s"]\n' "$dir/root/usr/bin/conmon" >"$dir/containers.conf"
    fi
    echo "$dir/root/usr/bin/podman"
    ;;
  node)
    if have containerd && have ctr && have runc && [ -x /bin/busybox ] && have buildah; then
      exit 0
    fi
    apt_install containerd runc busybox-static buildah
    ;;
  traffic)
    "$0" node
    if [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && have iptables-restore && have nft && have conntrack; then
      exit 0
    fi
    apt_install containernetworking-plugins iptables nftables conntrack
    ;;
  *)
    echo "usage: $0 musl|arm64|image|podman|node|traffic" >&2
    exit 2
    ;;
esac
