#!/usr/bin/env bash
# Builds the kubelet the node tests (tests/node.rs) run, from the same pinned module as
# the control plane, into the same cache:
#
#   ${LEADER_LABELER_CACHE:-$HOME/.cache/leader-labeler}/kube-v1.36.3/bin/kubelet
#
# Idempotent: when the binary exists nothing is built. Prints the folder holding it as
# the LAST line of stdout; progress and errors go to stderr. Exits non-zero with a reason
# and a fix on failure.
#
# Why a copy of the module: the kubelet needs a few modules the pinned go.sum lacks
# (e.g. k8s.io/cri-streaming), so it is built with GOFLAGS=-mod=mod, which may add go.sum
# lines. That happens in a copy under the cache, so the committed go.mod/go.sum (which
# build.sh uses with -mod=readonly) never change. About 3 minutes on 2 cores with a warm
# module and build cache (build.sh ran first).
set -euo pipefail

K8S_VERSION=v1.36.3
here=$(cd "$(dirname "$0")" && pwd)
cache=${LEADER_LABELER_CACHE:-$HOME/.cache/leader-labeler}
bin=$cache/kube-$K8S_VERSION/bin
mod=$cache/kube-$K8S_VERSION/kubelet-module

who=kubelet
fail() {
  echo "kubelet: ERROR: $*" >&2
  exit 1
}
# shellcheck source=go-build-env.sh
. "$here/go-build-env.sh"

if [ -x "$bin/kubelet" ]; then
  echo "kubelet: using $bin/kubelet" >&2
  echo "$bin"
  exit 0
fi
command -v go >/dev/null ||
  fail "'go' is not on PATH. Install Go 1.26 (https://go.dev/dl/) to build the kubelet."
mkdir -p "$bin" "$mod" || fail "cannot create $bin. Set LEADER_LABELER_CACHE to a writable folder."

take_build_lock "$cache/kube-$K8S_VERSION/.build-kubelet.lock"
if [ -x "$bin/kubelet" ]; then
  echo "$bin"
  exit 0
fi

go_build_env mod ""
cp "$here/go.mod" "$here/go.sum" "$mod/"
cd "$mod"
start=$(date +%s)
echo "kubelet: building kubelet ($K8S_VERSION) into $bin with $gov; first time only, expect about 3 minutes after build.sh" >&2
if ! go build "${jobs[@]}" -trimpath -ldflags "$ldflags" -o "$bin/kubelet.tmp" k8s.io/kubernetes/cmd/kubelet >&2; then
  rm -f "$bin/kubelet.tmp"
  fail "building the kubelet failed (see above). The Go module proxy must be reachable for the modules the pinned go.sum lacks (GOPROXY=$(go env GOPROXY)). If the compiler or linker was killed (signal: killed), memory ran out: rerun as 'LEADER_LABELER_BUILD_JOBS=1 GOGC=25 $0'."
fi
mv "$bin/kubelet.tmp" "$bin/kubelet"
echo "kubelet: built in $(($(date +%s) - start))s" >&2
"$bin/kubelet" --version >&2 || fail "$bin/kubelet does not run"
echo "$bin"
