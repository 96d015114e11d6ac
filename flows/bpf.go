package flows

//go:generate go tool bpf2go -tags linux -target bpfel -type flow_key -type flow_key4 -type flow_stats -type point -type counter -type l7_stats -type l7_loss -type l7_pending -type l7_pending_key -type l7_pending_key4 -type l7_proto -type l7_method -type name_kind -type name_event -type health_stats -type health_event -type drop_key -type attempt -type answer bpf ../bpf/flow.c -- -I../bpf/headers -I/usr/include/x86_64-linux-gnu -Wall -Werror
