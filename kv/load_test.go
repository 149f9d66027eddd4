package kv

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestLoadHistoryAndStats checks that a reopen gives back the history
// (changes and floor) and the stats that the store had before it closed,
// with segments holding more records than the history keeps and fewer.
func TestLoadHistoryAndStats(t *testing.T) {
	for _, tt := range []struct{ history, compact int }{
		{7, 4096},       // many records per segment beyond the history
		{7, 1 << 20},    // one segment
		{50, 2048},      // segments smaller than the history
		{1000, 1 << 20}, // a history longer than the log
	} {
		t.Run(fmt.Sprintf("history=%d,compact=%d", tt.history, tt.compact), func(t *testing.T) {
			ctx := context.Background()
			opts := Options{Dir: t.TempDir(), History: tt.history, CompactBytes: int64(tt.compact)}
			s, err := Open(opts)
			if err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(5, 6))
			for i := range 700 {
				key := fmt.Sprintf("key/%03d", rng.IntN(60))
				if rng.IntN(4) == 0 {
					if _, err := s.Delete(ctx, key, Cond{}); err != nil && !errors.Is(err, ErrNotFound) {
						t.Fatal(err)
					}
					continue
				}
				value := []byte(fmt.Sprint(i, rng.IntN(1000)))
				if i%50 == 0 {
					value = nil // an empty value stays a value
				}
				if _, err := s.Put(ctx, key, value, PutOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			wantHist, wantFloor := historyOf(s)
			wantKeys, wantBytes := s.stats.Keys.Load(), s.stats.ValueBytes.Load()
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s, err = Open(opts)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			gotHist, gotFloor := historyOf(s)
			if gotFloor != wantFloor {
				t.Errorf("history floor = %d, want %d", gotFloor, wantFloor)
			}
			if len(gotHist) != len(wantHist) {
				t.Fatalf("history holds %d changes, want %d", len(gotHist), len(wantHist))
			}
			for i := range wantHist {
				if g, w := gotHist[i], wantHist[i]; g != w {
					t.Fatalf("history[%d] = %+v, want %+v", i, g, w)
				}
			}
			if k, b := s.stats.Keys.Load(), s.stats.ValueBytes.Load(); k != wantKeys || b != wantBytes {
				t.Errorf("stats after reopen: %d keys, %d bytes; want %d, %d", k, b, wantKeys, wantBytes)
			}
			if s.order.len != int(wantKeys) {
				t.Errorf("order holds %d keys, want %d", s.order.len, wantKeys)
			}
			for e := range s.order.from("") {
				if e.Value == nil {
					t.Fatalf("%s: nil value after reopen", e.Key)
				}
			}
		})
	}
}

type histItem struct {
	op        Op
	key, val  string
	rev, prev int64
}

func historyOf(s *Store) ([]histItem, int64) {
	s.feed.mu.Lock()
	defer s.feed.mu.Unlock()
	h := &s.feed.hist
	var out []histItem
	for i := range h.n {
		c := h.at(i)
		out = append(out, histItem{c.Op, c.Key, string(c.Value), c.Revision, c.PrevRevision})
	}
	return out, h.floor
}
