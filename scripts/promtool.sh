#!/usr/bin/env bash
# Checks the alerting rules of deploy/monitoring/prometheusrule.yaml with the real
# promtool: `promtool check rules` on the rules, then `promtool test rules` on
# tests/monitoring/alerts_test.yaml (each alert fires on a bad series and stays silent on a
# good one). promtool reads plain rule files, not the PrometheusRule wrapper, so the
# `spec:` block (the last top-level key) is cut out and unindented into a temp dir first.
# promtool comes from Debian's prometheus package: when it is not on the PATH, the package
# is downloaded (not installed: installing it would enable and, under systemd, start a
# Prometheus server) and promtool alone is unpacked into the cache next to the control
# plane. tests/monitoring.rs runs this script and fails when it does.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1; }

cache=${LEADER_LABELER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/leader-labeler}
if have promtool; then
  promtool=$(command -v promtool)
else
  promtool=$cache/promtool/usr/bin/promtool
  if [ ! -x "$promtool" ]; then
    have apt-get && have dpkg-deb ||
      { echo "promtool: please install promtool (Debian: the prometheus package)" >&2; exit 1; }
    echo "promtool: unpacking promtool from Debian's prometheus package into $cache/promtool" >&2
    dl=$(mktemp -d)
    (cd "$dl" && apt-get download prometheus >&2) || {
      sudo=""
      [ "$(id -u)" -eq 0 ] || sudo="sudo"
      $sudo apt-get update -q >/dev/null 2>&1 || true
      (cd "$dl" && apt-get download prometheus >&2)
    } || { echo "promtool: cannot download Debian's prometheus package" >&2; exit 1; }
    mkdir -p "$cache/promtool"
    dpkg-deb -x "$dl"/prometheus_*.deb "$dl/x"
    install -D -m 0755 "$dl/x/usr/bin/promtool" "$promtool"
    rm -rf "$dl"
  fi
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Everything after `spec:`, two spaces less indented; any other top-level key after it
# would be swallowed, so refuse one.
awk '
  in_spec && /^[^ #]/ { print "promtool: a top-level key after spec: in " FILENAME > "/dev/stderr"; exit 1 }
  in_spec { sub(/^  /, ""); print }
  /^spec:[ ]*$/ { in_spec = 1 }
  END { if (!in_spec) { print "promtool: no spec: in " FILENAME > "/dev/stderr"; exit 1 } }
' deploy/monitoring/prometheusrule.yaml >"$tmp/rules.yaml"
cp tests/monitoring/alerts_test.yaml "$tmp/alerts_test.yaml"

promtool() { "$promtool" "$@"; }
promtool --version 2>&1 | head -1
promtool check rules "$tmp/rules.yaml"
promtool test rules "$tmp/alerts_test.yaml"
