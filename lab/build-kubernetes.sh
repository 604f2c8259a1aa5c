#!/usr/bin/env bash
# Build the lab's Kubernetes of one pinned release from the official Go modules: the
# control plane (kube-apiserver, kube-controller-manager, kube-scheduler), the nodes'
# kubelet, kube-proxy and container runtime (containerd 2.x with its runc shim and ctr) and the
# kubectl the lab and its tests use, into a cache under $HOME that every checkout (and CI)
# shares. A second run with the binaries present builds nothing.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
# crictl, the CRI's own command-line client (a separate module; this version speaks CRI v1).
CRICTL_VERSION="${CRICTL_VERSION:-v1.37.0}"
# containerd 2.x: Kubernetes 1.36 is the last release that still accepts containerd 1.x.
CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.4.2}"
CACHE="${KOPFVIRT_CACHE:-$HOME/.cache/kopfvirt}"
OUT="$CACHE/k8s/$K8S_VERSION/bin"
CONTAINERD_OUT="$CACHE/containerd/$CONTAINERD_VERSION/bin"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
CONTAINERD_BINARIES=(containerd containerd-shim-runc-v2 ctr)

have_kubernetes() { for b in "${BINARIES[@]}" crictl; do [ -x "$OUT/$b" ] || return 1; done; }
have_containerd() { for b in "${CONTAINERD_BINARIES[@]}"; do [ -x "$CONTAINERD_OUT/$b" ] || return 1; done; }
if have_kubernetes && have_containerd; then
  echo "kubernetes $K8S_VERSION, containerd $CONTAINERD_VERSION: cached"; exit 0
fi

# The machine's go if recent enough, else the pinned toolchain fetched into the cache.
GO="$(bash "$(dirname "$0")/ensure-go.sh")"
export PATH="$(dirname "$GO"):$PATH"

if ! have_containerd; then
  # Its own go.mod resolves it (no replace to rewrite); no_btrfs: no btrfs headers needed,
  # and the lab's snapshotter is overlayfs.
  echo "building containerd $CONTAINERD_VERSION (first time: about a minute)"
  mkdir -p "$CONTAINERD_OUT"
  packages=()
  for b in "${CONTAINERD_BINARIES[@]}"; do packages+=("github.com/containerd/containerd/v2/cmd/$b@$CONTAINERD_VERSION"); done
  GOFLAGS= GOTOOLCHAIN=local GOBIN="$CONTAINERD_OUT" go install -trimpath -tags no_btrfs \
    -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" "${packages[@]}"
fi
if have_kubernetes; then echo "kubernetes $K8S_VERSION: cached in $OUT"; exit 0; fi

MOD="$CACHE/k8s/$K8S_VERSION/module"
mkdir -p "$MOD" "$OUT"
cd "$MOD"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local

# The release's own go.mod replaces each staging module with ./staging/src/k8s.io/X;
# outside that tree we pin each to the matching published v0.Y.Z instead.
go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null
UPSTREAM_MOD="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.mod"
STAGING_VERSION="v0.${K8S_VERSION#v1.}"
{
  echo "module kopfvirt.lab/controlplane"
  echo
  grep -E '^go [0-9]' "$UPSTREAM_MOD"
  echo
  echo "require k8s.io/kubernetes $K8S_VERSION"
  echo
  echo "replace ("
  sed -nE 's#^[[:space:]]*(k8s\.io/[a-z0-9./-]+) => \./staging/src/k8s\.io/.*#\t\1 => \1 '"$STAGING_VERSION"'#p' "$UPSTREAM_MOD"
  echo ")"
} > go.mod
cat > tools.go <<'GO'
//go:build tools

package controlplane

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
go mod tidy -e >/dev/null 2>&1 || true
go get "k8s.io/kubernetes@$K8S_VERSION" >/dev/null

# Stamp the version so /version reports the release, as the upstream build does.
LDFLAGS="-s -w \
 -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2) \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
echo "building kubernetes $K8S_VERSION (first time: 10-20 minutes on 2 cores)"
go build -trimpath -ldflags "$LDFLAGS" -o "$OUT/" "${BINARIES[@]/#/k8s.io/kubernetes/cmd/}"
[ -x "$OUT/crictl" ] || GOFLAGS= GOBIN="$OUT" go install -trimpath "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
have_kubernetes && echo "kubernetes $K8S_VERSION: built into $OUT"
