package kv

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// TestOrdered mixes sets of keys in and out of order with removes, so
// that leaves and inner nodes split, merge and share their items, then
// removes every key, and checks the tree against a sorted reference on
// the way.
func TestOrdered(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	o := newOrdered()
	want := map[string]*Entry{}
	next := 0
	for step := range 40000 {
		var key string
		switch r := rng.IntN(10); {
		case r < 5: // roughly ascending, as a log written by many writers
			key = fmt.Sprintf("k%06d", next+rng.IntN(64))
			next++
		case r < 7:
			key = fmt.Sprintf("k%06d", rng.IntN(next+64))
		default:
			key = fmt.Sprintf("k%06d", rng.IntN(next+64))
			o.remove(key)
			delete(want, key)
			continue
		}
		e := &Entry{Key: key, Revision: int64(step)}
		o.set(e)
		want[key] = e
		if step%4999 == 0 {
			checkOrdered(t, o, want)
		}
	}
	checkOrdered(t, o, want)
	keys := slices.Collect(maps.Keys(want))
	rng.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	for i, k := range keys {
		o.remove(k)
		delete(want, k)
		if i%1999 == 0 {
			checkOrdered(t, o, want)
		}
	}
	checkOrdered(t, o, want)
	if o.root != nil {
		t.Errorf("an emptied tree keeps a root")
	}
}

// TestOrderedAscending loads keys in ascending order, as from a
// snapshot, and removes them in the same order: leaves stay full as they
// fill, and the tree stays whole as they empty.
func TestOrderedAscending(t *testing.T) {
	o := newOrdered()
	want := map[string]*Entry{}
	const n = 10000
	for i := range n {
		e := &Entry{Key: fmt.Sprintf("k%06d", i)}
		o.set(e)
		want[e.Key] = e
	}
	if leaves := checkOrdered(t, o, want); leaves > (n+maxItems-1)/maxItems {
		t.Errorf("%d keys loaded in order fill %d leaves, want %d", n, leaves, (n+maxItems-1)/maxItems)
	}
	for i := range n {
		key := fmt.Sprintf("k%06d", i)
		o.remove(key)
		delete(want, key)
		if i%2503 == 0 {
			checkOrdered(t, o, want)
		}
	}
	checkOrdered(t, o, want)
}

// checkOrdered checks the tree's shape and that it holds exactly want,
// and returns how many leaves it has.
func checkOrdered(t *testing.T, o *ordered, want map[string]*Entry) (leaves int) {
	t.Helper()
	keys := slices.Sorted(maps.Keys(want))
	if o.len != len(keys) {
		t.Fatalf("len = %d, want %d", o.len, len(keys))
	}
	if o.root != nil {
		depth := -1
		if err := checkNode(o.root, true, "", "", 0, &depth, &leaves); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for e := range o.from("") {
		if want[e.Key] != e {
			t.Fatalf("entry %q is not the one set last", e.Key)
		}
		got = append(got, e.Key)
	}
	if diff := cmp.Diff(keys, got, cmpopts.EquateEmpty()); diff != "" {
		t.Fatalf("keys (-want +got):\n%s", diff)
	}
	for _, k := range keys[:min(len(keys), 50)] {
		for e := range o.from(k) {
			if e.Key != k {
				t.Fatalf("from(%q) starts at %q", k, e.Key)
			}
			break
		}
	}
	return leaves
}

// checkNode checks the node n, whose keys must lie in [lo, hi) ("" for no
// bound), and every node under it, at depth; it counts its leaves and
// checks they are all at the same depth.
func checkNode(n *orderNode, root bool, lo, hi string, depth int, leafDepth, leaves *int) error {
	in := func(k string) bool { return k >= lo && (hi == "" || k < hi) }
	if n.leaf() {
		if *leafDepth == -1 {
			*leafDepth = depth
		}
		switch {
		case depth != *leafDepth:
			return fmt.Errorf("a leaf at depth %d, another at %d", depth, *leafDepth)
		case len(n.entries) > maxItems || !root && len(n.entries) == 0:
			return fmt.Errorf("a leaf holds %d entries", len(n.entries))
		}
		for i, e := range n.entries {
			if !in(e.Key) || i > 0 && n.entries[i-1].Key >= e.Key {
				return fmt.Errorf("leaf key %q out of order or out of [%q, %q)", e.Key, lo, hi)
			}
		}
		*leaves++
		return nil
	}
	if len(n.children) > maxItems || len(n.children) < 2 || len(n.keys) != len(n.children)-1 {
		return fmt.Errorf("an inner node with %d children and %d keys", len(n.children), len(n.keys))
	}
	for i, c := range n.children {
		clo, chi := lo, hi
		if i > 0 {
			clo = n.keys[i-1]
		}
		if i < len(n.keys) {
			chi = n.keys[i]
			if !in(chi) || i > 0 && n.keys[i-1] >= chi {
				return fmt.Errorf("inner key %q out of order or out of [%q, %q)", chi, lo, hi)
			}
		}
		if err := checkNode(c, false, clo, chi, depth+1, leafDepth, leaves); err != nil {
			return err
		}
	}
	return nil
}

// TestOrderedPrefixed checks the entries under a prefix, also where the
// prefix ends in 0xff bytes and the range has no key above it.
func TestOrderedPrefixed(t *testing.T) {
	o := newOrdered()
	for _, k := range []string{"b", "a/2", "\xff\xff", "a", "a\xff\xff", "ab", "a/1", "a\xff", "\xff"} {
		o.set(&Entry{Key: k})
	}
	tests := []struct {
		prefix string
		want   []string
	}{
		{"", []string{"a", "a/1", "a/2", "ab", "a\xff", "a\xff\xff", "b", "\xff", "\xff\xff"}},
		{"a", []string{"a", "a/1", "a/2", "ab", "a\xff", "a\xff\xff"}},
		{"a/", []string{"a/1", "a/2"}},
		{"a/2", []string{"a/2"}},
		{"a\xff", []string{"a\xff", "a\xff\xff"}},
		{"\xff", []string{"\xff", "\xff\xff"}},
		{"a/3", nil},
		{"c", nil},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.prefix), func(t *testing.T) {
			var got []string
			for e := range o.freeze().prefixed(tt.prefix) {
				got = append(got, e.Key)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("prefixed(%q) (-want +got):\n%s", tt.prefix, diff)
			}
		})
	}
}

// TestOrderedFrozen freezes the tree again and again while keys are set
// and removed, and checks that every view still holds what the tree held
// when it was taken, and that the tree copies nodes only after a freeze.
func TestOrderedFrozen(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	o := newOrdered()
	want := map[string]*Entry{}
	type frozen struct {
		view orderView
		keys []string
		vals []*Entry
	}
	var views []frozen
	for step := range 30000 {
		key := fmt.Sprintf("k%05d", rng.IntN(5000))
		if rng.IntN(3) == 0 {
			o.remove(key)
			delete(want, key)
		} else {
			e := &Entry{Key: key, Revision: int64(step)}
			o.set(e)
			want[key] = e
		}
		if step%1000 == 0 {
			f := frozen{view: o.freeze()}
			for _, k := range slices.Sorted(maps.Keys(want)) {
				f.keys = append(f.keys, k)
				f.vals = append(f.vals, want[k])
			}
			views = append(views, f)
		}
	}
	checkOrdered(t, o, want)
	for i, f := range views {
		var keys []string
		var vals []*Entry
		for e := range f.view.from("") {
			keys, vals = append(keys, e.Key), append(vals, e)
		}
		if diff := cmp.Diff(f.keys, keys); diff != "" {
			t.Fatalf("view %d keys (-then +now):\n%s", i, diff)
		}
		for j := range vals {
			if vals[j] != f.vals[j] {
				t.Fatalf("view %d: %q holds another entry now", i, keys[j])
			}
		}
	}

	// With no freeze, writes change the nodes in place.
	gen := o.gen
	root := o.root
	for i := range 100 {
		o.set(&Entry{Key: fmt.Sprintf("k%05d", i)})
	}
	if o.gen != gen || o.root != root {
		t.Errorf("writes without a freeze started generation %d (was %d) or a new root", o.gen, gen)
	}
}

// TestOrderedViewWhileWriting reads views in another goroutine while the
// tree changes, for the race detector: a view's nodes are never written.
func TestOrderedViewWhileWriting(t *testing.T) {
	o := newOrdered()
	var mu sync.RWMutex // as Store.orderMu
	for i := range 5000 {
		o.set(&Entry{Key: fmt.Sprintf("k%05d", i)})
	}
	errc := make(chan error, 1)
	go func() {
		for range 200 {
			mu.RLock()
			v := o.freeze()
			mu.RUnlock()
			last, n := "", 0
			for e := range v.from("") {
				if e.Key <= last {
					errc <- fmt.Errorf("%q after %q", e.Key, last)
					return
				}
				last = e.Key
				n++
			}
			if n == 0 {
				errc <- fmt.Errorf("an empty view")
				return
			}
		}
		errc <- nil
	}()
	rng := rand.New(rand.NewPCG(11, 12))
	for {
		select {
		case err := <-errc:
			if err != nil {
				t.Fatal(err)
			}
			return
		default:
		}
		key := fmt.Sprintf("k%05d", rng.IntN(10000))
		mu.Lock()
		if rng.IntN(2) == 0 {
			o.remove(key)
		} else {
			o.set(&Entry{Key: key})
		}
		mu.Unlock()
	}
}
