# packsmith — developer entry points. `make test` is what CI runs (via .ci/run).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
E2E_STATE ?= $(CURDIR)/.e2e/state

.PHONY: test fmt-check clippy unit e2e crds build e2e-up e2e-down e2e-deps bench-push bench-lock bench-sync bench-controller

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

## bench-lock: packsmith lock vs `crane digest` x4 (kbld's stand-in) on 500 tags, local registry.
bench-lock:
	command -v crane >/dev/null || go install github.com/google/go-containerregistry/cmd/crane@v0.22.1
	$(CARGO) build --release --bin packsmith
	bash benches/lock.sh

## bench-push: bundle push/pull of 1 MiB, 50 MiB and 5,000 files, packsmith vs crane (medians).
bench-push:
	$(CARGO) build --release --bin packsmith
	bash benches/bundle_push.sh target/release/packsmith

## bench-sync: sync of a 5,000-file git repo, a .tgz and a Helm chart, cold and warm, packsmith vs
## git clone --depth 1 and curl | tar (vendir's own tools); medians. Uses PACKSMITH_E2E_ENV or a fresh bed.
bench-sync:
	$(CARGO) build --release --bin packsmith
	bash benches/sync.sh

## bench-controller: N=1,000 inline PackageSources: time until all Ready, peak/steady RSS, steady-state
## API writes and registry requests per minute, next to Flux's reference. Uses PACKSMITH_E2E_ENV or a fresh bed.
bench-controller:
	$(CARGO) build --release --bin packsmith
	bash benches/controller.sh
