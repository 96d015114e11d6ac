// Package export sends named flows to collectors off the host: it holds
// what every exporter shares, the bounded [Queue] between the agent's
// drain and an [Exporter], and the [Filter] that picks the flows to send.
// The exporters themselves live in packages of their own (export/otlp,
// export/ipfix), so that a binary or package that needs none of them does
// not link their SDKs.
//
// The rule a Queue keeps: the drain never waits for a collector. Offer
// takes what fits under the queue's capacity and drops the newest flows
// that do not, counting them; what the queue holds it keeps, retrying its
// batches with exponential backoff while the collector is down or slow,
// until they are sent or fail for good.
package export
