package sse

import (
	"bytes"
	"fmt"
	"math"
	"strings"
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

// TestEncodedMerged: a change merged by a coalescing subscription is
// sent as the published change it carries the new state of, with its own
// previous state put in: the same bytes, in every format and variant, as
// the merged change encoded afresh. The merges cover a previous state
// gained (a key put after a delete), lost (a key created within the
// merge) and changed, with a binary previous value.
func TestEncodedMerged(t *testing.T) {
	f := kv.NewFeed(64, 2, 10)
	sub := SubscribeAll(t, f, kv.WatchOptions{Coalesce: true})
	for _, c := range []kv.Change{
		{Op: kv.OpPut, Key: "a", Value: []byte("1"), Revision: 11},
		{Op: kv.OpPut, Key: "a", Value: []byte("2"), Revision: 12, PrevRevision: 11, PrevValue: []byte("1")},
		{Op: kv.OpPut, Key: "b", Value: []byte{0xff}, Revision: 13, PrevRevision: 9, PrevValue: []byte{0xfe}, PrevContentType: "application/octet-stream"},
		{Op: kv.OpDelete, Key: "b", Revision: 14, PrevRevision: 13, PrevValue: []byte{0xff}},
		{Op: kv.OpPut, Key: "b", Value: []byte("3"), Revision: 15},
		{Op: kv.OpPut, Key: "c", Value: []byte("x"), Revision: 16, PrevRevision: 8, PrevValue: []byte("old"), PrevContentType: "text/plain"},
		{Op: kv.OpPut, Key: "c", Value: []byte("y"), Expires: 1e18, Revision: 17, PrevRevision: 16, PrevValue: []byte("x")},
		{Op: kv.OpDelete, Key: "d", Revision: 18, PrevRevision: 3, PrevValue: []byte("d")},
		{Op: kv.OpDelete, Key: "a", Revision: 19, PrevRevision: 12, PrevValue: []byte("2")},
	} {
		f.Publish([]kv.Change{c}, c.Revision)
	}
	changes, merged, _ := sub.TakeMerged(nil)
	if !merged {
		t.Fatal("the queue did not merge")
	}
	var keys []string
	for _, c := range changes {
		if c.MergedFrom() != nil {
			keys = append(keys, c.Key)
		}
	}
	if diff := cmp.Diff([]string{"b", "c", "a"}, keys); diff != "" {
		t.Fatalf("the changes merged from several (-want +got):\n%s", diff)
	}
	for _, c := range changes {
		for _, f := range []Format{SSE, NDJSON} {
			for _, last := range []bool{false, true} {
				for _, prev := range []bool{false, true} {
					e := encoder{format: f, prev: prev}
					e.change(c, last)
					fresh := *c // no wire cache: encoded afresh
					if want := encode(&fresh, f, last, prev).b; string(e.buf) != string(want) {
						t.Errorf("%s at %d, format %d, last %v, prev %v: sent %q, want %q", c.Key, c.Revision, f, last, prev, e.buf, want)
					}
				}
			}
		}
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
			if next := e.changes(batch, tt.merged, 0, math.MaxInt); next != len(batch) {
				t.Fatalf("appended %d changes of %d", next, len(batch))
			}
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

// TestDeliverChunks: a backlog far larger than a chunk is appended a
// chunk at a time, each about a chunk long, and together they are the
// same bytes as the backlog appended at once; no heartbeat is appended
// while changes taken wait, as its id would pass the changes queued
// meanwhile.
func TestDeliverChunks(t *testing.T) {
	f := kv.NewFeed(1000, 1000, 0)
	sub := SubscribeAll(t, f, kv.WatchOptions{})
	all := SubscribeAll(t, f, kv.WatchOptions{})
	value := bytes.Repeat([]byte("v"), 1000)
	publish := func(from, to int64) {
		for rev := from; rev <= to; rev++ {
			group := []kv.Change{{Op: kv.OpPut, Key: fmt.Sprint("k", rev%7), Value: value, Revision: rev}}
			if rev%5 == 0 { // a transaction of three
				for _, k := range []string{"t1", "t2"} {
					group = append(group, kv.Change{Op: kv.OpPut, Key: k, Value: value, Revision: rev})
				}
			}
			f.Publish(group, rev)
		}
	}
	publish(1, 100)
	l := live{sub: sub, opts: StreamOptions{Revision: func() int64 { return 1000 }}, enc: encoder{format: SSE}}
	var got []byte
	calls := 0
	for {
		if why := l.deliver(); why != "" {
			t.Fatalf("deliver: %s", why)
		}
		calls++
		if n := len(l.enc.buf); n > chunk+1200 || l.more() && n < chunk {
			t.Errorf("deliver %d appended %d bytes, more %v: want about %d", calls, n, l.more(), chunk)
		}
		got = append(got, l.enc.buf...)
		l.enc.buf = l.enc.buf[:0]
		if !l.more() {
			break
		}
		if calls == 2 {
			publish(101, 140) // queued meanwhile: taken once the batch is done
		}
	}
	batch, _ := all.Take(nil)
	if len(batch) != 196 {
		t.Fatalf("published %d changes, want 196", len(batch))
	}
	want := encoder{format: SSE}
	want.changes(batch[:140], false, 0, math.MaxInt)
	if string(got) != string(want.buf) {
		t.Errorf("the chunks differ from the batch appended at once")
	}
	if calls < 140*1000/chunk {
		t.Errorf("%d calls delivered 140 KB", calls)
	}

	// The changes published meanwhile come next, and no heartbeat while
	// some of them wait.
	if why := l.heartbeat(); why != "" || !l.more() {
		t.Fatalf("heartbeat: %q, more %v; want a batch under way", why, l.more())
	}
	for l.more() {
		if why := l.heartbeat(); why != "" {
			t.Fatal(why)
		}
	}
	if strings.Contains(string(l.enc.buf), "keep-alive") {
		t.Errorf("a heartbeat was appended while changes waited")
	}
	want.buf = want.buf[:0]
	want.changes(batch[140:], false, 0, math.MaxInt)
	if string(l.enc.buf) != string(want.buf) {
		t.Errorf("the changes queued meanwhile differ")
	}
	l.enc.buf = l.enc.buf[:0]
	if why := l.heartbeat(); why != "" || !strings.Contains(string(l.enc.buf), "keep-alive") || !strings.Contains(string(l.enc.buf), "id: 1000\n") {
		t.Errorf("heartbeat with nothing queued appended %q (%q), want a keep-alive with id 1000", l.enc.buf, why)
	}
}
