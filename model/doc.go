// Package model holds the value types every stage of flowmap shares: the
// flow [Record] with its two [Direction]s, the [Interface] behind an end,
// the [L7] figures and their latency [Histogram], the [Name]s that DNS and
// TLS give addresses, the [Endpoint] behind an address and the named
// [Flow], and the [Batch] of one interval.
//
// It imports nothing of the project and no third-party module, so that a
// package that only renders the graph compiles without the BPF loader or
// the Kubernetes client. Each type owns its arithmetic: Add sums what is
// summed and ORs what is ORed, Clone copies what a pointer shares, and
// Merge leaves its inputs unchanged.
package model
