# Pinned: the generated objects are committed and CI checks that they match
# their sources, so every machine must build them with the same compiler.
BPF2GO_CC ?= clang-19
BPF2GO_STRIP ?= llvm-strip-19
BPF2GO_CFLAGS ?= -O2 -g -Wall -Werror
export BPF2GO_CC BPF2GO_STRIP BPF2GO_CFLAGS

GO ?= go
# Generated BPF objects and their Go bindings, committed.
GENERATED = $(shell git ls-files '*_bpfel.go' '*_bpfel.o')

.PHONY: all build generate check-generate vendor-js test soak bench demo screenshot vet clean image k8s-test

all: build

build:
	$(GO) build -o bin/flowmap ./cmd/flowmap

# generate rebuilds the BPF objects and their Go bindings (needs clang-19).
generate:
	$(GO) generate ./...

# check-generate fails if the committed objects differ from their sources.
check-generate: generate
	@git diff --exit-code -- $(GENERATED) || { echo "generated BPF files differ from their sources: run 'make generate' and commit" >&2; exit 1; }

# vendor-js copies the live map's JavaScript (cytoscape, cytoscape-dagre),
# pinned in topology/web/npm/package-lock.json, from the npm registry into
# topology/web/static/vendor with its licences (needs npm). The files are
# the packages' own pre-built ones: there is no bundle step to check.
vendor-js:
	topology/web/npm/vendor.sh

vet:
	$(GO) vet ./...
	$(GO) vet -tags k8s ./internal/k8sbox/

# test runs every test. The datapath tests need root (BPF, namespaces) and
# fail, naming what is missing, without it.
# -p 1: one package at a time. The packages' sandboxes share the machine's
# network namespaces, bridges and documentation address ranges (the demo's
# outside host and the sandbox tests' both use 203.0.113.0/24), and a
# package's timing tests want the cores to themselves: run side by side,
# two packages failed each other's setup ("subnet in use").
test: vet
	$(GO) test -p 1 -count=1 -timeout 30m ./...

# soak runs the long tests under hostile traffic and faults, which make
# test leaves out (build tag soak; root, BPF, hping3): a 60 s SYN flood
# with the agent in a 256 MiB memory cgroup, 1,000 namespaces churning,
# kill -9 during drains. FLOWMAP_SOAK_FLOOD=20s shortens the flood.
soak:
	$(GO) test -tags soak -run '^TestSoak' -count=1 -v -timeout 60m ./cmd/flowmap/

# bench runs the Go benchmarks of the hot paths and measures the datapath's
# cost on real traffic between two namespaces: TCP bulk, 64-byte UDP, HTTP
# (nginx) and request-response loads, on keep-alive and short connections,
# with flowmap's agent as its own process (root, iperf3, wrk, nginx; about
# 10 minutes).
# BENCH_FLAGS go to bench/datapath (-rounds, -duration, -loads, -v, …).
BENCH_FLAGS ?=
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...
	$(GO) run ./bench/datapath $(BENCH_FLAGS)

# demo builds a sandbox of namespaces with traffic, runs the agent on it,
# prints the flows it saw and the live map's address, and keeps the shop
# running until Ctrl-C, which removes it (root). DEMO_FLAGS go to the demo:
# --duration=30s runs it for 30s, prints and exits, for scripts.
DEMO_FLAGS ?=
demo:
	$(GO) run ./cmd/flowmap demo $(DEMO_FLAGS)

# screenshot retakes docs/livemap.png, the README's picture of the live
# map: the demo's map in headless Chromium (root, chromium).
screenshot: build
	$(GO) run ./internal/screenshot -flowmap bin/flowmap -o docs/livemap.png

clean:
	rm -rf bin

# image builds flowmap's container image without a registry or a Docker
# daemon: a static binary (CGO_ENABLED=0) on an empty base, written as a tar
# archive (OCI layout and docker-archive in one) by internal/ociimage/mkimage.
#   docker load -i bin/flowmap-image.tar
#   ctr -n k8s.io images import bin/flowmap-image.tar
# IMAGE is the reference it is tagged with: flowmap:dev is what
# deploy/kubernetes names; a release is ghcr.io/flowmap/flowmap:vX.Y.Z
# (make image IMAGE=ghcr.io/flowmap/flowmap:v1.2.3 VERSION=v1.2.3).
IMAGE ?= flowmap:dev
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
image:
	mkdir -p bin
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o bin/flowmap-static ./cmd/flowmap
	$(GO) run ./internal/ociimage/mkimage -binary bin/flowmap-static -name $(IMAGE) \
		-version $(VERSION) -revision $(REVISION) -created $(SOURCE_DATE_EPOCH) -o bin/flowmap-image.tar

# k8s-test runs the tests in a real one-node Kubernetes cluster
# (internal/k8sbox, build tag k8s: make test does not run them): the
# agent's image applied with kubectl apply -k deploy/kubernetes and its
# TLS Secret, its privileges and RBAC, its API over HTTPS with a token,
# workloads of every kind named and counted, a Service split per backend,
# NodePorts under both externalTrafficPolicies, a load balancer's address,
# a Service with no ready backend, a pod address reused, Prometheus
# discovering the agent (deploy/prometheus/kubernetes.yml) for flowmap
# graph --prometheus, and a rollout of the agent to a new image. Root. The
# first run builds the cluster's binaries and Prometheus from the Go module
# proxy (about 15 minutes on two cores) into /var/cache/flowmap-k8sbox
# (FLOWMAP_K8SBOX_CACHE to move it).
k8s-test:
	$(GO) test -tags k8s -count=1 -timeout 40m -v ./internal/k8sbox/
