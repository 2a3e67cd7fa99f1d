#!/usr/bin/env bash
# The image check `make test` runs, callable from any test: builds both static binaries
# (amd64, and arm64 run under qemu), the two-platform image index, runs `--version`
# inside this machine's image, writes the air-gap tarball and checks it the way each
# loader reads it:
#   - its OCI layout: one index, linux/amd64 and linux/arm64, each one layer holding
#     exactly the binary built (under 2,000,000 bytes), user 65532:65532; each binary
#     taken out of the tarball runs --version (the arm64 one under qemu);
#   - `ctr -n k8s.io images import --all-platforms` into a scratch containerd: both
#     platforms, complete;
#   - `podman load` (Debian's podman, unpacked by scripts/deps.sh podman, with a scratch
#     store): this machine's platform, named IMAGE;
#   - the OCI archive for each platform, and manifest.json as docker load reads it
#     (containers/image, in a scratch store): each platform's image, by config digest.
# Installs what is missing (scripts/deps.sh arm64, image, podman, node).
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
declare -A BIN=(
  [amd64]=target/static/leader-labeler
  [arm64]=target/aarch64-unknown-linux-musl/release/leader-labeler
)
BUDGET=2000000

fail() {
  echo "image-check: FAILED: $*" >&2
  exit 1
}

scripts/static.sh || fail "static build (scripts/static.sh) failed"
scripts/static-arm64.sh || fail "static arm64 build (scripts/static-arm64.sh) failed"
scripts/deps.sh image || fail "no image builder: install podman or buildah"
scripts/deps.sh node || fail "containerd (for the ctr import check) could not be installed"
podman=$(scripts/deps.sh podman) || fail "podman (for the podman load check) could not be unpacked"
scripts/image.sh build "$IMAGE" || fail "image build failed"
scripts/image.sh check "$IMAGE" || fail "--version did not run inside $IMAGE"
scripts/image.sh tar "$IMAGE" "$TARBALL" || fail "could not write $TARBALL"

work=$(mktemp -d "${TMPDIR:-/tmp}/leader-labeler-image-check.XXXXXX")
containerd_pid=
cleanup() {
  [ -n "$containerd_pid" ] && kill "$containerd_pid" 2>/dev/null && wait "$containerd_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
qemu=$(command -v qemu-aarch64 || command -v qemu-aarch64-static) || fail "no qemu-aarch64"

# The OCI layout.
[ -s "$TARBALL" ] || fail "$TARBALL is missing or empty"
mkdir "$work/tar" && tar -xf "$TARBALL" -C "$work/tar" || fail "$TARBALL is not a tar"
cd "$work/tar"
blob() { echo "blobs/sha256/${1#sha256:}"; }
[ -f oci-layout ] || fail "no oci-layout: not an OCI archive"
[ "$(jq '.manifests | length' index.json)" = 1 ] || fail "index.json should name one image: $(cat index.json)"
[ "$(jq -r '.manifests[0].mediaType' index.json)" = application/vnd.oci.image.index.v1+json ] ||
  fail "index.json does not point at an image index: $(cat index.json)"
for a in org.opencontainers.image.ref.name io.containerd.image.name; do
  [ "$(jq -r --arg a "$a" '.manifests[0].annotations[$a]' index.json)" = "$IMAGE" ] ||
    fail "index.json's $a is not $IMAGE: $(cat index.json)"
done
idx=$(blob "$(jq -r '.manifests[0].digest' index.json)")
platforms=$(jq -r '[.manifests[].platform | "\(.os)/\(.architecture)"] | sort | join(" ")' "$idx")
[ "$platforms" = "linux/amd64 linux/arm64" ] || fail "the index holds $platforms, expected linux/amd64 linux/arm64"
declare -A CONFIG
sizes=()
for arch in amd64 arm64; do
  m=$(blob "$(jq -r --arg a "$arch" '.manifests[] | select(.platform.architecture == $a) | .digest' "$idx")")
  CONFIG[$arch]=$(jq -r .config.digest "$m")
  cfg=$(cat "$(blob "${CONFIG[$arch]}")")
  for want in '"User":"65532:65532"' '"Entrypoint":["/leader-labeler"]' '"os":"linux"' \
    "\"architecture\":\"$arch\"" "\"org.opencontainers.image.version\":\"$VERSION\""; do
    grep -qF "$want" <<<"$cfg" || fail "$arch image config lacks $want"
  done
  [ "$(jq '.layers | length' "$m")" = 1 ] || fail "$arch: expected one layer: $(cat "$m")"
  layer=$(blob "$(jq -r '.layers[0].digest' "$m")")
  case "$(jq -r '.layers[0].mediaType' "$m")" in
    *+gzip) unpack=(gzip -dc) ;;
    *.tar) unpack=(cat) ;;
    *) fail "$arch: unexpected layer type $(jq -r '.layers[0].mediaType' "$m")" ;;
  esac
  files=$("${unpack[@]}" "$layer" | tar -t) || fail "$arch layer is not a tar"
  [ "$files" = leader-labeler ] || fail "$arch layer should hold only /leader-labeler, holds: $files"
  mkdir "$work/$arch" && "${unpack[@]}" "$layer" | tar -x -C "$work/$arch"
  bin=$work/$arch/leader-labeler
  cmp -s "$bin" "$OLDPWD/${BIN[$arch]}" || fail "the $arch binary in $TARBALL differs from ${BIN[$arch]}"
  size=$(stat -c %s "$bin")
  [ "$size" -le $BUDGET ] || fail "the $arch binary is $size bytes, over the $BUDGET-byte budget"
  sizes+=("$arch $size bytes")
  if [ "$arch" = arm64 ]; then out=$("$qemu" "$bin" --version); else out=$("$bin" --version); fi ||
    fail "the $arch binary from $TARBALL did not run"
  case "$out" in "leader-labeler $VERSION"*) ;; *) fail "$arch --version said: $out" ;; esac
  echo "image-check: $arch from the tarball: $out$([ "$arch" = arm64 ] && echo " (under $(basename "$qemu"))")"
done
# docker load's manifest.json: the same images, amd64 also as IMAGE.
[ "$(jq -c '[.[] | .RepoTags]' manifest.json)" = "[[\"$IMAGE\",\"$IMAGE-amd64\"],[\"$IMAGE-arm64\"]]" ] ||
  fail "manifest.json tags: $(jq -c '[.[] | .RepoTags]' manifest.json)"
[ "$(jq -r '.[].Config' manifest.json | tr '\n' ' ')" = "$(blob "${CONFIG[amd64]}") $(blob "${CONFIG[arm64]}") " ] ||
  fail "manifest.json names other configs than the index"
cd - >/dev/null

# ctr import into a containerd of its own (no CRI: nothing runs).
mkdir -p "$work/containerd"
cat >"$work/containerd/config.toml" <<EOF
version = 2
root = "$work/containerd/root"
state = "$work/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/containerd/sock"
EOF
containerd --config "$work/containerd/config.toml" >"$work/containerd/log" 2>&1 &
containerd_pid=$!
ctr=(ctr --address "$work/containerd/sock" -n k8s.io)
for _ in $(seq 100); do "${ctr[@]}" version >/dev/null 2>&1 && break; sleep 0.1; done
"${ctr[@]}" images import --all-platforms "$TARBALL" >/dev/null ||
  fail "ctr images import --all-platforms refused $TARBALL: $(tail -3 "$work/containerd/log")"
line=$("${ctr[@]}" images check | grep -F "$IMAGE ") || fail "ctr import did not name the image $IMAGE"
grep -q "complete (2/2)" <<<"$line" || fail "ctr import is incomplete: $line"
grep -qF "linux/amd64,linux/arm64" <<<"$("${ctr[@]}" images ls | grep -F "$IMAGE ")" ||
  fail "ctr import lacks a platform: $("${ctr[@]}" images ls)"

# podman load itself, in a store of its own: this machine's platform, named IMAGE.
host=$(uname -m | sed 's/x86_64/amd64/; s/aarch64/arm64/')
P=("$podman" --storage-driver vfs --root "$work/podman" --runroot "$work/podman-run"
  --cgroup-manager cgroupfs --events-backend file)
export CONTAINERS_CONF=${podman%/root/usr/bin/podman}/containers.conf
loaded=$("${P[@]}" load -q -i "$TARBALL" 2>&1) || fail "podman load refused $TARBALL: $loaded"
grep -qF "Loaded image: $IMAGE" <<<"$loaded" || fail "podman load did not name $IMAGE: $loaded"
id=$("${P[@]}" image inspect --format '{{.Id}}' "$IMAGE") || fail "podman lost $IMAGE"
[ "sha256:$id" = "${CONFIG[$host]}" ] || fail "podman load gave $id, not the $host image"
unset CONTAINERS_CONF

# The same library (containers/image) for every platform of the OCI archive, and docker
# load's format (manifest.json entries), in a store of their own.
store=(buildah --storage-driver vfs --root "$work/store" --runroot "$work/run")
for arch in amd64 arm64; do
  id=$("${store[@]}" pull --quiet --arch "$arch" "oci-archive:$TARBALL" 2>/dev/null) ||
    fail "the OCI archive could not be loaded for $arch"
  [ "sha256:$id" = "${CONFIG[$arch]}" ] || fail "loading the OCI archive for $arch gave $id"
done
for i in 0 1; do
  arch=$([ $i = 0 ] && echo amd64 || echo arm64)
  id=$("${store[@]}" pull --quiet "docker-archive:$TARBALL:@$i" 2>/dev/null) ||
    fail "manifest.json entry $i could not be loaded"
  [ "sha256:$id" = "${CONFIG[$arch]}" ] || fail "manifest.json entry $i is $id, not the $arch image"
done
"${store[@]}" rmi -a -f >/dev/null 2>&1 || true

echo "image-check: OK $IMAGE (linux/amd64, linux/arm64), $TARBALL ($(stat -c %s "$TARBALL") bytes; binaries ${sizes[*]}); ctr import --all-platforms complete, podman load $host"
