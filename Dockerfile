# syntax=docker/dockerfile:1
# packsmith's controller/CLI image: built in the official Rust image, run on distroless.
#
#   docker build -t REGISTRY/packsmith:0.1.0 .
#
# The binary is pure Rust (gix for git, rustls for TLS), so the runtime needs only glibc, libgcc
# and CA certificates: distroless/cc provides exactly that, runs as uid 65532 ("nonroot") and
# has no shell or package manager. The one program it runs is helm, which renders Helm charts
# for the lock stage as kapp-controller will at install: built here from its Go module, the
# same version and flags as the test bed's (e2e/scripts/install-tools.sh; a test keeps the two
# equal).

# helm, statically linked (CGO_ENABLED=0), with the Kubernetes version of its client modules
# stamped in as helm's own Makefile does (else `helm template` assumes Kubernetes v1.20).
FROM docker.io/library/golang:1.25-bookworm AS helm
ARG HELM_VERSION=v3.19.5
ARG HELM_K8S_MINOR=34
RUN ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" \
 && for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do \
      ldflags="$ldflags -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=${HELM_K8S_MINOR}"; \
    done \
 && CGO_ENABLED=0 GOBIN=/out go install -trimpath -ldflags "$ldflags" \
      "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
# aws-lc-sys (rustls' crypto provider) compiles C code; cmake makes its build path the
# supported one on every architecture.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
# Dependencies first, in their own layer: a change to packsmith's sources does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src e2e benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > e2e/main.rs \
 && cargo build --release --locked --bin packsmith \
 && rm -rf src e2e
COPY src ./src
# Make sure cargo sees the real sources as newer than the placeholder build.
RUN touch src/main.rs src/lib.rs \
 && mkdir -p e2e && echo 'fn main() {}' > e2e/main.rs \
 && cargo build --release --locked --bin packsmith \
 && install -D -m 0755 target/release/packsmith /out/packsmith

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/packsmith /usr/local/bin/packsmith
COPY --from=helm /out/helm /usr/local/bin/helm
# The controller's work directories; the chart and kustomize base mount an emptyDir here.
ENV PACKSMITH_CACHE_DIR=/var/cache/packsmith \
    PACKSMITH_HELM_BINARY=/usr/local/bin/helm \
    HOME=/home/nonroot
USER 65532:65532
EXPOSE 8080 9440
ENTRYPOINT ["/usr/local/bin/packsmith"]
CMD ["controller"]
