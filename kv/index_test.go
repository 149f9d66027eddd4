package kv

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestIndexMatch(t *testing.T) {
	x := newIndex[int]()
	for _, r := range []struct {
		pattern string
		v       int
	}{
		{"config/app", 1},
		{"config/**", 2},
		{"config/*", 2}, // value 2 under two patterns
		{"config/*", 3},
		{"**", 4},
		{"*/app", 5},
		{"user-*", 6},
		{"user-*/**", 7},
		{"a*b*c/x", 8},
		{"config/app/**", 9},
		{"*", 10},
	} {
		x.add(indexTestPattern(t, r.pattern), r.v)
	}
	tests := []struct {
		key  string
		want []int
	}{
		{"config/app", []int{1, 2, 2, 3, 4, 5}},
		{"config", []int{4, 10}},
		{"config/app/x", []int{2, 4, 9}},
		{"config/app/x/y", []int{2, 4, 9}},
		{"user-1", []int{4, 6, 10}},
		{"user-", []int{4, 6, 10}},
		{"user-1/app", []int{4, 5, 7}},
		{"aXbYc/x", []int{4, 8}},
		{"abc/x/y", []int{4}},
		{"other/thing", []int{4}},
		{"", nil},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, indexMatches(x, tt.key)); diff != "" {
				t.Errorf("match(%q) (-want +got):\n%s", tt.key, diff)
			}
		})
	}
	if got, want := x.len(), 11; got != want {
		t.Errorf("len() = %d, want %d", got, want)
	}
}

func TestIndexCounts(t *testing.T) {
	x := newIndex[string]()
	p := indexTestPattern(t, "jobs/*")
	q := indexTestPattern(t, "jobs/**")
	steps := []struct {
		name   string
		do     func()
		want   []string // values visited for "jobs/1"
		length int
	}{
		{"add", func() { x.add(p, "s") }, []string{"s"}, 1},
		{"add again: visited once", func() { x.add(p, "s") }, []string{"s"}, 1},
		{"add under a second pattern: visited twice", func() { x.add(q, "s") }, []string{"s", "s"}, 2},
		{"remove once of two", func() { x.remove(p, "s") }, []string{"s", "s"}, 2},
		{"remove the second", func() { x.remove(p, "s") }, []string{"s"}, 1},
		{"remove what is not there", func() { x.remove(p, "s"); x.remove(q, "t"); x.remove(Pattern{}, "s") }, []string{"s"}, 1},
		{"add the zero Pattern: ignored", func() { x.add(Pattern{}, "z") }, []string{"s"}, 1},
		{"remove the last", func() { x.remove(q, "s") }, nil, 0},
	}
	for _, s := range steps {
		s.do()
		if diff := cmp.Diff(s.want, indexMatches(x, "jobs/1")); diff != "" {
			t.Errorf("after %s: match (-want +got):\n%s", s.name, diff)
		}
		if got := x.len(); got != s.length {
			t.Errorf("after %s: len() = %d, want %d", s.name, got, s.length)
		}
	}
	if n := indexNodes(&x.root); n != 1 {
		t.Errorf("%d nodes left after removing everything, want 1 (the root)", n)
	}
}

func TestIndexPrunes(t *testing.T) {
	x := newIndex[int]()
	var pats []Pattern
	for i := range 200 {
		for _, s := range []string{"a/%d/b", "a/%d/**", "a/*%d*/c", "%d*", "x/y/%d/z/**"} {
			pats = append(pats, indexTestPattern(t, fmt.Sprintf(s, i)))
		}
	}
	for round := range 3 {
		for i, p := range pats {
			x.add(p, i%7)
		}
		if got := x.len(); got != len(pats) {
			t.Fatalf("round %d: len() = %d, want %d", round, got, len(pats))
		}
		for i, p := range pats {
			x.remove(p, i%7)
		}
		if x.len() != 0 || !x.root.empty() || indexNodes(&x.root) != 1 {
			t.Fatalf("round %d: after removing all: len() = %d, %d nodes, want 0 and 1", round, x.len(), indexNodes(&x.root))
		}
	}
}

func TestIndexMatchAllocations(t *testing.T) {
	x := newIndex[int]()
	for i, s := range []string{"config/**", "config/*/x", "c*/app/**", "**", "other/1/**"} {
		x.add(indexTestPattern(t, s), i)
	}
	n := 0
	visit := func(int) { n++ }
	if allocs := testing.AllocsPerRun(100, func() { x.match("config/app/x", visit) }); allocs != 0 {
		t.Errorf("match allocates %v times per call, want 0", allocs)
	}
	if n != 4*101 {
		t.Errorf("visited %d times, want %d", n, 4*101)
	}
}

func TestIndexRemoveDuringMatch(t *testing.T) {
	x := newIndex[int]()
	pats := map[int][]Pattern{}
	for i, s := range []string{"*", "a*", "*b", "a*b", "*a*", "ab", "**", "ab/**", "*/c", "a*/c", "ab/c", "*b/*", "*", "a*"} {
		p := indexTestPattern(t, s)
		v := i % 9
		x.add(p, v)
		pats[v] = append(pats[v], p)
	}
	for _, key := range []string{"ab", "ab/c"} {
		t.Run(key, func(t *testing.T) {
			var want []int
			for v, ps := range pats {
				if slices.ContainsFunc(ps, func(p Pattern) bool { return p.Match(key) }) {
					want = append(want, v)
				}
			}
			slices.Sort(want)
			var got []int
			x.match(key, func(v int) {
				got = append(got, v)
				for _, p := range pats[v] {
					x.remove(p, v)
				}
				delete(pats, v)
			})
			slices.Sort(got)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("match(%q) removing each value it visits (-want +got):\n%s", key, diff)
			}
		})
	}
}

// FuzzIndex checks the index against a plain list of registrations, each
// checked with Pattern.Match, through adds and removes decoded from data.
func FuzzIndex(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 3, 1, 2, 0, 0, 0})
	f.Add([]byte("add a pattern, remove it, add another: the fuzzer decides"))
	f.Add([]byte{0, 2, 3, 7, 1, 1, 9, 9, 9, 2, 2, 3, 7, 1, 3, 4, 5, 6, 2, 0, 1, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		next := func() int {
			if len(data) == 0 {
				return 0
			}
			b := data[0]
			data = data[1:]
			return int(b)
		}
		patSegs := []string{"a", "b", "ab", "*", "a*", "*b", "a*b", "*a*", "c", "**"}
		keySegs := []string{"a", "b", "ab", "ba", "c", "abc", "aab", "cb"}
		type reg struct {
			p Pattern
			v int
		}
		x := newIndex[int]()
		model := map[reg]int{}
		check := func(key string) {
			t.Helper()
			var want []int
			for r := range model {
				if r.p.Match(key) {
					want = append(want, r.v)
				}
			}
			slices.Sort(want)
			if got := indexMatches(x, key); !slices.Equal(want, got) {
				t.Fatalf("match(%q) with %v (-want +got):\n%s", key, model, cmp.Diff(want, got))
			}
		}
		// dropAll matches key with a visit that removes every registration
		// of the value visited, as a publisher dropping a subscriber does:
		// each value with a matching registration must be visited once.
		dropAll := func(key string) {
			t.Helper()
			var want []int
			for r := range model {
				if r.p.Match(key) && !slices.Contains(want, r.v) {
					want = append(want, r.v)
				}
			}
			slices.Sort(want)
			var got []int
			x.match(key, func(v int) {
				got = append(got, v)
				for r, n := range model {
					if r.v == v {
						for range n {
							x.remove(r.p, v)
						}
						delete(model, r)
					}
				}
			})
			slices.Sort(got)
			if !slices.Equal(want, got) {
				t.Fatalf("match(%q) removing what it visits (-want +got):\n%s", key, cmp.Diff(want, got))
			}
		}
		for len(data) > 0 {
			op := next() % 5
			var segs []string
			if op >= 3 {
				for range 1 + next()%4 {
					segs = append(segs, keySegs[next()%len(keySegs)])
				}
				if op == 3 {
					check(strings.Join(segs, "/"))
				} else {
					dropAll(strings.Join(segs, "/"))
				}
				continue
			}
			n := 1 + next()%3
			for i := range n {
				s := patSegs[next()%len(patSegs)]
				if s == "**" && i < n-1 {
					s = "*"
				}
				segs = append(segs, s)
			}
			p := indexTestPattern(t, strings.Join(segs, "/"))
			r := reg{p, next() % 4}
			if op == 2 {
				x.remove(p, r.v)
				if model[r]--; model[r] <= 0 {
					delete(model, r)
				}
			} else {
				x.add(p, r.v)
				model[r]++
			}
			if x.len() != len(model) {
				t.Fatalf("len() = %d, want %d", x.len(), len(model))
			}
		}
		// Every key of up to three of the first five key segments, after
		// all the adds and removes.
		var keys func(prefix string, depth int)
		keys = func(prefix string, depth int) {
			for _, s := range keySegs[:5] {
				check(prefix + s)
				if depth < 3 {
					keys(prefix+s+"/", depth+1)
				}
			}
		}
		keys("", 1)
		for r, n := range model {
			for range n {
				x.remove(r.p, r.v)
			}
		}
		if x.len() != 0 || indexNodes(&x.root) != 1 {
			t.Fatalf("after removing everything: len() = %d, %d nodes, want 0 and 1", x.len(), indexNodes(&x.root))
		}
	})
}

// BenchmarkIndexMatch publishes "config/app/x" into indexes holding many
// patterns that do not match it and into one with 1,000 that do.
func BenchmarkIndexMatch(b *testing.B) {
	matching := []string{"config/app/x", "config/**", "config/app/*", "*/app/x", "config/*/x", "**", "c*/a*/x", "config/app/**"}
	tests := []struct {
		name  string
		count int
		text  func(i int) string
	}{
		{"nonmatching=10", 10, func(i int) string { return fmt.Sprintf("other/%d/**", i) }},
		{"nonmatching=10000", 10000, func(i int) string { return fmt.Sprintf("other/%d/**", i) }},
		{"nonmatching-siblings=10000", 10000, func(i int) string { return fmt.Sprintf("config/app/%d", i) }},
		{"nonmatching-glob-siblings=100", 100, func(i int) string { return fmt.Sprintf("config/app/%d-*", i) }},
		{"matching=1000", 1000, func(i int) string { return matching[i%len(matching)] }},
	}
	for _, tt := range tests {
		b.Run(tt.name, func(b *testing.B) {
			x := newIndex[int]()
			for i := range tt.count {
				x.add(indexTestPattern(b, tt.text(i)), i)
			}
			n := 0
			visit := func(int) { n++ }
			b.ReportAllocs()
			for b.Loop() {
				x.match("config/app/x", visit)
			}
			b.ReportMetric(float64(n)/float64(b.N), "visits/op")
		})
	}
}

// indexMatches returns the values match visits for key, sorted.
func indexMatches[V interface {
	comparable
	~int | ~string
}](x *index[V], key string) []V {
	var got []V
	x.match(key, func(v V) { got = append(got, v) })
	slices.Sort(got)
	return got
}

// indexNodes counts the nodes of the tree under n, n included.
func indexNodes[V comparable](n *indexNode[V]) int {
	count := 1
	for _, c := range n.lits {
		count += indexNodes(c)
	}
	if n.star != nil {
		count += indexNodes(n.star)
	}
	if n.globs != nil {
		for _, c := range n.globs.bySeg {
			count += indexNodes(c.node)
		}
	}
	return count
}

func indexTestPattern(tb testing.TB, s string) Pattern {
	tb.Helper()
	p, err := ParsePattern(s)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}
