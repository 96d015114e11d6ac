# Pinned: the generated objects are committed and CI checks that they match
# their sources, so every machine must build them with the same compiler.
BPF2GO_CC ?= clang-19
BPF2GO_STRIP ?= llvm-strip-19
BPF2GO_CFLAGS ?= -O2 -g -Wall -Werror
export BPF2GO_CC BPF2GO_STRIP BPF2GO_CFLAGS

GO ?= go
# Generated BPF objects and their Go bindings, committed.
GENERATED = $(shell git ls-files '*_bpfel.go' '*_bpfel.o')

.PHONY: all build generate check-generate vendor-js test bench demo vet clean

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

# test runs every test. The datapath tests need root (BPF, namespaces) and
# fail, naming what is missing, without it.
test: vet
	$(GO) test -count=1 -timeout 20m ./...

# bench runs the Go benchmarks of the hot paths and measures the datapath's
# cost on real traffic between two namespaces: TCP bulk, 64-byte UDP, HTTP
# and request-response loads (root, iperf3, wrk; about 5 minutes).
# BENCH_FLAGS go to bench/datapath (-rounds, -duration, -loads, -v, …).
BENCH_FLAGS ?=
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...
	$(GO) run ./bench/datapath $(BENCH_FLAGS)

# demo builds a sandbox of namespaces with traffic, runs the agent on it
# and prints the flows it saw (root).
demo:
	$(GO) run ./cmd/flowmap demo

clean:
	rm -rf bin
