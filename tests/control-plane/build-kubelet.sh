#!/usr/bin/env bash
# Builds the node's binaries from the same pinned module as the control plane, into the
# same cache: the kubelet the node tests (tests/node.rs) run, and kube-proxy and
# kube-scheduler for the traffic rig (tests/traffic.rs):
#
#   build-kubelet.sh [kubelet] [kube-proxy] [kube-scheduler]     (default: kubelet)
#   ${LEADER_LABELER_CACHE:-$HOME/.cache/leader-labeler}/kube-v1.36.3/bin/<name>
#
# Idempotent: a binary that exists is not built again. Prints the folder holding them as
# the LAST line of stdout; progress and errors go to stderr. Exits non-zero with a reason
# and a fix on failure.
#
# Why a copy of the module: the kubelet needs a few modules the pinned go.sum lacks
# (e.g. k8s.io/cri-streaming), so it is built with GOFLAGS=-mod=mod, which may add go.sum
# lines. That happens in a copy under the cache, so the committed go.mod/go.sum (which
# build.sh uses with -mod=readonly) never change. About 3 minutes for the kubelet on 2
# cores with a warm module and build cache (build.sh ran first), about 1 minute more
# each for kube-proxy and kube-scheduler.
set -euo pipefail

K8S_VERSION=v1.36.3
here=$(cd "$(dirname "$0")" && pwd)
cache=${LEADER_LABELER_CACHE:-$HOME/.cache/leader-labeler}
bin=$cache/kube-$K8S_VERSION/bin
mod=$cache/kube-$K8S_VERSION/kubelet-module

who=node-build
fail() {
  echo "node-build: ERROR: $*" >&2
  exit 1
}
# shellcheck source=go-build-env.sh
. "$here/go-build-env.sh"

wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(kubelet)
for b in "${wanted[@]}"; do
  case "$b" in
    kubelet | kube-proxy | kube-scheduler) ;;
    *) fail "unknown binary '$b': this script builds kubelet, kube-proxy and kube-scheduler" ;;
  esac
done
if all_present; then
  echo "node-build: using ${wanted[*]} in $bin" >&2
  echo "$bin"
  exit 0
fi
command -v go >/dev/null ||
  fail "'go' is not on PATH. Install Go 1.26 (https://go.dev/dl/) to build ${missing[*]}."
mkdir -p "$bin" "$mod" || fail "cannot create $bin. Set LEADER_LABELER_CACHE to a writable folder."

take_build_lock "$cache/kube-$K8S_VERSION/.build-kubelet.lock"
if all_present; then
  echo "$bin"
  exit 0
fi

go_build_env mod ""
cp "$here/go.mod" "$here/go.sum" "$mod/"
cd "$mod"
for b in "${missing[@]}"; do
  start=$(date +%s)
  echo "node-build: building $b ($K8S_VERSION) into $bin with $gov; first time only, expect 1 to 3 minutes after build.sh" >&2
  if ! go build "${jobs[@]}" -trimpath -ldflags "$ldflags" -o "$bin/$b.tmp" "k8s.io/kubernetes/cmd/$b" >&2; then
    rm -f "$bin/$b.tmp"
    fail "building $b failed (see above). The Go module proxy must be reachable for the modules the pinned go.sum lacks (GOPROXY=$(go env GOPROXY)). If the compiler or linker was killed (signal: killed), memory ran out: rerun as 'LEADER_LABELER_BUILD_JOBS=1 GOGC=25 $0 $b'."
  fi
  mv "$bin/$b.tmp" "$bin/$b"
  echo "node-build: built $b in $(($(date +%s) - start))s" >&2
  "$bin/$b" --version >&2 || fail "$bin/$b does not run"
done
echo "$bin"
