package kv

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestOrderedFinger mixes sets of keys in and out of order with removes,
// so that searches start both from the head and from the finger, and
// checks every level of the list against a sorted reference.
func TestOrderedFinger(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	o := newOrdered()
	want := map[string]*Entry{}
	next := 0
	for step := range 20000 {
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
}

func checkOrdered(t *testing.T, o *ordered, want map[string]*Entry) {
	t.Helper()
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if o.len != len(keys) {
		t.Fatalf("len = %d, want %d", o.len, len(keys))
	}
	i := 0
	for n := o.head.next[0]; n != nil; n = n.next[0] {
		if i >= len(keys) || n.e.Key != keys[i] || n.e != want[keys[i]] {
			t.Fatalf("node %d holds %q, want %q", i, n.e.Key, keys[i])
		}
		i++
	}
	if i != len(keys) {
		t.Fatalf("list holds %d nodes, want %d", i, len(keys))
	}
	for lvl := 1; lvl < maxLevel; lvl++ {
		var last string
		for n := o.head.next[lvl]; n != nil; n = n.next[lvl] {
			if len(n.next) <= lvl || n.e.Key <= last || want[n.e.Key] != n.e {
				t.Fatalf("level %d: bad node %q after %q", lvl, n.e.Key, last)
			}
			last = n.e.Key
		}
	}
	for _, k := range keys[:min(len(keys), 50)] {
		if n := o.seek(k); n == nil || n.e.Key != k {
			t.Fatalf("seek(%q) missed", k)
		}
	}
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
