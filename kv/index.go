package kv

import "strings"

// index finds the values registered under the patterns that match a key. It
// is a tree over the "/"-separated segments of the patterns, in the manner
// of MQTT and NATS subject trees: matching a key costs about the depth of
// the key plus the number of matching registrations plus the glob segments
// ("user-*") met on the way, not the number of patterns registered.
//
// A registration is a (pattern, value) pair. Registrations are counted: a
// pair added twice must be removed twice to go away, but match visits it
// once. The zero Pattern matches nothing and is ignored.
//
// An index is not safe for concurrent use: the caller holds a lock around
// every call, match included. The visit function given to match may call
// remove, though, as a publisher dropping a slow subscriber does.
type index[V comparable] struct {
	root indexNode[V]
	n    int // distinct registrations
}

// indexNode is reached by the segments of a pattern's prefix.
type indexNode[V comparable] struct {
	lits  map[string]*indexNode[V] // children by literal segment
	globs []indexGlob[V]           // children by segment holding "*"; replaced, never changed in place, on removal
	more  map[V]int                // pattern ends with "**" here: one or more segments remain
	end   map[V]int                // pattern ends here
}

type indexGlob[V comparable] struct {
	seg  string
	node *indexNode[V]
}

// newIndex returns an empty index.
func newIndex[V comparable]() *index[V] { return new(index[V]) }

// len returns the number of distinct registrations.
func (x *index[V]) len() int { return x.n }

// add registers v under p. It costs the depth of p plus, for each glob
// segment of p, the number of glob siblings.
func (x *index[V]) add(p Pattern, v V) {
	if p.s == "" {
		return
	}
	n := &x.root
	s := p.s
	for {
		seg, rest, more := strings.Cut(s, "/")
		if p.tail && !more {
			x.n += countUp(&n.more, v)
			return
		}
		n = n.child(seg)
		if !more {
			x.n += countUp(&n.end, v)
			return
		}
		s = rest
	}
}

// remove takes back one add(p, v); it does nothing when there was none.
// Nodes left empty are freed, so the tree does not grow under churn.
func (x *index[V]) remove(p Pattern, v V) {
	if p.s == "" {
		return
	}
	x.n -= x.root.remove(p.s, v)
}

// match calls visit with the value of every registration whose pattern
// matches key, in no particular order. A value registered under several
// matching patterns is visited once for each: callers that want each value
// once dedupe. The key must be valid (see ValidateKey). match does not
// allocate.
//
// visit may remove registrations, but not add any: every registration that
// matches key and is not removed during the call is visited, and one
// removed before it was reached is not. So a caller that removes all of a
// value's registrations when visiting it sees that value once.
func (x *index[V]) match(key string, visit func(V)) {
	if key == "" {
		return
	}
	x.root.match(key, visit)
}

// match visits the registrations below n that match key, the rest of the
// key after the segments that led to n; key holds one or more segments.
func (n *indexNode[V]) match(key string, visit func(V)) {
	for v := range n.more {
		visit(v)
	}
	seg, rest, more := strings.Cut(key, "/")
	if c := n.lits[seg]; c != nil {
		c.matchRest(rest, more, visit)
	}
	for _, g := range n.globs { // a copy: visit may replace n.globs
		if globMatch(g.seg, seg) {
			g.node.matchRest(rest, more, visit)
		}
	}
}

func (n *indexNode[V]) matchRest(rest string, more bool, visit func(V)) {
	if more {
		n.match(rest, visit)
		return
	}
	for v := range n.end {
		visit(v)
	}
}

// child returns the child of n for the pattern segment seg, made if needed.
func (n *indexNode[V]) child(seg string) *indexNode[V] {
	if c := n.find(seg); c != nil {
		return c
	}
	c := new(indexNode[V])
	if strings.IndexByte(seg, '*') >= 0 {
		n.globs = append(n.globs, indexGlob[V]{seg: seg, node: c})
		return c
	}
	if n.lits == nil {
		n.lits = make(map[string]*indexNode[V])
	}
	n.lits[seg] = c
	return c
}

// find returns the child of n for the pattern segment seg, or nil.
func (n *indexNode[V]) find(seg string) *indexNode[V] {
	if strings.IndexByte(seg, '*') < 0 {
		return n.lits[seg]
	}
	for _, g := range n.globs {
		if g.seg == seg {
			return g.node
		}
	}
	return nil
}

// remove takes back one registration of v under the pattern text s below
// n, frees the nodes it leaves empty, and returns how many distinct
// registrations went away (0 or 1).
func (n *indexNode[V]) remove(s string, v V) int {
	seg, rest, more := strings.Cut(s, "/")
	if seg == "**" { // only ever the last segment
		return countDown(&n.more, v)
	}
	c := n.find(seg)
	if c == nil {
		return 0
	}
	var gone int
	if more {
		gone = c.remove(rest, v)
	} else {
		gone = countDown(&c.end, v)
	}
	if c.empty() {
		n.drop(seg)
	}
	return gone
}

func (n *indexNode[V]) empty() bool {
	return len(n.lits) == 0 && len(n.globs) == 0 && len(n.more) == 0 && len(n.end) == 0
}

// drop forgets the child of n for the pattern segment seg. Glob children
// go to a new slice, so that a match ranging over the old one, in a call
// that removes, still sees every other child.
func (n *indexNode[V]) drop(seg string) {
	if strings.IndexByte(seg, '*') < 0 {
		delete(n.lits, seg)
		if len(n.lits) == 0 {
			n.lits = nil
		}
		return
	}
	var globs []indexGlob[V]
	for _, g := range n.globs {
		if g.seg != seg {
			globs = append(globs, g)
		}
	}
	n.globs = globs
}

// countUp adds one to the count of v in *m, making the map if needed, and
// returns 1 when v is new there.
func countUp[V comparable](m *map[V]int, v V) int {
	if *m == nil {
		*m = make(map[V]int)
	}
	(*m)[v]++
	if (*m)[v] == 1 {
		return 1
	}
	return 0
}

// countDown takes one from the count of v in *m, forgetting v at zero and
// the map when it empties, and returns 1 when v went away.
func countDown[V comparable](m *map[V]int, v V) int {
	c, ok := (*m)[v]
	switch {
	case !ok:
		return 0
	case c > 1:
		(*m)[v] = c - 1
		return 0
	}
	delete(*m, v)
	if len(*m) == 0 {
		*m = nil
	}
	return 1
}
