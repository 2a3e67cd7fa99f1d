#!/usr/bin/env bash
# The image check `make test` runs, callable from any test: builds the static binary and
# the scratch image, runs `--version` inside the image, checks it runs as 65532:65532,
# writes the tarball and checks it is a docker-archive that `docker load`, `podman load`
# and `ctr -n k8s.io images import` take (one tagged image, one layer holding exactly
# the binary just built). Installs buildah when no image builder is present.
#
#   scripts/image-check.sh        IMAGE and TARBALL may be set in the environment
#
# Exits non-zero with "image-check: FAILED: <reason>" on stderr when anything is wrong;
# the last stdout line is "image-check: OK ..." on success.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
IMAGE=${IMAGE:-ghcr.io/middlendian/leader-labeler:$VERSION}
TARBALL=${TARBALL:-target/leader-labeler-$VERSION.tar}
BIN=target/static/leader-labeler

fail() {
  echo "image-check: FAILED: $*" >&2
  exit 1
}

scripts/static.sh || fail "static build (scripts/static.sh) failed"
scripts/deps.sh image || fail "no image builder: install podman or buildah, or start docker"
scripts/image.sh build "$IMAGE" || fail "image build failed"
scripts/image.sh check "$IMAGE" || fail "--version did not run inside $IMAGE"
scripts/image.sh tar "$IMAGE" "$TARBALL" || fail "could not write $TARBALL"

# The tarball, read the way `docker load` and `ctr images import` read it.
[ -s "$TARBALL" ] || fail "$TARBALL is missing or empty"
manifest=$(tar -xOf "$TARBALL" manifest.json 2>/dev/null) || fail "$TARBALL has no manifest.json (not a docker-archive)"
case "$manifest" in
  *"\"RepoTags\":[\"$IMAGE\"]"*) ;;
  *) fail "$TARBALL is not tagged $IMAGE: $manifest" ;;
esac
config=$(sed -n 's/.*"Config":"\([^"]*\)".*/\1/p' <<<"$manifest")
layers=$(sed -n 's/.*"Layers":\[\([^]]*\)\].*/\1/p' <<<"$manifest" | tr -d '"' | tr ',' ' ')
[ -n "$config" ] || fail "no Config in manifest.json"
[ "$(wc -w <<<"$layers")" -eq 1 ] || fail "expected one layer, found: $layers"
cfg=$(tar -xOf "$TARBALL" "$config") || fail "config $config missing from $TARBALL"
for want in '"User":"65532:65532"' '"Entrypoint":["/leader-labeler"]' '"os":"linux"' \
  "\"org.opencontainers.image.version\":\"$VERSION\""; do
  grep -qF "$want" <<<"$cfg" || fail "image config lacks $want"
done
files=$(tar -xOf "$TARBALL" "$layers" | tar -t) || fail "layer $layers is not a tar"
[ "$files" = "leader-labeler" ] || fail "layer should hold only /leader-labeler, holds: $files"
tar -xOf "$TARBALL" "$layers" | tar -xO leader-labeler | cmp -s - "$BIN" ||
  fail "the binary in $TARBALL differs from $BIN"

echo "image-check: OK $IMAGE, $TARBALL ($(stat -c %s "$TARBALL") bytes, binary $(stat -c %s "$BIN") bytes)"
