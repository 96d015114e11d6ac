package flows

//go:generate go tool bpf2go -tags linux -target bpfel -type flow_key -type flow_key4 -type flow_stats -type point -type counter bpf ../bpf/flow.c -- -I/usr/include/x86_64-linux-gnu -Wall -Werror
