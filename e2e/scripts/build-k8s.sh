#!/usr/bin/env bash
# Builds kube-apiserver and etcd from the Go module proxy into a cache keyed by version, so the
# e2e test bed needs no download outside the package registries. A warm cache costs nothing.
#
# kube-apiserver cannot be `go install`ed (k8s.io/kubernetes' go.mod has replace directives for
# its staging modules), so a throw-away module requires k8s.io/kubernetes and pins every staging
# module to the matching v0.x release itself. The staging list is read from kubernetes' own go.mod.
#
# Prints the directory holding both binaries (KUBEBUILDER_ASSETS layout) on stdout.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.34.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.6}
CACHE=${PACKSMITH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/packsmith}
out="$CACHE/k8s-$K8S_VERSION-etcd-$ETCD_VERSION"

log() { printf 'build-k8s: %s\n' "$*" >&2; }

if [[ -x "$out/kube-apiserver" && -x "$out/etcd" ]]; then
  echo "$out"
  exit 0
fi
command -v go >/dev/null || { log "go is required to build kube-apiserver and etcd"; exit 1; }
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/packsmith-k8s-build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- etcd -------------------------------------------------------------------------------------
if [[ ! -x "$out/etcd" ]]; then
  log "building etcd $ETCD_VERSION"
  mkdir -p "$work/etcd"
  cat >"$work/etcd/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  (
    cd "$work/etcd"
    go mod init packsmith.dev/e2e/etcd >/dev/null 2>&1
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1
    go mod tidy >/dev/null 2>&1
    CGO_ENABLED=0 go build -trimpath -o "$out/etcd.tmp" .
  )
  mv "$out/etcd.tmp" "$out/etcd"
fi

# --- kube-apiserver ---------------------------------------------------------------------------
if [[ ! -x "$out/kube-apiserver" ]]; then
  log "building kube-apiserver $K8S_VERSION (a few minutes on a cold cache)"
  mkdir -p "$work/k8s"
  cd "$work/k8s"
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [[ -f "$gomod" ]] || { log "could not read go.mod of k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
  staging_version="v0.${K8S_VERSION#v1.}"
  {
    echo "module packsmith.dev/e2e/k8s"
    echo
    echo "go 1.24"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    grep -E '^\s*k8s\.io/[^ ]+ => \./staging/src/k8s\.io/' "$gomod" |
      awk -v v="$staging_version" '{ printf "replace %s => %s %s\n", $1, $1, v }'
  } >go.mod
  [[ $(grep -c '^replace' go.mod) -gt 20 ]] || { log "found too few staging modules in $gomod"; exit 1; }
  cat >tools.go <<'GO'
//go:build tools

package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
GO
  go mod tidy >/dev/null
  minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
  ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
  CGO_ENABLED=0 go build -trimpath -tags tools -ldflags "$ldflags" -o "$out/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
  mv "$out/kube-apiserver.tmp" "$out/kube-apiserver"
fi

log "cached in $out"
echo "$out"
