package model

// StoreUsage is the memory of one of the agent's stores that grow with
// what others send (flows, names): how much it holds, its estimated size
// in bytes, the bound on that size, and what the bound made it refuse or
// let go of. Bytes are estimates: each store multiplies what it holds by
// the size of an entry as Go lays it out (unsafe.Sizeof of its structs,
// map overhead included), and each store's tests check the estimate
// against the heap's growth as runtime.MemStats measures it.
type StoreUsage struct {
	Entries    uint64 // what the store holds: records, edge counts, names…
	Bytes      uint64 // Entries' estimated size
	LimitBytes uint64 // the bound on Bytes
	// Dropped counts the entries the bound refused or evicted since start.
	Dropped uint64
}
