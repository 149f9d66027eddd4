package kv

import (
	"fmt"
	"math/rand/v2"
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
// checked with Pattern.Match, through adds, removes and matches decoded
// from data, some of them removing what they visit.
func FuzzIndex(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 3, 1, 2, 0, 0, 0})
	f.Add([]byte("add a pattern, remove it, add another: the fuzzer decides"))
	f.Add([]byte{0, 2, 3, 7, 1, 1, 9, 9, 9, 2, 2, 3, 7, 1, 3, 4, 5, 6, 2, 0, 1, 0})
	f.Add([]byte{0, 0, 12, 1, 0, 0, 13, 2, 0, 0, 16, 3, 3, 0, 9, 4, 1, 10, 4, 0, 11})
	// Pattern segments with pieces of one to five bytes, anchored or not,
	// so that children are filed under grams of every kind and length;
	// keys whose segments hold those grams, some more than once.
	patSegs := []string{
		"a", "b", "ab", "*", "a*", "*b", "a*b", "*a*", "c", "**",
		"abca*", "*bcab", "*abab*", "ab*ca", "*a*bcab*", "*cab*c*", "b*abcab*",
	}
	keySegs := []string{"a", "b", "ab", "ba", "c", "abc", "aab", "cb", "abcab", "ababab", "cabcab", "bcabca", "abcabcab"}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkIndexModel(t, data, patSegs, keySegs)
	})
}

// TestIndexMatchesModel checks the index against a plain list of
// registrations, each checked with Pattern.Match, through random adds,
// removes and matches, some of them removing what they visit, over random
// glob and key segments.
func TestIndexMatchesModel(t *testing.T) {
	tests := []struct {
		name     string
		seed     uint64
		alphabet string
		maxLen   int // of a segment
	}{
		{"short segments of two letters", 1, "ab", 4},
		{"short segments of three letters", 2, "abc", 6},
		{"long segments of two letters", 3, "ab", 12},
		{"long segments of four letters", 4, "abcd", 16},
		{"segments of one letter", 5, "a", 9},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(tt.seed, 0))
			word := func(glob bool) string {
				b := make([]byte, 1+r.IntN(tt.maxLen))
				for i := range b {
					b[i] = tt.alphabet[r.IntN(len(tt.alphabet))]
					if glob && r.IntN(4) == 0 && (i == 0 || b[i-1] != '*') {
						b[i] = '*'
					}
				}
				return string(b)
			}
			patSegs := []string{"*", "**"}
			for range 40 {
				patSegs = append(patSegs, word(true))
			}
			var keySegs []string
			for range 30 {
				keySegs = append(keySegs, word(false))
			}
			for round := range 20 {
				data := make([]byte, 3000)
				for i := range data {
					data[i] = byte(r.Uint32())
				}
				t.Logf("round %d", round)
				checkIndexModel(t, data, patSegs, keySegs)
			}
		})
	}
}

// checkIndexModel runs the adds, removes and matches decoded from data on
// an index of patterns made of patSegs, and checks each match of a key made
// of keySegs against a plain list of registrations, each checked with
// Pattern.Match. patSegs may hold "**", which is used only as the last
// segment. It also checks the index's own invariants as it goes.
func checkIndexModel(t *testing.T, data []byte, patSegs, keySegs []string) {
	t.Helper()
	next := func() int {
		if len(data) == 0 {
			return 0
		}
		b := data[0]
		data = data[1:]
		return int(b)
	}
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
	// dropAll matches key with a visit that removes every registration of
	// the value visited, as a publisher dropping a subscriber does: each
	// value with a matching registration must be visited once.
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
		indexCheck(t, x)
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
		indexCheck(t, x)
	}
	// Every key of up to three of the first five key segments, after all
	// the adds and removes.
	var keys func(prefix string, depth int)
	keys = func(prefix string, depth int) {
		for _, s := range keySegs[:min(5, len(keySegs))] {
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
	indexCheck(t, x)
	if x.len() != 0 || indexNodes(&x.root) != 1 {
		t.Fatalf("after removing everything: len() = %d, %d nodes, want 0 and 1", x.len(), indexNodes(&x.root))
	}
}

// indexCheck checks the invariants of x between calls: no node but the
// root is empty, and every glob child is filed once, under a gram that
// every segment it matches holds, with the counts of the filter right.
func indexCheck[V comparable](tb testing.TB, x *index[V]) {
	tb.Helper()
	if x.matching || len(x.pending) > 0 {
		tb.Fatalf("after match: matching %v, %d pending removals", x.matching, len(x.pending))
	}
	var walk func(path string, n *indexNode[V])
	walk = func(path string, n *indexNode[V]) {
		if path != "" && n.empty() {
			tb.Fatalf("node %q is empty and not freed", path)
		}
		for seg, c := range n.lits {
			if strings.Contains(seg, "*") {
				tb.Fatalf("node %q: literal child %q", path, seg)
			}
			walk(path+"/"+seg, c)
		}
		if n.star != nil {
			walk(path+"/*", n.star)
		}
		cs := n.globs
		if cs == nil {
			return
		}
		if len(cs.bySeg) == 0 {
			tb.Fatalf("node %q: glob children kept with none", path)
		}
		var filed [gramAnywhere + 1][gramMax + 1]int
		count := 0
		for gr, gc := range cs.byGram {
			if len(gc.children) == 0 {
				tb.Fatalf("node %q: gram %s kept with no children", path, gramString(gr))
			}
			for i, c := range gc.children {
				if c.at != i || c.gram != gr || cs.bySeg[c.glob.text] != c {
					tb.Fatalf("node %q: child %q misfiled under gram %s at %d", path, c.glob.text, gramString(gr), i)
				}
				if !gramHeld(c.glob.text, gr) {
					tb.Fatalf("node %q: child %q filed under gram %s, which its segments need not hold", path, c.glob.text, gramString(gr))
				}
				filed[gr.where()][gr.len()]++
				count++
			}
		}
		if count != len(cs.bySeg) || filed != cs.filed {
			tb.Fatalf("node %q: %d children filed of %d, counts %v, want %v", path, count, len(cs.bySeg), cs.filed, filed)
		}
		for seg, c := range cs.bySeg {
			if seg == "*" || !strings.Contains(seg, "*") || c.glob.text != seg {
				tb.Fatalf("node %q: glob child %q kept as %q", path, seg, c.glob.text)
			}
			walk(path+"/"+seg, c.node)
		}
	}
	walk("", &x.root)
}

// gramText returns the bytes of gr.
func gramText(gr gram) string {
	b := make([]byte, gr.len())
	for i := range b {
		b[i] = byte(gr >> (8 * i))
	}
	return string(b)
}

func gramString(gr gram) string {
	return fmt.Sprintf("%s %q", []string{"start", "end", "anywhere"}[gr.where()], gramText(gr))
}

// gramHeld reports whether every segment that the glob g matches holds gr.
func gramHeld(g string, gr gram) bool {
	pieces := strings.Split(g, "*")
	text := gramText(gr)
	switch gr.where() {
	case gramStart:
		return strings.HasPrefix(pieces[0], text)
	case gramEnd:
		return strings.HasSuffix(pieces[len(pieces)-1], text)
	}
	return slices.ContainsFunc(pieces[1:len(pieces)-1], func(p string) bool { return strings.Contains(p, text) })
}

// TestIndexGramPicked checks which gram a glob child is filed under: the
// longest, anchored before unanchored, until that one is crowded with
// children (see gramShift).
func TestIndexGramPicked(t *testing.T) {
	tests := []struct {
		name    string
		already []string // siblings added first
		seg     string
		want    string
	}{
		{"prefix", nil, "user-*", `start "user"`},
		{"suffix", nil, "*.json", `end "json"`},
		{"short prefix before short suffix", nil, "ab*cd", `start "ab"`},
		{"longer suffix before prefix", nil, "a*bcd", `end "bcd"`},
		{"piece longer than prefix", nil, "a*bcdef*", `anywhere "bcde"`},
		{"anchored before piece of same length", nil, "abcd*efgh*", `start "abcd"`},
		{"one-letter pieces", nil, "*q*q*q*", `anywhere "q"`},
		{"longest piece", nil, "*q*q*q00001*", `anywhere "q000"`},
		{"least used of the longest", []string{"*q*q00002*", "*q*q00003*"}, "*q*q*q00001*", `anywhere "0001"`},
		{"least used anchor", []string{"ab*x", "ab*y"}, "ab*cd", `end "cd"`},
		{"anchor before piece with a few", []string{"feature*zz1*", "feature*zz2*", "feature*zz3*"}, "feature*zz00005*", `start "feat"`},
		{"piece when the anchor is crowded", []string{"feature*zz1*", "feature*zz2*", "feature*zz3*", "feature*zz4*"}, "feature*zz00005*", `anywhere "zz00"`},
		{"shorter piece when the longer is crowded", abcdGlobs(16), "*abcd*xyz*", `anywhere "xyz"`},
		{"longer piece while not too crowded", abcdGlobs(15), "*abcd*xyz*", `anywhere "abcd"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var n indexNode[int]
			x := newIndex[int]()
			for _, s := range tt.already {
				n.child(x, s)
			}
			n.child(x, tt.seg)
			if diff := cmp.Diff(tt.want, gramString(n.globs.bySeg[tt.seg].gram)); diff != "" {
				t.Errorf("gram of %q (-want +got):\n%s", tt.seg, diff)
			}
		})
	}
}

// abcdGlobs returns n globs that all go under the gram "abcd".
func abcdGlobs(n int) []string {
	var globs []string
	for i := range n {
		globs = append(globs, fmt.Sprintf("*abcd*k%02d*", i))
	}
	return globs
}

// hostileGlob returns the i'th of a family of distinct patterns of 900
// bytes, "*q*q*...*q00001*", that match no ordinary key: what a client may
// register by the thousand to slow publishing down.
func hostileGlob(i int) string {
	return strings.Repeat("*q", 446) + fmt.Sprintf("*q%05d*", i)
}

// TestIndexHostileGlobs checks that 60,000 distinct long globs registered
// do not slow down matching a key they do not match, nor adding or
// removing one more: glob children tried or compared stay few.
func TestIndexHostileGlobs(t *testing.T) {
	const n = 60_000
	x := newIndex[int]()
	for i := range n {
		x.add(indexTestPattern(t, hostileGlob(i)), i)
	}
	extra := indexTestPattern(t, hostileGlob(n))
	tests := []struct {
		name     string
		do       func() []int
		want     []int
		maxSteps int
	}{
		{"match an ordinary key", func() []int { return indexMatches(x, "config/app/feature-42") }, nil, 0},
		{"match a key with a q", func() []int { return indexMatches(x, "faq") }, nil, 0},
		{"add another", func() []int { x.add(extra, n); return nil }, nil, 1},
		{"match a key it matches", func() []int { return indexMatches(x, strings.Repeat("q", 446)+fmt.Sprintf("q%05d", n)) }, []int{n}, 10},
		{"remove it", func() []int { x.remove(extra, n); return nil }, nil, 1},
		{"remove one of the first", func() []int { x.remove(indexTestPattern(t, hostileGlob(7)), 7); return nil }, nil, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := x.globSteps
			if diff := cmp.Diff(tt.want, tt.do()); diff != "" {
				t.Errorf("values visited (-want +got):\n%s", diff)
			}
			if steps := x.globSteps - before; steps > tt.maxSteps {
				t.Errorf("%d glob children tried or compared with %d registered, want at most %d", steps, x.len(), tt.maxSteps)
			}
		})
	}
}

// TestIndexGlobsSharingKeyText registers families of 60,000 globs made to
// share text with a key written often, and checks that matching that key
// still tries few of them: they spread over their other grams.
func TestIndexGlobsSharingKeyText(t *testing.T) {
	const n, key = 60_000, "feature-42"
	tests := []struct {
		form     string // of the i'th glob
		maxSteps int
	}{
		{"*feature*zz%05d*", 100},
		{"feature*zz%05d*", 100},
		{"*feat*%05d", 100},
		{"*e*%05d*", 100},
		// The globs up to 99 have no piece rarer than "feature-4".
		{"*feature-4*%d*", 200},
	}
	for _, tt := range tests {
		t.Run(tt.form, func(t *testing.T) {
			x := newIndex[int]()
			var want []int
			for i := range n {
				p := indexTestPattern(t, fmt.Sprintf(tt.form, i))
				x.add(p, i)
				if p.Match(key) {
					want = append(want, i)
				}
			}
			before := x.globSteps
			if diff := cmp.Diff(want, indexMatches(x, key)); diff != "" {
				t.Errorf("match(%q) (-want +got):\n%s", key, diff)
			}
			if steps := x.globSteps - before; steps > tt.maxSteps {
				t.Errorf("match(%q) tried %d glob children of %d, want at most %d", key, steps, n, tt.maxSteps)
			}
		})
	}
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
