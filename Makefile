# Pinned: the generated objects are committed and CI checks they match their
# sources, so every machine must build them with the same compiler.
BPF2GO_CC ?= clang-19
BPF2GO_STRIP ?= llvm-strip-19
BPF2GO_CFLAGS ?= -O2 -g
export BPF2GO_CC BPF2GO_STRIP BPF2GO_CFLAGS

.PHONY: generate
generate:
	go generate ./...
