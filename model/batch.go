package model

import "time"

// Batch is the flows of one drain interval.
type Batch struct {
	Start   time.Time `json:"start"`
	End     time.Time `json:"end"`
	Records []Record  `json:"flows"`
	// Names are the names that DNS answers and TLS server names gave
	// addresses during the interval.
	Names []Name `json:"names,omitempty"`
}

// Merge sums batches (of consecutive intervals) into one: the records of
// one flow are added up, direction by direction. It leaves the batches
// unchanged and the result shares nothing with them.
func Merge(batches ...Batch) Batch {
	var out Batch
	idx := map[Key]int{}
	for _, b := range batches {
		if out.Start.IsZero() || b.Start.Before(out.Start) {
			out.Start = b.Start
		}
		if b.End.After(out.End) {
			out.End = b.End
		}
		for i := range b.Records {
			r := &b.Records[i]
			k := r.Key()
			if j, ok := idx[k]; ok {
				out.Records[j].Add(r)
				continue
			}
			idx[k] = len(out.Records)
			out.Records = append(out.Records, r.Clone())
		}
		out.Names = append(out.Names, b.Names...)
	}
	return out
}
