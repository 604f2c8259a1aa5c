#!/usr/bin/env bash
# Print the path of a Go toolchain >= the pinned one: the machine's own `go` if it is recent
# enough, else the pinned release, fetched once into the cache as the Go module
# golang.org/toolchain from the Go module proxy (the very download Go's GOTOOLCHAIN
# switch makes). Any older go does the fetch; with none, Debian's golang-go is installed
# for it (the proxy is Go's built-in default, or $GOPROXY).
set -euo pipefail

GO_VERSION="${GO_VERSION:-1.26.8}"
CACHE="${KOPFVIRT_CACHE:-$HOME/.cache/kopfvirt}"
MODCACHE="$CACHE/go-toolchain"
TOOLCHAIN="$MODCACHE/golang.org/toolchain@v0.0.1-go$GO_VERSION.linux-amd64"

recent() {  # is $1 a go of at least GO_VERSION?
  local v
  v="$("$1" env GOVERSION 2>/dev/null)" || return 1
  v="${v#go}"
  [ "$(printf '%s\n%s\n' "$GO_VERSION" "$v" | sort -V | head -n1)" = "$GO_VERSION" ]
}

mine="$(command -v go || true)"
if [ -n "$mine" ] && recent "$mine"; then echo "$mine"; exit 0; fi
if [ -x "$TOOLCHAIN/bin/go" ] && recent "$TOOLCHAIN/bin/go"; then echo "$TOOLCHAIN/bin/go"; exit 0; fi

boot="$mine"
if [ -z "$boot" ]; then
  [ "$(id -u)" = 0 ] || { echo "error: no go on PATH, and installing Debian's golang-go needs root" >&2; exit 2; }
  echo "fetching Go $GO_VERSION: installing Debian's golang-go to download it" >&2
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends golang-go >&2
  boot=/usr/bin/go
fi
echo "fetching Go $GO_VERSION as the module golang.org/toolchain (about 75 MB)" >&2
mkdir -p "$MODCACHE"
(cd "$MODCACHE" && GOMODCACHE="$MODCACHE" GOFLAGS=-modcacherw GO111MODULE=on GOTOOLCHAIN=local \
  "$boot" mod download "golang.org/toolchain@v0.0.1-go$GO_VERSION.linux-amd64" >&2)
# Module files carry no modes: make the commands executable, as Go's own switch does.
chmod +x "$TOOLCHAIN"/bin/* "$TOOLCHAIN"/pkg/tool/*/*
recent "$TOOLCHAIN/bin/go" || { echo "error: $TOOLCHAIN/bin/go is not Go $GO_VERSION" >&2; exit 2; }
echo "$TOOLCHAIN/bin/go"
