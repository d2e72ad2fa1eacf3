# packsmith — developer entry points. `make test` is what CI runs (via .ci/run).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
E2E_STATE ?= $(CURDIR)/.e2e/state

.PHONY: test fmt-check clippy unit e2e crds build e2e-up e2e-down e2e-deps

## test: formatting, lints, unit tests and end-to-end tests on the real test bed.
test: fmt-check clippy unit e2e

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

unit:
	$(CARGO) test --lib --bins

## e2e: starts the bed (kube-apiserver, etcd, registries, upstreams), runs e2e/, stops it.
## Set PACKSMITH_E2E_ENV=$(E2E_STATE)/env to reuse a bed from `make e2e-up`.
e2e:
	$(CARGO) test --test e2e

build:
	$(CARGO) build

## crds: regenerate crds/ from the Rust types (a test fails when they drift).
crds:
	$(CARGO) run -q -- crds --output-dir crds

## e2e-deps: what the bed needs on a fresh Debian machine (apt packages, kube-apiserver, etcd).
e2e-deps:
	bash e2e/scripts/install-deps.sh

## e2e-up / e2e-down: a long-lived bed for development.
e2e-up:
	bash e2e/scripts/up.sh $(E2E_STATE)
	@echo "export PACKSMITH_E2E_ENV=$(E2E_STATE)/env KUBECONFIG=$(E2E_STATE)/kubeconfig"

e2e-down:
	bash e2e/scripts/down.sh $(E2E_STATE)
