package sse

import (
	"testing"

	"kvsse/kv"
)

// published returns c as a feed hands it to subscriptions: a change that
// went through Publish, with the room for its wire encodings.
func published(tb testing.TB, c kv.Change) *kv.Change {
	tb.Helper()
	f := kv.NewFeed(16, 16, c.Revision-1)
	p, err := kv.ParsePattern("**")
	if err != nil {
		tb.Fatal(err)
	}
	sub, _, err := f.Subscribe(kv.WatchOptions{Patterns: []kv.Pattern{p}})
	if err != nil {
		tb.Fatal(err)
	}
	f.Publish([]kv.Change{c}, c.Revision)
	got, _ := sub.Take(nil)
	if len(got) != 1 {
		tb.Fatalf("published %d changes, want 1", len(got))
	}
	return got[0]
}

// BenchmarkEncodeFanout is one change written to 1,000 streams: encoded
// once and shared (a published change), or encoded for each stream (the
// same change, never published).
func BenchmarkEncodeFanout(b *testing.B) {
	c := kv.Change{Op: kv.OpPut, Key: "config/app/feature-42", Value: []byte(`{"enabled":true,"rollout":25}`), Revision: 12345, PrevRevision: 12000}
	for _, bc := range []struct {
		name   string
		change func() *kv.Change
	}{
		{"shared", func() *kv.Change { return published(b, c) }},
		{"each", func() *kv.Change { cc := c; return &cc }},
	} {
		for _, f := range []Format{SSE, NDJSON} {
			b.Run(bc.name+"/"+[]string{"sse", "ndjson"}[f], func(b *testing.B) {
				e := encoder{format: f}
				b.ReportAllocs()
				for b.Loop() {
					ch := bc.change()
					for range 1000 {
						e.buf = e.buf[:0]
						e.change(ch)
					}
				}
			})
		}
	}
}

// TestEncodedShared: a published change is encoded once per format for
// every stream, and each format's bytes are its own.
func TestEncodedShared(t *testing.T) {
	ch := published(t, kv.Change{Op: kv.OpPut, Key: "k", Value: []byte("v"), Revision: 7})
	var first [2][]byte
	for _, f := range []Format{SSE, NDJSON} {
		a, b := encoder{format: f}, encoder{format: f}
		a.change(ch)
		b.change(ch)
		if string(a.buf) != string(b.buf) {
			t.Fatalf("format %d: two streams got %q and %q", f, a.buf, b.buf)
		}
		first[f] = a.buf
		if allocs := testing.AllocsPerRun(100, func() { a.buf = a.buf[:0]; a.change(ch) }); allocs != 0 {
			t.Errorf("format %d: %v allocations to send a change already encoded, want 0", f, allocs)
		}
	}
	if string(first[SSE]) == string(first[NDJSON]) {
		t.Errorf("SSE and NDJSON share their bytes: %q", first[SSE])
	}
}
