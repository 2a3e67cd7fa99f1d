#!/usr/bin/env bash
# Builds the real control plane the end-to-end tests run against: etcd, kube-apiserver and
# kube-controller-manager, from Go modules pinned in this folder's go.mod, into a cache
# outside the source tree. Idempotent: later runs reuse the binaries.
#
# If KUBEBUILDER_ASSETS names a folder holding etcd and kube-apiserver (the envtest
# convention), those are used instead and nothing is built.
#
# Prints the folder holding the binaries as the last line of stdout.
set -euo pipefail

K8S_VERSION=v1.36.3
here=$(cd "$(dirname "$0")" && pwd)
cache=${LEADER_LABELER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/leader-labeler}
bin=$cache/kube-$K8S_VERSION/bin
wanted=(etcd kube-apiserver kube-controller-manager)

fail() {
  echo "control-plane: $*" >&2
  exit 1
}

if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
  for b in etcd kube-apiserver; do
    [ -x "$KUBEBUILDER_ASSETS/$b" ] || fail "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS has no executable $b; unset it to build from source"
  done
  echo "control-plane: using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS" >&2
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

missing=()
for b in "${wanted[@]}"; do
  [ -x "$bin/$b" ] || missing+=("$b")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || fail "Go is needed to build ${missing[*]} (or set KUBEBUILDER_ASSETS to a folder with etcd and kube-apiserver)"
mkdir -p "$bin"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
# Two cores and a big link: keep memory in check.
export GOGC=${GOGC:-50}
cd "$here"
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
declare -A pkg=(
  [etcd]=go.etcd.io/etcd/server/v3
  [kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
  [kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
)
for b in "${missing[@]}"; do
  echo "control-plane: building $b (first time only; expect several minutes)" >&2
  start=$(date +%s)
  if ! go build -trimpath -ldflags "$ldflags" -o "$bin/$b.tmp" "${pkg[$b]}" >&2; then
    rm -f "$bin/$b.tmp"
    fail "building $b failed (see above). Check that the Go module proxy is reachable and 'go version' is 1.26 or newer; or set KUBEBUILDER_ASSETS to a folder with prebuilt etcd and kube-apiserver."
  fi
  mv "$bin/$b.tmp" "$bin/$b"
  echo "control-plane: built $b in $(( $(date +%s) - start ))s" >&2
done
echo "$bin"
