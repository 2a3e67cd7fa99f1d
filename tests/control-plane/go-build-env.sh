# Sourced by build.sh and build-kubelet.sh: what both builds share. The caller defines
# K8S_VERSION and fail(), and names itself in $who for messages.

# Waits for (then holds, on fd 9) the lock in file $1: two test binaries may start at
# once; one builds, the other waits and then finds the binaries.
take_build_lock() {
  exec 9>"$1"
  if ! flock -n 9; then
    echo "$who: another build is running; waiting for it" >&2
    flock 9
  fi
}

# The Go environment for a build with module mode $1 (readonly or mod); sets jobs, gov
# and ldflags, and fails with $2 appended when the Go toolchain is too old.
go_build_env() {
  # No automatic toolchain download (the module needs go 1.26.0).
  export GOTOOLCHAIN=local GOFLAGS="-mod=$1 -buildvcs=false"
  # Two cores and big links: keep memory in check (GOGC=50 trades CPU for about half
  # the heap).
  export GOGC=${GOGC:-50}
  # LEADER_LABELER_BUILD_JOBS=1 builds one package at a time (slower, least memory).
  jobs=()
  [ -n "${LEADER_LABELER_BUILD_JOBS:-}" ] && jobs=(-p "$LEADER_LABELER_BUILD_JOBS")
  gov=$(go env GOVERSION)
  case "$gov" in
    go1.2[6-9]* | go1.[3-9][0-9]*) ;;
    *) fail "$gov is too old: k8s.io/kubernetes $K8S_VERSION needs Go 1.26 or newer (GOTOOLCHAIN=local is kept on purpose).$2" ;;
  esac
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
}

# Whether every binary named in $wanted is in $bin; the absent ones are left in $missing.
all_present() {
  missing=()
  for b in "${wanted[@]}"; do
    [ -x "$bin/$b" ] || missing+=("$b")
  done
  [ ${#missing[@]} -eq 0 ]
}
