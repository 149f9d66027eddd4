package sse

import (
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"

	"kvsse/kv"
)

// published returns c as a feed hands it to subscriptions: a change that
// went through Publish, with the room for its wire encodings.
func published(tb testing.TB, c kv.Change) *kv.Change {
	tb.Helper()
	f := kv.NewFeed(16, 16, c.Revision-1)
	sub := SubscribeAll(tb, f, kv.WatchOptions{})
	f.Publish([]kv.Change{c}, c.Revision)
	got, _ := sub.Take(nil)
	if len(got) != 1 {
		tb.Fatalf("published %d changes, want 1", len(got))
	}
	return got[0]
}

// BenchmarkEncodeFanout is one change written to 1,000 streams: encoded
// once and shared (a published change), or encoded for each stream (the
// same change, never published). The change is the last of its revision
// on the streams, as a single write's is; "shared-inside" sends it as a
// change before the last of a transaction.
func BenchmarkEncodeFanout(b *testing.B) {
	c := kv.Change{Op: kv.OpPut, Key: "config/app/feature-42", Value: []byte(`{"enabled":true,"rollout":25}`), Revision: 12345, PrevRevision: 12000}
	for _, bc := range []struct {
		name   string
		change func() *kv.Change
		last   bool
	}{
		{"shared", func() *kv.Change { return published(b, c) }, true},
		{"shared-inside", func() *kv.Change { return published(b, c) }, false},
		{"each", func() *kv.Change { cc := c; return &cc }, true},
	} {
		for _, f := range []Format{SSE, NDJSON} {
			b.Run(bc.name+"/"+[]string{"sse", "ndjson"}[f], func(b *testing.B) {
				e := encoder{format: f}
				b.ReportAllocs()
				for b.Loop() {
					ch := bc.change()
					for range 1000 {
						e.buf = e.buf[:0]
						e.change(ch, bc.last)
					}
				}
			})
		}
	}
}

// TestEncodedShared: a published change is encoded once per format and
// variant (the last change of its revision on a stream, or not; with its
// previous value, or not) for every stream, and the bytes of each format
// and variant are their own.
func TestEncodedShared(t *testing.T) {
	ch := published(t, kv.Change{Op: kv.OpPut, Key: "k", Value: []byte("v"), Revision: 7, PrevRevision: 6, PrevValue: []byte("u")})
	type variant struct {
		format     Format
		last, prev bool
	}
	var variants []variant
	made := map[string]variant{} // the bytes of each variant
	for _, f := range []Format{SSE, NDJSON} {
		for _, last := range []bool{false, true} {
			for _, prev := range []bool{false, true} {
				v := variant{f, last, prev}
				variants = append(variants, v)
				a, b := encoder{format: f, prev: prev}, encoder{format: f, prev: prev}
				a.change(ch, last)
				b.change(ch, last)
				if string(a.buf) != string(b.buf) {
					t.Fatalf("%+v: two streams got %q and %q", v, a.buf, b.buf)
				}
				if other, ok := made[string(a.buf)]; ok {
					t.Errorf("%+v and %+v share their bytes: %q", other, v, a.buf)
				}
				made[string(a.buf)] = v
				if allocs := testing.AllocsPerRun(100, func() { a.buf = a.buf[:0]; a.change(ch, last) }); allocs != 0 {
					t.Errorf("%+v: %v allocations to send a change already encoded, want 0", v, allocs)
				}
			}
		}
	}
	// Making one variant left the others made.
	e := encoder{}
	allocs := testing.AllocsPerRun(100, func() {
		for _, v := range variants {
			e.format, e.prev, e.buf = v.format, v.prev, e.buf[:0]
			e.change(ch, v.last)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations to send the change in every variant again, want 0", allocs)
	}
}

// TestEncoderChanges: in a batch of whole revisions, as Take returns them,
// only the last change of each revision carries its id (SSE) or
// "last":true (NDJSON).
func TestEncoderChanges(t *testing.T) {
	f := kv.NewFeed(16, 16, 0)
	for _, rev := range [][]kv.Change{
		{{Op: kv.OpPut, Key: "a", Value: []byte("1"), Revision: 1}, {Op: kv.OpPut, Key: "b", Value: []byte("2"), Revision: 1}},
		{{Op: kv.OpDelete, Key: "a", Revision: 2, PrevRevision: 1}},
		{{Op: kv.OpDelete, Key: "b", Revision: 3, PrevRevision: 1}, {Op: kv.OpPut, Key: "c", Value: []byte("3"), Revision: 3}},
	} {
		f.Publish(rev, rev[0].Revision)
	}
	sub := SubscribeAll(t, f, kv.WatchOptions{Resume: true})
	batch := sub.Replay // published changes, whole revisions
	tests := []struct {
		format Format
		merged bool
		want   string
	}{
		{SSE, false, "event: put\ndata: {\"key\":\"a\",\"value\":\"1\",\"revision\":1}\n\n" +
			"id: 1\nevent: put\ndata: {\"key\":\"b\",\"value\":\"2\",\"revision\":1}\n\n" +
			"id: 2\nevent: delete\ndata: {\"key\":\"a\",\"revision\":2,\"prev_revision\":1,\"reason\":\"deleted\"}\n\n" +
			"event: delete\ndata: {\"key\":\"b\",\"revision\":3,\"prev_revision\":1,\"reason\":\"deleted\"}\n\n" +
			"id: 3\nevent: put\ndata: {\"key\":\"c\",\"value\":\"3\",\"revision\":3}\n\n"},
		{NDJSON, false, `{"event":"put","key":"a","value":"1","revision":1}` + "\n" +
			`{"event":"put","key":"b","value":"2","revision":1,"last":true}` + "\n" +
			`{"event":"delete","key":"a","revision":2,"prev_revision":1,"reason":"deleted","last":true}` + "\n" +
			`{"event":"delete","key":"b","revision":3,"prev_revision":1,"reason":"deleted"}` + "\n" +
			`{"event":"put","key":"c","value":"3","revision":3,"last":true}` + "\n"},
		// A merged batch is a whole state only at its end.
		{SSE, true, "event: put\ndata: {\"key\":\"a\",\"value\":\"1\",\"revision\":1}\n\n" +
			"event: put\ndata: {\"key\":\"b\",\"value\":\"2\",\"revision\":1}\n\n" +
			"event: delete\ndata: {\"key\":\"a\",\"revision\":2,\"prev_revision\":1,\"reason\":\"deleted\"}\n\n" +
			"event: delete\ndata: {\"key\":\"b\",\"revision\":3,\"prev_revision\":1,\"reason\":\"deleted\"}\n\n" +
			"id: 3\nevent: put\ndata: {\"key\":\"c\",\"value\":\"3\",\"revision\":3}\n\n"},
		{NDJSON, true, `{"event":"put","key":"a","value":"1","revision":1}` + "\n" +
			`{"event":"put","key":"b","value":"2","revision":1}` + "\n" +
			`{"event":"delete","key":"a","revision":2,"prev_revision":1,"reason":"deleted"}` + "\n" +
			`{"event":"delete","key":"b","revision":3,"prev_revision":1,"reason":"deleted"}` + "\n" +
			`{"event":"put","key":"c","value":"3","revision":3,"last":true}` + "\n"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s merged=%t", tt.format.ContentType(), tt.merged), func(t *testing.T) {
			e := encoder{format: tt.format}
			e.changes(batch, tt.merged)
			if diff := cmp.Diff(tt.want, string(e.buf)); diff != "" {
				t.Errorf("batch (-want +got):\n%s", diff)
			}
			if e.last != 3 {
				t.Errorf("last revision appended %d, want 3", e.last)
			}
		})
	}
}

// TestCutAt: a long poll's answer holds the most whole revisions within
// its limit, or the first revision whole when it alone is bigger.
func TestCutAt(t *testing.T) {
	revs := func(rs ...int64) []*kv.Change {
		var out []*kv.Change
		for _, r := range rs {
			out = append(out, &kv.Change{Revision: r})
		}
		return out
	}
	tests := []struct {
		name    string
		changes []*kv.Change
		limit   int
		want    int
	}{
		{"none", nil, 5, 0},
		{"all fit", revs(1, 2, 3), 3, 3},
		{"cut between revisions", revs(1, 2, 3), 2, 2},
		{"cut inside a revision stops before it", revs(1, 2, 2, 2, 3), 3, 1},
		{"cut right after a revision", revs(1, 2, 2, 3), 3, 3},
		{"a first revision bigger than the limit goes whole", revs(4, 4, 4, 5), 2, 3},
		{"a first revision that is all", revs(4, 4, 4), 1, 3},
	}
	for _, tt := range tests {
		if got := cutAt(tt.changes, tt.limit); got != tt.want {
			t.Errorf("%s: cutAt(limit %d) = %d, want %d", tt.name, tt.limit, got, tt.want)
		}
	}
}
