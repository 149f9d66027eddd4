package kv

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
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
		if step%997 == 0 {
			checkOrdered(t, o, want)
		}
	}
	checkOrdered(t, o, want)
	keys := slices.Collect(maps.Keys(want))
	rng.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	for i, k := range keys {
		o.remove(k)
		delete(want, k)
		if i%499 == 0 {
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
	const n = 20000
	for i := range n {
		e := &Entry{Key: fmt.Sprintf("k%06d", i)}
		o.set(e)
		want[e.Key] = e
	}
	checkOrdered(t, o, want)
	leaves := 0
	for n := o.root; n != nil; n = n.children[0] {
		if n.leaf() {
			for ; n != nil; n = n.next {
				leaves++
			}
			break
		}
	}
	if most := (n + maxItems - 1) / maxItems; leaves > most {
		t.Errorf("%d keys loaded in order fill %d leaves, want %d", n, leaves, most)
	}
	for i := range n {
		key := fmt.Sprintf("k%06d", i)
		o.remove(key)
		delete(want, key)
		if i%997 == 0 {
			checkOrdered(t, o, want)
		}
	}
	checkOrdered(t, o, want)
}

// checkOrdered checks the tree's shape and that it holds exactly want.
func checkOrdered(t *testing.T, o *ordered, want map[string]*Entry) {
	t.Helper()
	keys := slices.Sorted(maps.Keys(want))
	if o.len != len(keys) {
		t.Fatalf("len = %d, want %d", o.len, len(keys))
	}
	var leaves []*orderNode
	if o.root != nil {
		depth := -1
		if err := checkNode(o.root, true, "", "", 0, &depth, &leaves); err != nil {
			t.Fatal(err)
		}
	}
	for i, l := range leaves {
		if i > 0 && leaves[i-1].next != l {
			t.Fatalf("leaf %d is not linked after leaf %d", i, i-1)
		}
	}
	if len(leaves) > 0 && leaves[len(leaves)-1].next != nil {
		t.Fatal("the last leaf links to another")
	}
	var got []string
	for _, e := range o.rangeOf("") {
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
}

// checkNode checks the node n, whose keys must lie in [lo, hi) ("" for no
// bound), and every node under it, at depth; it appends its leaves to
// leaves and checks they are all at the same depth.
func checkNode(n *orderNode, root bool, lo, hi string, depth int, leafDepth *int, leaves *[]*orderNode) error {
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
		*leaves = append(*leaves, n)
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

// TestOrderedRangeOf checks the entries under a prefix, also where the
// prefix ends in 0xff bytes and the range has no key above it.
func TestOrderedRangeOf(t *testing.T) {
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
			for _, e := range o.rangeOf(tt.prefix) {
				got = append(got, e.Key)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("rangeOf(%q) (-want +got):\n%s", tt.prefix, diff)
			}
		})
	}
}
