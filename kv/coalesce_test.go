package kv_test

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"

	"kvsse/kv"
)

// TestCoalesce publishes random puts, deletes and transactions on 20 keys
// to a coalescing subscription with a small buffer, taking at random
// moments, and applies what it takes to a copy. The subscription is never
// dropped, holds at most one change per key once it merges, and the copy
// equals the state of the feed at every point a stream would give as an
// id: the end of each revision in a plain take, the end of a merged one.
func TestCoalesce(t *testing.T) {
	const keys, buffer, revisions = 20, 8, 5000
	for seed := range uint64(5) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 1))
			f := kv.NewFeed(16, buffer, 0)
			sub, _, err := f.Subscribe(kv.WatchOptions{Patterns: patterns(t, "c/**"), Coalesce: true})
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Cancel()

			type kr struct {
				value string
				rev   int64
			}
			states := map[int64]map[string]kr{0: {}} // the feed's state at each revision
			state := map[string]kr{}
			copyOf := map[string]kr{} // what the consumer builds
			merges := 0
			take := func() {
				changes, merged, ended := sub.TakeMerged(nil)
				if ended {
					t.Fatalf("a coalescing subscription ended (lagged %t)", sub.Lagged())
				}
				if merged {
					merges++
					seen := map[string]bool{}
					for _, c := range changes {
						if seen[c.Key] {
							t.Fatalf("merged take holds %s twice", c.Key)
						}
						seen[c.Key] = true
					}
				}
				for i, c := range changes {
					if i > 0 && c.Revision < changes[i-1].Revision {
						t.Fatalf("revision %d after %d", c.Revision, changes[i-1].Revision)
					}
					if had := copyOf[c.Key].rev; c.PrevRevision != had {
						t.Fatalf("%s at %d: prev_revision %d, but the copy holds revision %d", c.Key, c.Revision, c.PrevRevision, had)
					}
					if c.Op == kv.OpPut {
						copyOf[c.Key] = kr{string(c.Value), c.Revision}
					} else {
						delete(copyOf, c.Key)
					}
					last := i+1 == len(changes) || !merged && changes[i+1].Revision != c.Revision
					if last {
						if diff := cmp.Diff(states[c.Revision], copyOf, cmp.AllowUnexported(kr{})); diff != "" {
							t.Fatalf("state at id %d (merged %t) (-want +got):\n%s", c.Revision, merged, diff)
						}
					}
				}
			}
			for rev := int64(1); rev <= revisions; rev++ {
				var group []kv.Change
				n := 1
				if rng.IntN(5) == 0 {
					n = 1 + rng.IntN(4) // a transaction
				}
				touched := map[string]bool{}
				for range n {
					key := fmt.Sprintf("c/%d", rng.IntN(keys))
					if touched[key] {
						continue
					}
					touched[key] = true
					c := kv.Change{Key: key, Revision: rev, PrevRevision: state[key].rev}
					if _, ok := state[key]; ok && rng.IntN(3) == 0 {
						c.Op = kv.OpDelete
						delete(state, key)
					} else {
						c.Op, c.Value = kv.OpPut, []byte(fmt.Sprint(rev))
						state[key] = kr{fmt.Sprint(rev), rev}
					}
					group = append(group, c)
				}
				f.Publish(group, rev)
				states[rev] = maps.Clone(state)
				if rng.IntN(100) == 0 { // the consumer catches up now and then
					take()
				}
			}
			take()
			if diff := cmp.Diff(state, copyOf, cmp.AllowUnexported(kr{})); diff != "" {
				t.Fatalf("final state (-want +got):\n%s", diff)
			}
			if merges == 0 {
				t.Fatal("the subscription never merged: the test does not test coalescing")
			}
		})
	}
}

// TestCoalesceBounded: a coalescing subscription that is never read holds
// at most one change per key, however many are published.
func TestCoalesceBounded(t *testing.T) {
	f := kv.NewFeed(16, 4, 0)
	sub, _, err := f.Subscribe(kv.WatchOptions{Patterns: patterns(t, "**"), Coalesce: true})
	if err != nil {
		t.Fatal(err)
	}
	plain, _, err := f.Subscribe(kv.WatchOptions{Patterns: patterns(t, "**")})
	if err != nil {
		t.Fatal(err)
	}
	for rev := int64(1); rev <= 100_000; rev++ {
		key := fmt.Sprintf("k%d", rev%10)
		f.Publish([]kv.Change{{Op: kv.OpPut, Key: key, Value: []byte("v"), Revision: rev}}, rev)
	}
	changes, merged, ended := sub.TakeMerged(nil)
	if ended || !merged || len(changes) != 10 {
		t.Fatalf("took %d changes (merged %t, ended %t), want the 10 keys' newest, merged", len(changes), merged, ended)
	}
	if _, ended := plain.Take(nil); !ended || !plain.Lagged() {
		t.Fatal("a plain subscription that was not read was not dropped as lagged")
	}
	// A put then a delete of a key is one delete.
	f.Publish([]kv.Change{{Op: kv.OpPut, Key: "k0", Value: []byte("v"), Revision: 100_001, PrevRevision: 99_991}}, 0)
	for rev := int64(100_002); rev < 100_010; rev++ {
		f.Publish([]kv.Change{{Op: kv.OpPut, Key: "x", Value: []byte("v"), Revision: rev}}, 0)
	}
	f.Publish([]kv.Change{{Op: kv.OpDelete, Key: "k0", Revision: 100_010, PrevRevision: 100_001}}, 0)
	changes, _, _ = sub.TakeMerged(nil)
	want := []change{
		{Op: kv.OpPut, Key: "x", Value: "v", Revision: 100_009, PrevRevision: 0},
		{Op: kv.OpDelete, Key: "k0", Revision: 100_010, PrevRevision: 99_991, Reason: "deleted"},
	}
	if diff := cmp.Diff(want, changesOf(changes)); diff != "" {
		t.Errorf("merged (-want +got):\n%s", diff)
	}
}

// BenchmarkPublishCoalesce publishes changes to 20 keys to one
// subscription whose consumer takes them in turns: plain, with a buffer
// that never fills, and coalescing, with a buffer of 8 that fills between
// two takes, so that publishing merges. Per change published.
func BenchmarkPublishCoalesce(b *testing.B) {
	for _, tc := range []struct {
		name     string
		buffer   int
		coalesce bool
	}{{"plain", 1 << 20, false}, {"coalesce", 8, true}} {
		b.Run(tc.name, func(b *testing.B) {
			f := kv.NewFeed(16, tc.buffer, 0)
			sub, _, err := f.Subscribe(kv.WatchOptions{Patterns: patterns(b, "c/**"), Coalesce: tc.coalesce})
			if err != nil {
				b.Fatal(err)
			}
			defer sub.Cancel()
			keys := make([]string, 20)
			for i := range keys {
				keys[i] = fmt.Sprintf("c/%d", i)
			}
			value := []byte("v")
			var spare []*kv.Change
			taken := 0
			b.ResetTimer()
			for i := range b.N {
				rev := int64(i + 1)
				f.Publish([]kv.Change{{Op: kv.OpPut, Key: keys[i%len(keys)], Value: value, Revision: rev}}, rev)
				if i%64 == 63 {
					var ended bool
					spare, _, ended = sub.TakeMerged(spare)
					if ended {
						b.Fatal("the subscription ended")
					}
					taken += len(spare)
				}
			}
			b.ReportMetric(float64(taken)/float64(b.N), "delivered/op")
		})
	}
}
