package kv

import (
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// spanRevs returns the revisions of a span's changes, in order.
func spanRevs(s histSpan) []int64 {
	var out []int64
	for i := range s.n {
		out = append(out, s.at(i).Revision)
	}
	return out
}

// revRange returns from, from+1, ..., to; nil when to < from.
func revRange(from, to int64) []int64 {
	var out []int64
	for r := from; r <= to; r++ {
		out = append(out, r)
	}
	return out
}

// TestHistoryChunks fills histories of several sizes across chunk
// boundaries and checks what they keep, their floor, the span after every
// revision, and that a span taken earlier still reads the same once the
// history has moved on, been backfilled or been restarted.
func TestHistoryChunks(t *testing.T) {
	tests := []struct {
		max, changes int
	}{
		{1, 5},
		{3, 2},
		{3, 1000},
		{histChunk - 1, 3 * histChunk},
		{histChunk, histChunk},
		{histChunk, 3*histChunk + 7},
		{histChunk + 1, 5 * histChunk},
		{1000, 999},
		{1000, 5000},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("max=%d/changes=%d", tt.max, tt.changes), func(t *testing.T) {
			f := NewFeed(tt.max, 8, 0)
			n := int64(tt.changes)
			fillHistory(f, tt.changes)
			floor := max(0, n-int64(tt.max))
			if f.Floor() != floor {
				t.Errorf("floor = %d, want %d", f.Floor(), floor)
			}
			step := max(1, (n-floor)/97) // and the last two, at every size
			for from := floor; from <= n; from = min(from+step, max(from+1, n-1)) {
				got := spanRevs(f.hist.since(from))
				if diff := cmp.Diff(revRange(from+1, n), got); diff != "" {
					t.Fatalf("since(%d) (-want +got):\n%s", from, diff)
				}
			}
			if got := len(f.hist.chunks); got > tt.max/histChunk+2 {
				t.Errorf("%d chunks for %d changes", got, tt.max)
			}

			held := f.hist.since(floor)
			want := spanRevs(held)
			more := n + 2*histChunk
			for r := n + 1; r <= more; r++ {
				f.Publish([]Change{{Op: OpPut, Key: "k", Revision: r}}, r)
			}
			if diff := cmp.Diff(want, spanRevs(held)); diff != "" {
				t.Errorf("a span taken before more changes (-before +after):\n%s", diff)
			}
			to := f.Floor()
			var older []Change
			for r := max(1, to-5); r <= to; r++ {
				older = append(older, Change{Op: OpPut, Key: "old", Revision: r})
			}
			f.Backfill(older, max(0, to-6), to)
			f.Restart(more + 10)
			if diff := cmp.Diff(want, spanRevs(held)); diff != "" {
				t.Errorf("a span taken before a backfill and a restart (-before +after):\n%s", diff)
			}
			if got := spanRevs(f.hist.since(more + 10)); got != nil {
				t.Errorf("after a restart, the history holds %v", got)
			}
		})
	}
}
