#!/usr/bin/env bash
# Builds the real control plane the end-to-end tests run against: etcd, kube-apiserver and
# kube-controller-manager, from the Go modules pinned in this folder's go.mod/go.sum, into
# a cache outside the source tree:
#
#   ${LEADER_LABELER_CACHE:-$HOME/.cache/leader-labeler}/kube-v1.36.3/bin/
#
# Idempotent: when the binaries exist nothing is built. If KUBEBUILDER_ASSETS names a
# folder holding etcd and kube-apiserver (the envtest convention), that folder is used and
# nothing is built.
#
# Prints the folder holding the binaries as the LAST line of stdout; progress and errors
# go to stderr. Exits non-zero with a reason and a fix on failure.
#
# Needs only Go (1.26, GOTOOLCHAIN=local) and the Go module proxy. A cold build takes
# about 10 to 25 minutes on 2 cores and about 1 GB of module cache; see README.md.
set -euo pipefail

K8S_VERSION=v1.36.3
here=$(cd "$(dirname "$0")" && pwd)
cache=${LEADER_LABELER_CACHE:-$HOME/.cache/leader-labeler}
bin=$cache/kube-$K8S_VERSION/bin
wanted=(etcd kube-apiserver kube-controller-manager)

who=control-plane
fail() {
  echo "control-plane: ERROR: $*" >&2
  exit 1
}
# shellcheck source=go-build-env.sh
. "$here/go-build-env.sh"

if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
  for b in etcd kube-apiserver; do
    [ -x "$KUBEBUILDER_ASSETS/$b" ] ||
      fail "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS has no executable '$b'. Point it at a folder with etcd and kube-apiserver (e.g. from setup-envtest), or unset it to build them from Go modules."
  done
  echo "control-plane: using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS" >&2
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

if all_present; then
  echo "control-plane: using $bin" >&2
  echo "$bin"
  exit 0
fi

command -v go >/dev/null ||
  fail "'go' is not on PATH. Install Go 1.26 (https://go.dev/dl/) to build ${missing[*]}, or set KUBEBUILDER_ASSETS to a folder with prebuilt etcd and kube-apiserver."
mkdir -p "$bin" || fail "cannot create $bin. Set LEADER_LABELER_CACHE to a writable folder."

# Two test binaries (or `make test` and `make demo`) may start at once: one builds, the
# others wait for it and then find the binaries.
take_build_lock "$cache/kube-$K8S_VERSION/.build.lock"
if all_present; then
  echo "$bin"
  exit 0
fi

# The pinned module graph, exactly: never upgrade, never edit go.mod here (readonly).
go_build_env readonly " Install Go 1.26, or set KUBEBUILDER_ASSETS."
cd "$here"
declare -A pkg=(
  [etcd]=go.etcd.io/etcd/server/v3
  [kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
  [kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
)
echo "control-plane: building ${missing[*]} ($K8S_VERSION) into $bin with $gov; first time only, expect 10-25 minutes" >&2
if ! go mod download >&2; then
  fail "downloading the pinned modules failed (see above). The Go module proxy must be reachable (GOPROXY=$(go env GOPROXY)); check network/proxy settings, or set KUBEBUILDER_ASSETS to a folder with prebuilt etcd and kube-apiserver."
fi
for b in "${missing[@]}"; do
  start=$(date +%s)
  echo "control-plane: building $b" >&2
  if ! go build "${jobs[@]}" -trimpath -ldflags "$ldflags" -o "$bin/$b.tmp" "${pkg[$b]}" >&2; then
    rm -f "$bin/$b.tmp"
    fail "building $b failed (see above). If the compiler or linker was killed (signal: killed), memory ran out: rerun as 'LEADER_LABELER_BUILD_JOBS=1 GOGC=25 $0'. Or set KUBEBUILDER_ASSETS to a folder with prebuilt etcd and kube-apiserver."
  fi
  mv "$bin/$b.tmp" "$bin/$b"
  echo "control-plane: built $b in $(($(date +%s) - start))s" >&2
done
"$bin/kube-apiserver" --version >&2 || fail "$bin/kube-apiserver does not run"
echo "$bin"
