# mapguard — build, demo, tests and benchmarks.
#
#   make demo    build prerequisites + build + the enforcer catching a racy Go
#                program and the webhook judging sample Pods (needs root for BPF)
#   make demo-cluster  mapguard installed on a real one-node cluster, killing
#                a racing Pod, narrated (root)
#   make test    test prerequisites + lint + every test (what CI runs)
#   make images  the three container images, built here without a registry
#                (root; see "Container images" below)
#   make bench   every benchmark (bench-enforcer, bench-webhook, bench-policy);
#                bench-enforcer also installs wrk, etcd and Caddy (bench-deps)
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
GO_PROGS ?= $(CURDIR)/target/go-progs
export GO_PROGS
export MAPGUARD_GO_PROGS := $(GO_PROGS)

.PHONY: all build-deps deps build release release-bins go-progs lint test test-rust policy-test demo demo-cluster \
        bench bench-deps bench-enforcer bench-webhook bench-policy clean

all: build

# What building and the demo need: the pinned nightly, bpf-linker, one Go.
build-deps:
	bash .ci/install-build.sh

# Everything the tests need on top: the Go toolchains of every release, the
# Kubernetes binaries, Prometheus.
deps:
	bash .ci/install-deps.sh

build: build-deps
	$(CARGO) build

release: build-deps
	$(CARGO) build --release

# The release binaries the demo runs and the images hold, and nothing else
# (one package set, so the demo and the images share one build).
release-bins: build-deps
	$(CARGO) build --release -p mapguard-enforcer -p mapguard-agent -p mapguard-webhook -p mapguard-certs-gen -p mapguard-cli

go-progs: deps
	bash tests/go/build.sh $(GO_PROGS)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# images: the end-to-end test (testenv/tests/e2e.rs) installs them on a real node.
test-rust: go-progs images
	$(CARGO) test --no-fail-fast

policy-test: build
	$(CARGO) run -q -p mapguard-cli --bin mapguard -- policy test policies/

test: deps lint images-check images-smoke test-rust policy-test

# The enforcer first (built, then shown), then the webhook, certs-gen and the
# CI command: the `demo` profile (Cargo.toml), built by scripts/demo.sh.
demo: build-deps
	CARGO=$(CARGO) bash scripts/demo.sh

# mapguard on a real one-node cluster (scripts/cluster.sh), narrated:
# `kubectl apply -k manifests/` with the images built here, a racing Go
# Deployment killed in a mapguard.io/mode=kill namespace (record, Event,
# `kubectl mapguard audit`), the same left alone elsewhere, and what a
# missing webhook blocks (testenv/tests/e2e.rs).
demo-cluster: go-progs images
	$(CARGO) build -p kubectl-mapguard
	CI=true $(CARGO) test -p mapguard-testenv --test e2e -- --nocapture

# A real one-node Kubernetes (root): etcd, the control plane, a kubelet,
# containerd, runc and CNI in a network namespace of their own
# (scripts/cluster.sh). cluster-up prints only export lines on stdout, the
# last one `export KUBECONFIG=PATH` (eval "$$(make -s cluster-up)"; installer
# output goes to stderr); a second call finds the cluster running and prints
# them again. cluster-down stops exactly what it started and removes it.
.PHONY: cluster-install cluster-up cluster-down
cluster-install:
	bash .ci/install-node.sh

cluster-up:
	@bash .ci/install-node.sh >&2
	@bash scripts/cluster.sh up

cluster-down:
	@bash scripts/cluster.sh down

# Container images (root, no registry, no container engine): buildah
# assembles target/images/mapguard-{webhook,agent,certs-gen}.tar (OCI
# archives tagged as manifests/ name them) from Debian's glibc and the
# release binaries; with MAPGUARD_CONTAINERD_ADDRESS=SOCKET they are also
# imported into that containerd's k8s.io namespace. images-check: each agrees
# with its Containerfile and manifests/. images-smoke: each runs once in a
# throwaway containerd (ctr image import, ctr run). Both are part of `make test`.
.PHONY: images images-check images-smoke
images: release-bins
	bash .ci/install-images.sh
	bash scripts/images.sh

images-check: images
	python3 scripts/images-check.py

images-smoke: release-bins
	bash .ci/install-images.sh --containerd
	bash scripts/images-smoke.sh


bench: bench-enforcer bench-webhook bench-policy

# wrk and the real Go services of the real_service benchmark (not needed by
# `make test`): etcd and Caddy built from their Go modules, plain and -race.
bench-deps: deps
	bash .ci/install-bench.sh

bench-enforcer: release go-progs bench-deps
	$(CARGO) bench -p mapguard-enforcer --bench probe_cost
	$(CARGO) bench -p mapguard-enforcer --bench real_service

bench-webhook: release
	$(CARGO) bench -p mapguard-webhook --bench load

bench-policy: build-deps
	$(CARGO) bench -p mapguard-policy --bench eval

clean:
	$(CARGO) clean
	rm -rf $(GO_PROGS)
