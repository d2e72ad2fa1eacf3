#!/usr/bin/env bash
# Provides the Kubernetes client tools that the chart/kustomize e2e test and `make demo` use:
#   helm     built from its Go module (helm.sh/helm/v3) into a cache keyed by version;
#   kubectl  the one on PATH when it is >= 1.26 (it embeds kustomize), else built from its Go
#            module (k8s.io/kubectl) into the same cache.
# A warm cache costs nothing. Prints one NAME=PATH line per tool on stdout.
#
# usage: install-tools.sh [--no-build]   (--no-build: only report; exit 1 naming what is missing)
set -euo pipefail

HELM_VERSION=${HELM_VERSION:-v3.19.5}
HELM_K8S_MINOR=34 # helm v3.19 is built on the Kubernetes v0.34 client modules
KUBECTL_VERSION=${KUBECTL_VERSION:-v0.34.2} # k8s.io/kubectl's tag for Kubernetes v1.34.2
CACHE=${PACKSMITH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/packsmith}
no_build=0
[[ ${1:-} == --no-build ]] && no_build=1

log() { printf 'install-tools: %s\n' "$*" >&2; }
missing=()

need_go() { command -v go >/dev/null || { log "go is required to build $1"; exit 1; }; }

# --- helm -------------------------------------------------------------------------------------
helm_bin="$CACHE/helm-$HELM_VERSION/helm"
if [[ ! -x $helm_bin ]]; then
  if ((no_build)); then
    missing+=("helm $HELM_VERSION (expected at $helm_bin)")
  else
    need_go helm
    log "building helm $HELM_VERSION (about 2-3 minutes on a cold cache)"
    mkdir -p "$(dirname "$helm_bin")"
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/packsmith-helm.XXXXXX")
    # GOBIN into a temporary dir, then one rename: a concurrent reader never sees half a binary.
    # The -X flags are what helm's own Makefile sets: without the Kubernetes version of its
    # client modules, `helm template` assumes Kubernetes v1.20 for .Capabilities and kubeVersion.
    ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
      ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$HELM_K8S_MINOR"
    done
    # Quiet unless it fails: `go: downloading …` lines for ~150 modules are noise in CI logs.
    CGO_ENABLED=0 GOBIN=$tmp go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
      2>"$tmp/build.log" || { cat "$tmp/build.log" >&2; exit 1; }
    mv "$tmp/helm" "$helm_bin"
    rm -rf "$tmp"
  fi
fi

# --- kubectl ----------------------------------------------------------------------------------
kubectl_ok() { # PATH -> 0 when its client minor version is >= 26
  local minor
  minor=$("$1" version --client -o json 2>/dev/null | sed -n 's/.*"minor": *"\([0-9]*\).*/\1/p' | head -n 1)
  [[ -n $minor ]] && ((minor >= 26))
}
kubectl_bin=""
if command -v kubectl >/dev/null && kubectl_ok "$(command -v kubectl)"; then
  kubectl_bin=$(command -v kubectl)
elif [[ -x "$CACHE/kubectl-$KUBECTL_VERSION/kubectl" ]]; then
  kubectl_bin="$CACHE/kubectl-$KUBECTL_VERSION/kubectl"
elif ((no_build)); then
  missing+=("kubectl >= 1.26 (none on PATH, none at $CACHE/kubectl-$KUBECTL_VERSION/kubectl)")
else
  need_go kubectl
  log "building kubectl from k8s.io/kubectl $KUBECTL_VERSION (a few minutes on a cold cache)"
  out="$CACHE/kubectl-$KUBECTL_VERSION"
  mkdir -p "$out"
  work=$(mktemp -d "${TMPDIR:-/tmp}/packsmith-kubectl.XXXXXX")
  # k8s.io/kubernetes/cmd/kubectl cannot be `go install`ed (replace directives); its main is
  # these few lines over k8s.io/kubectl, which can.
  cat >"$work/main.go" <<'GO'
package main

import (
	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	command := cmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		util.CheckErr(err)
	}
}
GO
  (
    cd "$work"
    go mod init packsmith.dev/e2e/kubectl >/dev/null 2>&1
    go get "k8s.io/kubectl@$KUBECTL_VERSION" "k8s.io/component-base@$KUBECTL_VERSION" >/dev/null 2>&1
    go mod tidy >/dev/null 2>&1
    k8s="v1.${KUBECTL_VERSION#v0.}"
    ldflags="-s -w"
    for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
      ldflags+=" -X $pkg.gitVersion=$k8s -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(cut -d. -f2 <<<"$k8s")"
    done
    CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out/kubectl.tmp" . 2>build.log || { cat build.log >&2; exit 1; }
  )
  rm -rf "$work"
  mv "$out/kubectl.tmp" "$out/kubectl"
  kubectl_bin="$out/kubectl"
fi

if ((${#missing[@]})); then
  for m in "${missing[@]}"; do log "missing: $m"; done
  log "run e2e/scripts/install-deps.sh (or e2e/scripts/install-tools.sh) to build them"
  exit 1
fi
printf 'helm=%s\nkubectl=%s\n' "$helm_bin" "$kubectl_bin"
