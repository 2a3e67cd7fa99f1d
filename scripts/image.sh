#!/usr/bin/env bash
# Builds, exports, checks and pushes the multi-arch image (linux/amd64 and linux/arm64,
# one image index) with podman or buildah (daemonless: vfs storage, chroot). Docker's
# classic image store cannot hold an index; `scripts/deps.sh image` installs buildah.
#   scripts/image.sh build IMAGE          build both platforms into the index IMAGE, from
#                                         target/static/leader-labeler (make static) and
#                                         target/aarch64-unknown-linux-musl/release/leader-labeler
#                                         (make static-arm64)
#   scripts/image.sh tar IMAGE FILE       save the index as one OCI archive, which
#                                         `ctr -n k8s.io images import --all-platforms`,
#                                         `podman load` and `docker load` take
#   scripts/image.sh check IMAGE          run --version inside this machine's platform's image
#   scripts/image.sh push IMAGE           push the index to the registry named in IMAGE
#                                         (TLS_VERIFY=false for a plain-HTTP registry)
set -euo pipefail
cd "$(dirname "$0")/.."

# Platform, binary: what the index holds.
PLATFORMS=(
  "amd64 target/static/leader-labeler"
  "arm64 target/aarch64-unknown-linux-musl/release/leader-labeler"
)
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
REVISION=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)

engine() {
  if [ -n "${ENGINE:-}" ]; then echo "$ENGINE"; return; fi
  if command -v podman >/dev/null 2>&1; then echo podman; return; fi
  if command -v buildah >/dev/null 2>&1; then echo buildah; return; fi
  echo "image: no podman or buildah found (scripts/deps.sh image installs buildah)" >&2
  exit 1
}

cmd=${1:?usage: $0 build|tar|check|push IMAGE [FILE]}
image=${2:?image name needed}
case "$(engine)" in
  # Daemonless buildah works as root without a container runtime setup.
  buildah) E=(buildah --storage-driver vfs) BUILD=(bud --isolation chroot) ;;
  podman) E=(podman) BUILD=(build) ;;
  *) echo "image: ENGINE must be podman or buildah" >&2; exit 1 ;;
esac

case "$cmd" in
  build)
    # A fresh index each time: --manifest adds to an existing one, and refuses a name
    # that an image (not an index) holds, as a single-platform build left it.
    "${E[@]}" manifest rm "$image" >/dev/null 2>&1 || "${E[@]}" rmi -f "$image" >/dev/null 2>&1 || true
    for p in "${PLATFORMS[@]}"; do
      read -r arch bin <<<"$p"
      [ -x "$bin" ] || { echo "image: $bin missing: run 'make static static-arm64' first" >&2; exit 1; }
      ctx=target/image-context/$arch
      rm -rf "$ctx" && mkdir -p "$ctx"
      cp "$bin" "$ctx/leader-labeler"
      cp Containerfile "$ctx/Containerfile"
      # FROM scratch and COPY only: building for arm64 runs nothing under emulation.
      "${E[@]}" "${BUILD[@]}" --quiet --platform "linux/$arch" --manifest "$image" \
        --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" \
        -f "$ctx/Containerfile" "$ctx" >/dev/null
    done
    echo "image: built $image for linux/amd64 and linux/arm64 with ${E[0]}" >&2
    ;;
  tar)
    file=${3:?tarball path needed}
    dir=$(mktemp -d "${TMPDIR:-/tmp}/leader-labeler-oci.XXXXXX")
    trap 'rm -rf "$dir"' EXIT
    "${E[@]}" manifest push --quiet --all --format oci "$image" "oci:$dir/layout:$image"
    cd "$dir/layout"
    # containerd (ctr import, docker with the containerd image store) names the image
    # from io.containerd.image.name; podman and buildah from ref.name.
    jq -c --arg n "$image" '.manifests[0].annotations["io.containerd.image.name"] = $n' \
      index.json >index.new && mv index.new index.json
    # docker load with the classic image store reads manifest.json, one image per tag:
    # amd64 gets IMAGE, every platform IMAGE-<arch> (on arm64: docker tag IMAGE-arm64 IMAGE).
    blob() { echo "blobs/sha256/${1#sha256:}"; }
    idx=$(blob "$(jq -r '.manifests[0].digest' index.json)")
    jq -r '.manifests[] | "\(.platform.architecture) \(.digest)"' "$idx" | while read -r arch digest; do
      jq -c --arg tag "$image-$arch" --arg main "$image" --arg arch "$arch" \
        '{Config: ("blobs/sha256/" + (.config.digest | ltrimstr("sha256:"))),
          RepoTags: ((if $arch == "amd64" then [$main] else [] end) + [$tag]),
          Layers: [.layers[].digest | "blobs/sha256/" + ltrimstr("sha256:")]}' "$(blob "$digest")"
    done | jq -cs . >manifest.json
    cd - >/dev/null
    rm -f "$file"
    tar -C "$dir/layout" --owner=0 --group=0 --numeric-owner -cf "$file" oci-layout index.json manifest.json blobs
    echo "image: wrote $file ($(du -h "$file" | cut -f1), linux/amd64 and linux/arm64); load with 'ctr -n k8s.io images import --all-platforms', 'podman load -i' or 'docker load -i'" >&2
    ;;
  check)
    case "${E[0]}" in
      buildah)
        ctr=$("${E[@]}" from --quiet "$image")
        trap '"${E[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
        out=$("${E[@]}" run --isolation chroot "$ctr" -- /leader-labeler --version)
        user=$("${E[@]}" inspect --format '{{.OCIv1.Config.User}}' "$ctr")
        ;;
      podman)
        out=$(podman run --rm "$image" --version)
        user=$(podman inspect --format '{{.Config.User}}' "$image")
        ;;
    esac
    echo "$out"
    case "$out" in "leader-labeler $VERSION"*) ;; *) echo "image: unexpected --version output: $out" >&2; exit 1 ;; esac
    [ "$user" = "65532:65532" ] || { echo "image: runs as '$user', expected 65532:65532" >&2; exit 1; }
    ;;
  push)
    # Log in first (`buildah login` or `podman login`). TLS_VERIFY=false allows a
    # plain-HTTP or self-signed registry.
    tls=()
    [ "${TLS_VERIFY:-true}" = false ] && tls=(--tls-verify=false)
    "${E[@]}" manifest push "${tls[@]}" --all --format oci "$image" "docker://$image"
    echo "image: pushed the index $image (linux/amd64, linux/arm64)" >&2
    ;;
  *) echo "usage: $0 build|tar|check|push IMAGE [FILE]" >&2; exit 2 ;;
esac
