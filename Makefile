# leader-labeler: build, test, ship. `make` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VERSION  := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
REGISTRY ?= ghcr.io/middlendian
IMAGE    ?= $(REGISTRY)/leader-labeler:$(VERSION)
TARBALL  ?= target/leader-labeler-$(VERSION).tar
DURATION ?= 30m
SEED     ?=
# Missing tools (Rust targets, Debian musl-tools, gcc-aarch64-linux-gnu, qemu-user,
# buildah, jq, containerd) are installed by scripts/deps.sh when a target needs them.

.PHONY: help build static static-arm64 control-plane test test-unit test-e2e test-inject test-node test-traffic check-model chaos demo image image-tar image-check docker-build docker-push bench fmt lint clean

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

build: ## Release build for this machine
	cargo build --release

static: ## Static x86_64 binary for the scratch image (musl; static glibc as fallback)
	scripts/static.sh

static-arm64: ## Static aarch64 musl binary (cross gcc), checked under qemu
	scripts/static-arm64.sh

control-plane: ## Build etcd + kube-apiserver for the tests (cached outside the tree)
	tests/control-plane/build.sh

# The node suite starts with scripts/image-check.sh (binary, image, --version in it, the
# tarball): the check `make image-check` runs, so make test does not run it twice.
# The model checker's small bound keeps a core busy for half a minute: it runs on its own,
# after the rest, so that the probe listener's 100 ms deadlines never share a core with it.
# Last, the traffic rig's short set (one rollout, one leader deletion through the
# Service's ClusterIP; about 2 minutes warm): zero failed requests, none answered by a
# non-leader outside the handover window.
test: control-plane ## Every test: unit, process, end-to-end against a real API server, a real node, image, traffic through a Service
	cargo build --examples
	cargo test -p leader-labeler-harness
	cargo test --tests -- --skip $(MODEL_SMALL)
	cargo test --lib $(MODEL_SMALL)
	cargo test --test node -- --test-threads=8 --skip $(NODE_LONG)
	cargo test --test traffic -- short

test-unit: ## Unit tests of the pure parts only (no cluster)
	cargo test --lib --test cli
	cargo test -p leader-labeler-harness

test-e2e: control-plane ## End-to-end scenarios only
	cargo test --test e2e

test-inject: control-plane ## Sidecar injection by deploy/inject/ on a real API server (make test runs it)
	cargo test --test inject

MODEL_SMALL := core::model::every_interleaving_within_the_bound_keeps_the_promises

# The node scenario that waits for the kubelet to rotate a projected token (the API
# server's shortest lifetime is 10 minutes, the kubelet renews at 80%): make test-node only.
NODE_LONG := projected_token_rotated_by_the_kubelet_keeps_working

test-node: control-plane ## Every node scenario, the 9-minute token rotation included
	cargo test --test node -- --test-threads=8

# The exhaustive check of the decision core (src/core/model): every order of three real
# cores' steps, stream deliveries, clock moves and up to two faults. `cargo test --lib`
# (and so make test) runs a small bound of the same search (1 fault, 2 and 3 sidecars).
check-model: ## Exhaustive check of the real decision core: 3 sidecars, 2 faults (about 20 min)
	MODEL_SIDECARS=3 MODEL_FAULTS=2 MODEL_FAULTS_ANYWHERE=0 MODEL_FAULTS_UNTIL=4 MODEL_THREADS=2 \
		cargo test --profile model --lib core::model::every_interleaving -- --nocapture

# One node with kube-proxy, CNI pod networking, kube-scheduler and the Deployment
# controllers, inside a network namespace the test creates; a client sends requests
# through the Service's ClusterIP during ten rollouts, a scale-down, a deletion, an
# unready app and a switchover. Results in target/traffic-results.json.
test-traffic: control-plane ## Real traffic through the Service during rollouts (needs root)
	cargo test --test traffic -- full

chaos: control-plane ## Seeded chaos run: make chaos DURATION=30m [SEED=n] (make test runs 3 minutes)
	CHAOS_DURATION=$(DURATION) CHAOS_SEED=$(SEED) cargo test --test chaos -- --nocapture

demo: control-plane ## Live demo: local control plane, three pods, handovers measured
	cargo build --release --quiet
	cargo run --release --quiet --example demo

image: static static-arm64 ## Build the image index: linux/amd64 and linux/arm64 (podman or buildah)
	@scripts/deps.sh image
	scripts/image.sh build $(IMAGE)

image-tar: image ## One OCI archive with both platforms for air-gapped clusters (ctr, podman, docker load)
	scripts/image.sh tar $(IMAGE) $(TARBALL)

image-check: ## Build binaries, index and tarball; run each platform's binary from it (arm64 under qemu); ctr import
	IMAGE=$(IMAGE) TARBALL=$(TARBALL) scripts/image-check.sh

docker-build: image ## Build the image (the name the README uses; same as image)

docker-push: image ## Push the image index (both platforms); set REGISTRY=your-registry.io/your-org
	scripts/image.sh push $(IMAGE)

bench: control-plane ## Benchmarks: leader-labeler side by side with a client-go sidecar
	bench/run.sh

fmt: ## Format the code
	cargo fmt --all

# --workspace: the harness crate (tests/harness) too. --all-targets leaves out the test =
# false targets (node, traffic): named here.
lint: ## rustfmt check and clippy with warnings as errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --test node --test traffic -- -D warnings

clean: ## Remove build output
	cargo clean
