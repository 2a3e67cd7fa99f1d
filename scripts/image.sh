#!/usr/bin/env bash
# Builds, exports, checks and pushes the image with whichever engine is here:
# podman, docker (if its daemon answers), or buildah (daemonless: vfs storage, chroot).
#   scripts/image.sh build IMAGE          build from target/.../release/leader-labeler
#   scripts/image.sh tar IMAGE FILE       save as a docker-archive tarball
#   scripts/image.sh check IMAGE          run --version inside the image
#   scripts/image.sh push IMAGE           push to the registry named in IMAGE (TLS_VERIFY=false
#                                         for a plain-HTTP registry with buildah/podman)
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=target/static/leader-labeler
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
REVISION=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)

engine() {
  if [ -n "${ENGINE:-}" ]; then echo "$ENGINE"; return; fi
  if command -v podman >/dev/null 2>&1; then echo podman; return; fi
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then echo docker; return; fi
  if command -v buildah >/dev/null 2>&1; then echo buildah; return; fi
  echo "image: no podman, docker daemon or buildah found (scripts/deps.sh image installs buildah)" >&2
  exit 1
}

# Daemonless buildah works as root without a container runtime setup.
BUILDAH=(buildah --storage-driver vfs)

cmd=${1:?usage: $0 build|tar|check|push IMAGE [FILE]}
image=${2:?image name needed}
eng=$(engine)

case "$cmd" in
  build)
    [ -x "$BIN" ] || { echo "image: $BIN missing: run 'make static' first" >&2; exit 1; }
    ctx=target/image-context
    rm -rf "$ctx" && mkdir -p "$ctx"
    cp "$BIN" "$ctx/leader-labeler"
    cp Containerfile "$ctx/Containerfile"
    args=(--build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" -f "$ctx/Containerfile" -t "$image")
    case "$eng" in
      buildah) "${BUILDAH[@]}" bud --isolation chroot --quiet "${args[@]}" "$ctx" >/dev/null ;;
      *) "$eng" build --quiet "${args[@]}" "$ctx" >/dev/null ;;
    esac
    echo "image: built $image with $eng" >&2
    ;;
  tar)
    file=${3:?tarball path needed}
    rm -f "$file"
    case "$eng" in
      buildah) "${BUILDAH[@]}" push --quiet "$image" "docker-archive:$file:$image" ;;
      podman) podman save --format docker-archive -o "$file" "$image" ;;
      docker) docker save -o "$file" "$image" ;;
    esac
    echo "image: wrote $file ($(du -h "$file" | cut -f1)); load with 'docker load -i', 'podman load -i' or 'ctr -n k8s.io images import'" >&2
    ;;
  check)
    case "$eng" in
      buildah)
        ctr=$("${BUILDAH[@]}" from --quiet "$image")
        trap '"${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
        out=$("${BUILDAH[@]}" run --isolation chroot "$ctr" -- /leader-labeler --version)
        user=$("${BUILDAH[@]}" inspect --format '{{.OCIv1.Config.User}}' "$image")
        ;;
      *)
        out=$("$eng" run --rm "$image" --version)
        user=$("$eng" inspect --format '{{.Config.User}}' "$image")
        ;;
    esac
    echo "$out"
    case "$out" in "leader-labeler $VERSION"*) ;; *) echo "image: unexpected --version output: $out" >&2; exit 1 ;; esac
    [ "$user" = "65532:65532" ] || { echo "image: runs as '$user', expected 65532:65532" >&2; exit 1; }
    ;;
  push)
    # Log in first (`buildah login`, `podman login` or `docker login`). TLS_VERIFY=false
    # allows a plain-HTTP or self-signed registry with buildah and podman; docker takes
    # that from its daemon's insecure-registries instead.
    tls=()
    [ "${TLS_VERIFY:-true}" = false ] && tls=(--tls-verify=false)
    case "$eng" in
      buildah) "${BUILDAH[@]}" push "${tls[@]}" "$image" "docker://$image" ;;
      podman) podman push "${tls[@]}" "$image" ;;
      docker) docker push "$image" ;;
    esac
    echo "image: pushed $image" >&2
    ;;
  *) echo "usage: $0 build|tar|check|push IMAGE [FILE]" >&2; exit 2 ;;
esac
