#!/usr/bin/env bash
# `make release`: a deployable dev release tarball of boshcpi from a fresh clone.
#
#   1. the CPython source blob: $PYTHON_TARBALL if set (e.g. python.org's Python-3.11.x.tgz), else the
#      upstream tarball from Debian's source archive (`apt-get source --download-only python3.11`);
#   2. `bosh create-release --force --tarball` in a scratch copy of the release tree, so the clone's
#      config/blobs.yml stays untouched.
#
# Idempotent: blobs are cached under .cache/release (ignored by git); the tarball goes to
# dist/boshcpi-dev.tgz (or $BOSHCPI_RELEASE_TARBALL). Prints the tarball's path on stdout.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${BOSHCPI_RELEASE_CACHE:-$ROOT/.cache/release}
TARBALL=${BOSHCPI_RELEASE_TARBALL:-$ROOT/dist/boshcpi-dev.tgz}
PYTHON=${PYTHON:-python3}
say() { echo "release: $*" >&2; }

find_tool() {  # NAME ENVVAR: $ENVVAR, then PATH, then ../shared/tools beside the clone or its origin
  local name=$1 var=$2 origin
  if [ -n "${!var:-}" ]; then echo "${!var}"; return; fi
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
  if [ -x "$ROOT/../shared/tools/$name" ]; then echo "$ROOT/../shared/tools/$name"; return; fi
  origin=$(git -C "$ROOT" config --get remote.origin.url 2>/dev/null || true)
  if [ -n "$origin" ] && [ -x "$origin/../shared/tools/$name" ]; then echo "$origin/../shared/tools/$name"; return; fi
  return 1
}

BOSH=$(find_tool bosh BOSH_CLI) || { say "no bosh CLI: set BOSH_CLI, put bosh on PATH or ../shared/tools/bosh"; exit 1; }
mkdir -p "$CACHE" "$(dirname "$TARBALL")"

# ---- 1. CPython source ---------------------------------------------------------------------
# apt with a source list and state of its own under $CACHE/apt: one deb-src entry for bookworm main,
# with the URI and Signed-By of the machine's own Debian source (scripts/aptsource.py). The machine's
# apt sources are never written: a deb-src line added beside a deb822 source that carries Signed-By
# makes every apt-get there fail ("Conflicting values set for option Signed-By").
APT_ETC=${BOSHCPI_APT_ETC:-/etc/apt}
apt_private() {
  local d="$CACHE/apt"
  mkdir -p "$d/sources.list.d" "$d/lists/partial" "$d/cache/archives/partial"
  if [ ! -s "$d/sources.list.d/boshcpi-src.sources" ]; then
    "$PYTHON" "$ROOT/scripts/aptsource.py" "$APT_ETC" > "$d/sources.list.d/boshcpi-src.sources.tmp" \
      || { say "cannot find the machine's Debian source for bookworm main in $APT_ETC; set PYTHON_TARBALL"; exit 1; }
    mv "$d/sources.list.d/boshcpi-src.sources.tmp" "$d/sources.list.d/boshcpi-src.sources"
  fi
  apt-get -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$d/sources.list.d" \
    -o Dir::State::Lists="$d/lists" -o Dir::Cache="$d/cache" -o APT::Sandbox::User=root "$@"
}

python_blob() {
  local have
  if [ -n "${PYTHON_TARBALL:-}" ]; then
    local base; base=$(basename "$PYTHON_TARBALL")
    case "$base" in Python-3.*.tgz|Python-3.*.tar.gz) ;; *) say "PYTHON_TARBALL must be python.org's Python-3.X.Y.tgz"; exit 1;; esac
    cp -f "$PYTHON_TARBALL" "$CACHE/$base"
    echo "$CACHE/$base"; return
  fi
  have=$(ls "$CACHE"/Python-3.11.*.tgz 2>/dev/null | head -n1 || true)
  if [ -n "$have" ]; then echo "$have"; return; fi
  apt_private update -qq || { say "apt-get update (private deb-src list) failed"; exit 1; }
  local tmp; tmp=$(mktemp -d "$CACHE/apt-XXXXXX")
  (cd "$tmp" && apt_private source --download-only python3.11 >/dev/null 2>&1) \
    || { rm -rf "$tmp"; say "apt-get source python3.11 failed"; exit 1; }
  local orig; orig=$(ls "$tmp"/python3.11_*.orig.tar.* | head -n1)
  local version; version=$(basename "$orig" | sed -E 's/^python3\.11_([0-9.]+)\.orig\.tar\..*$/\1/')
  # The orig tarball is the upstream release (top folder Python-<version>/): keep python.org's name.
  case "$orig" in
    *.tar.gz) mv "$orig" "$CACHE/Python-$version.tgz" ;;
    *) mkdir "$tmp/x" && tar -xf "$orig" -C "$tmp/x" && tar -czf "$CACHE/Python-$version.tgz" -C "$tmp/x" . ;;
  esac
  rm -rf "$tmp"
  echo "$CACHE/Python-$version.tgz"
}

if [ "${1:-}" = python-source-uris ]; then  # what would be fetched, and from where (tests)
  apt_private update -qq && apt_private source --print-uris python3.11
  exit
fi
PY_TGZ=$(python_blob)
say "python source: $(basename "$PY_TGZ")"

# ---- 2. create-release in a scratch copy -------------------------------------------------------
TREE="$CACHE/tree"
rm -rf "$TREE"
mkdir -p "$TREE"
(cd "$ROOT" && git ls-files -co --exclude-standard -- config jobs packages src) \
  | (cd "$ROOT" && tar -cf - -T -) | tar -xf - -C "$TREE"
# Release version: the clone's commit (dirty trees say so), so two tarballs never share a version.
rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git -C "$ROOT" status --porcelain -- config jobs packages src 2>/dev/null)" ] || rev="$rev.dirty"
export HOME=${BOSHCPI_BOSH_HOME:-$CACHE/home}
mkdir -p "$HOME"
"$BOSH" add-blob --dir "$TREE" "$PY_TGZ" "python3/$(basename "$PY_TGZ")" >/dev/null
start=$(date +%s)
"$BOSH" create-release --dir "$TREE" --force --name boshcpi --version "0+dev.$rev.$(date +%s)" \
  --tarball "$TARBALL" >&2
say "built $(basename "$TARBALL") in $(( $(date +%s) - start ))s"
echo "$TARBALL"
