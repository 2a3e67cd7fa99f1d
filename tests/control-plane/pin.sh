#!/usr/bin/env bash
# Regenerates go.mod and go.sum of this wrapper module for a Kubernetes and an etcd
# version. Only needed to change versions; build.sh never changes the pins.
#
#   tests/control-plane/pin.sh v1.36.3 v3.6.8
#
# k8s.io/kubernetes requires its staging modules (k8s.io/api, apimachinery, apiserver,
# client-go, ...) at v0.0.0 and replaces them with folders of its own repository; those
# replaces do not apply to a module that depends on it. So every `k8s.io/NAME v0.0.0`
# requirement of the downloaded k8s.io/kubernetes go.mod is replaced here with
# `k8s.io/NAME v0.X.Y` (the staging tag for Kubernetes v1.X.Y). The rest of the graph is
# what Go's minimal version selection picks from those: nothing is upgraded (no `-u`:
# a newer k8s.io/kube-openapi needs structured-merge-diff/v7 and Go 1.27).
# Remember to update K8S_VERSION in build.sh.
set -euo pipefail

k8s=${1:?usage: pin.sh K8S_VERSION ETCD_VERSION, e.g. pin.sh v1.36.3 v3.6.8}
etcd=${2:?usage: pin.sh K8S_VERSION ETCD_VERSION}
staging=v0.${k8s#v1.}
here=$(cd "$(dirname "$0")" && pwd)
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
cd "$here"

gomod=$(go mod download -json "k8s.io/kubernetes@$k8s" |
  sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
[ -f "$gomod" ] || {
  echo "pin.sh: could not download k8s.io/kubernetes@$k8s" >&2
  exit 1
}
gover=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")
mapfile -t modules < <(grep -E '^[[:space:]]+k8s\.io/[^[:space:]]+ v0\.0\.0([[:space:]]|$)' "$gomod" | awk '{print $1}' | sort -u)
echo "pin.sh: k8s.io/kubernetes $k8s (go $gover): ${#modules[@]} staging modules -> $staging" >&2

rm -f go.mod go.sum
go mod init leader-labeler/tests/control-plane >/dev/null 2>&1
go mod edit -go="$gover"
{
  printf '\nreplace (\n'
  for m in "${modules[@]}"; do
    printf '\t%s => %s %s\n' "$m" "$m" "$staging"
  done
  printf ')\n'
} >>go.mod
go mod edit -require="k8s.io/kubernetes@$k8s" -require="go.etcd.io/etcd/server/v3@$etcd"
go mod tidy
# Keep the replace block last, after the requirements tidy wrote.
awk '/^replace \($/{r=1} r{blk=blk $0 "\n"; if ($0==")") {r=0; skip=1}; next}
     skip&&/^$/{skip=0; next} {skip=0; print} END{printf "\n%s", blk}' go.mod >go.mod.tmp
mv go.mod.tmp go.mod
echo "pin.sh: done; build with build.sh (after setting K8S_VERSION=$k8s there)" >&2
