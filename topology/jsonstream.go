package topology

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"strings"
)

// jsonStream writes a document as json.Encoder would, but an array at a
// time, element by element: Encoder builds the whole document in memory
// before it writes a byte, and a graph of 50,000 edges runs to tens of
// megabytes. The output is byte for byte Encoder's (the exports' golden
// files hold it).
type jsonStream struct {
	w      *bufio.Writer
	indent string // "" for compact
	err    error
}

func newJSONStream(w io.Writer, indent string) *jsonStream {
	bw, ok := w.(*bufio.Writer)
	if !ok {
		bw = bufio.NewWriterSize(w, 32<<10)
	}
	return &jsonStream{w: bw, indent: indent}
}

// prefix is the indent of a value at depth.
func (j *jsonStream) prefix(depth int) string { return strings.Repeat(j.indent, depth) }

// newline starts a line at depth, where the output is indented.
func (j *jsonStream) newline(depth int) {
	if j.indent != "" {
		j.w.WriteByte('\n')
		j.w.WriteString(j.prefix(depth))
	}
}

// value writes v whole, at depth.
func (j *jsonStream) value(v any, depth int) {
	if j.err != nil {
		return
	}
	var b []byte
	if j.indent == "" {
		b, j.err = json.Marshal(v)
	} else {
		b, j.err = json.MarshalIndent(v, j.prefix(depth), j.indent)
	}
	if j.err == nil {
		_, j.err = j.w.Write(b)
	}
}

// array writes xs at depth, an element at a time.
func array[T any](j *jsonStream, xs []T, depth int) {
	switch {
	case j.err != nil:
		return
	case xs == nil:
		j.w.WriteString("null")
		return
	case len(xs) == 0:
		j.w.WriteString("[]")
		return
	}
	j.w.WriteByte('[')
	for i := range xs {
		if i > 0 {
			j.w.WriteByte(',')
		}
		j.newline(depth + 1)
		j.value(&xs[i], depth+1)
	}
	j.newline(depth)
	j.w.WriteByte(']')
}

// object writes head, a struct of the fields that come before the
// arrays, then each of the arrays (written by the funcs, in order, named
// by keys), as one object at depth 0, and the newline Encoder ends with.
func (j *jsonStream) object(head any, keys []string, arrays ...func()) error {
	var b []byte
	if j.indent == "" {
		b, j.err = json.Marshal(head)
	} else {
		b, j.err = json.MarshalIndent(head, "", j.indent)
	}
	if j.err != nil {
		return j.err
	}
	// Without its closing brace, and the newline before it if any.
	b = bytes.TrimSuffix(bytes.TrimSuffix(b, []byte("}")), []byte("\n"))
	first := len(b) == 1 // head had no field
	j.w.Write(b)
	for i, k := range keys {
		if !first || i > 0 {
			j.w.WriteByte(',')
		}
		j.newline(1)
		kb, _ := json.Marshal(k)
		j.w.Write(kb)
		j.w.WriteByte(':')
		if j.indent != "" {
			j.w.WriteByte(' ')
		}
		arrays[i]()
	}
	j.newline(0)
	j.w.WriteString("}\n")
	if j.err != nil {
		return j.err
	}
	return j.w.Flush()
}
