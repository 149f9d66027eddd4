package kv

import (
	"math"
	"strings"
)

// index finds the values registered under the patterns that match a key. It
// is a tree over the "/"-separated segments of the patterns, in the manner
// of MQTT and NATS subject trees. A node's children by literal segment are
// in a map, as is its child by "*"; its children by other segments holding
// "*" ("user-*", "*-v2-*") are in a globChildren, which finds the few of
// them that may match a key segment without trying the others.
//
// So matching a key costs about the length of the key, plus the matching
// registrations, plus a try for each glob child met on the way that is
// filed under a gram the key's segment holds (see globChildren): not the
// number or the length of the patterns registered. Like any such tree, it
// also walks the nodes of patterns that match the key's first segments
// and not the rest: "*/*/x" and "c*/*/y" take a key "config/app/z" two
// segments down, each along its own path. Adding or removing a
// registration costs about the length of its pattern, whatever else is
// registered.
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

	epoch     uint64    // numbers the calls of match, so that each tries a gram's children once
	matching  bool      // match is running: remove leaves the shape of the tree alone
	pending   []Pattern // removed while matching: their emptied nodes are freed after the match
	globSteps int       // glob children tried by match or looked up by add and remove; for tests
}

// indexNode is reached by the segments of a pattern's prefix.
type indexNode[V comparable] struct {
	lits  map[string]*indexNode[V] // children by literal segment
	star  *indexNode[V]            // child by the segment "*", which matches every segment
	globs *globChildren[V]         // children by other segments holding "*"; nil when none
	more  map[V]int                // pattern ends with "**" here: one or more segments remain
	end   map[V]int                // pattern ends here
}

// newIndex returns an empty index.
func newIndex[V comparable]() *index[V] { return new(index[V]) }

// len returns the number of distinct registrations.
func (x *index[V]) len() int { return x.n }

// add registers v under p. It costs about len(p), plus a few dozen map
// lookups for each glob segment that p is the first to register.
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
		n = n.child(x, seg)
		if !more {
			x.n += countUp(&n.end, v)
			return
		}
		s = rest
	}
}

// remove takes back one add(p, v); it does nothing when there was none.
// Nodes left empty are freed, so the tree does not grow under churn: at
// once, or when the running match returns if remove is called from its
// visit function. It costs about len(p).
func (x *index[V]) remove(p Pattern, v V) {
	if p.s == "" {
		return
	}
	gone := x.root.remove(x, p.s, v, !x.matching)
	x.n -= gone
	if gone > 0 && x.matching {
		x.pending = append(x.pending, p)
	}
}

// match calls visit with the value of every registration whose pattern
// matches key, in no particular order. A value registered under several
// matching patterns is visited once for each: callers that want each value
// once dedupe. The key must be valid (see ValidateKey). match does not
// allocate, unless visit removes registrations: it then remembers their
// patterns, in a slice it reuses, to free their emptied nodes afterwards.
//
// visit may remove registrations, but not add any: every registration that
// matches key and is not removed during the call is visited, and one
// removed before it was reached is not. So a caller that removes all of a
// value's registrations when visiting it sees that value once.
func (x *index[V]) match(key string, visit func(V)) {
	if key == "" {
		return
	}
	x.epoch++
	x.matching = true
	x.root.match(x, key, visit)
	x.matching = false
	if len(x.pending) > 0 {
		x.prunePending()
	}
}

// prunePending frees the nodes emptied by the removals made during the
// match that returned.
func (x *index[V]) prunePending() {
	for _, p := range x.pending {
		x.root.prune(x, p.s)
	}
	clear(x.pending)
	x.pending = x.pending[:0]
	if cap(x.pending) > 1024 {
		x.pending = nil // do not hold on to a burst of drops
	}
}

// match visits the registrations below n that match key, the rest of the
// key after the segments that led to n; key holds one or more segments.
// While x.matching, the shape of the tree below n stays as it is: visit
// only takes counts down.
func (n *indexNode[V]) match(x *index[V], key string, visit func(V)) {
	for v := range n.more {
		visit(v)
	}
	seg, rest, more := strings.Cut(key, "/")
	if c := n.lits[seg]; c != nil {
		c.matchRest(x, rest, more, visit)
	}
	if n.star != nil {
		n.star.matchRest(x, rest, more, visit)
	}
	if n.globs != nil {
		n.globs.match(x, seg, rest, more, visit)
	}
}

func (n *indexNode[V]) matchRest(x *index[V], rest string, more bool, visit func(V)) {
	if more {
		n.match(x, rest, visit)
		return
	}
	for v := range n.end {
		visit(v)
	}
}

// child returns the child of n for the pattern segment seg, made if needed.
func (n *indexNode[V]) child(x *index[V], seg string) *indexNode[V] {
	if c := n.find(x, seg); c != nil {
		return c
	}
	c := new(indexNode[V])
	switch {
	case seg == "*":
		n.star = c
	case strings.IndexByte(seg, '*') < 0:
		if n.lits == nil {
			n.lits = make(map[string]*indexNode[V])
		}
		n.lits[seg] = c
	default:
		if n.globs == nil {
			n.globs = newGlobChildren[V]()
		}
		n.globs.add(seg, c)
	}
	return c
}

// find returns the child of n for the pattern segment seg, or nil.
func (n *indexNode[V]) find(x *index[V], seg string) *indexNode[V] {
	switch {
	case seg == "*":
		return n.star
	case strings.IndexByte(seg, '*') < 0:
		return n.lits[seg]
	case n.globs == nil:
		return nil
	}
	x.globSteps++
	if c := n.globs.bySeg[seg]; c != nil {
		return c.node
	}
	return nil
}

// remove takes back one registration of v under the pattern text s below
// n and returns how many distinct registrations went away (0 or 1). When
// free is set, it also frees the nodes it leaves empty.
func (n *indexNode[V]) remove(x *index[V], s string, v V, free bool) int {
	seg, rest, more := strings.Cut(s, "/")
	if seg == "**" { // only ever the last segment
		return countDown(&n.more, v)
	}
	c := n.find(x, seg)
	if c == nil {
		return 0
	}
	var gone int
	if more {
		gone = c.remove(x, rest, v, free)
	} else {
		gone = countDown(&c.end, v)
	}
	if free && c.empty() {
		n.drop(seg)
	}
	return gone
}

// prune frees the empty nodes on the path of the pattern text s below n.
func (n *indexNode[V]) prune(x *index[V], s string) {
	seg, rest, more := strings.Cut(s, "/")
	if seg == "**" {
		return
	}
	c := n.find(x, seg)
	if c == nil {
		return
	}
	if more {
		c.prune(x, rest)
	}
	if c.empty() {
		n.drop(seg)
	}
}

func (n *indexNode[V]) empty() bool {
	return len(n.lits) == 0 && n.star == nil && n.globs == nil && len(n.more) == 0 && len(n.end) == 0
}

// drop forgets the child of n for the pattern segment seg. It must not be
// called while a match is running.
func (n *indexNode[V]) drop(seg string) {
	switch {
	case seg == "*":
		n.star = nil
	case strings.IndexByte(seg, '*') < 0:
		delete(n.lits, seg)
		if len(n.lits) == 0 {
			n.lits = nil
		}
	case n.globs != nil:
		n.globs.remove(seg)
		if len(n.globs.bySeg) == 0 {
			n.globs = nil
		}
	}
}

// globChildren are the children of a node by segments that hold "*" and
// some literal text, such as "user-*" or "*-v2-*": a map by segment text,
// for add and remove, and a filter, for match, that gives the few children
// that may match a key segment.
//
// The filter files each child under one gram: up to gramMax bytes of its
// literal text that every segment it matches must hold, anchored at the
// start (from its text before the first "*"), at the end (after the last
// "*"), or anywhere (from a piece between two stars). To match a key
// segment, the filter looks up that segment's own grams, of the anchorings
// and lengths that some child is filed under: at most gramMax anchored at
// each end, and gramMax for each byte of the segment for the unanchored
// ones. These are lookups of integers: they do not allocate. Each gram's
// children are then tried, once a match however often the gram occurs, with
// their compiled glob. A child whose gram the segment lacks cannot match
// it, so the filter loses nothing.
//
// The work is thus bounded by the key segment's length and the children
// that share a gram with it, not by the number or length of the globs: a
// flood of globs like "*q*q*q*...*q01234*" costs nothing to a key without
// a "q". Children filed under a gram of a key segment are each tried, at
// about the length of the segment a try (their literal text must fit in
// it, and matching stops at the first piece it lacks). So a child's gram
// is picked by weighing how long it is against how many children have it
// already (see gramShift): globs that all hold the text of a key often
// written, "*feature*zz0001*", "*feature*zz0002*" and so on, spread over
// their other grams. Only globs with no other good gram, such as
// "*feature*7*", stay together; a cap on each client's globs bounds those.
type globChildren[V comparable] struct {
	bySeg  map[string]*globChild[V]
	byGram map[gram]*gramChildren[V]
	filed  [gramAnywhere + 1][gramMax + 1]int // children by anchoring and length of their gram
}

// globChild is a child by a segment holding "*", compiled.
type globChild[V comparable] struct {
	glob glob
	node *indexNode[V]
	gram gram
	at   int // index in byGram[gram].children
}

// gramChildren are the glob children filed under one gram.
type gramChildren[V comparable] struct {
	children []*globChild[V]
	tried    uint64 // the index's epoch when match last tried them
}

// gram is up to gramMax bytes of literal text and where a segment must
// hold it, packed into an integer: a byte a byte from the low end, then the
// length, then the anchoring.
type gram uint64

// gramMax is the longest gram, in bytes: a longer one would filter better
// but multiply the lookups match makes for each byte of a key segment.
const gramMax = 4

// Where a gram must be found in a segment.
const (
	gramStart    = iota // the segment starts with it
	gramEnd             // the segment ends with it
	gramAnywhere        // the segment holds it
)

// makeGram packs b, of at most gramMax bytes, with its anchoring.
func makeGram(where int, b string) gram {
	g := gram(where)<<40 | gram(len(b))<<32
	for i := 0; i < len(b); i++ {
		g |= gram(b[i]) << (8 * i)
	}
	return g
}

func (g gram) where() int { return int(g >> 40) }
func (g gram) len() int   { return int(g >> 32 & 0xff) }

func newGlobChildren[V comparable]() *globChildren[V] {
	return &globChildren[V]{
		bySeg:  make(map[string]*globChild[V]),
		byGram: make(map[gram]*gramChildren[V]),
	}
}

// add adds node as the child for seg, which holds "*" and some other text
// and is not there yet, and files it under its gram.
func (cs *globChildren[V]) add(seg string, node *indexNode[V]) {
	c := &globChild[V]{glob: compileGlob(seg), node: node}
	c.gram = cs.pickGram(&c.glob)
	gc := cs.byGram[c.gram]
	if gc == nil {
		gc = new(gramChildren[V])
		cs.byGram[c.gram] = gc
	}
	c.at = len(gc.children)
	gc.children = append(gc.children, c)
	cs.bySeg[seg] = c
	cs.filed[c.gram.where()][c.gram.len()]++
}

// remove removes the child for seg, if any, from the map and the filter.
// It must not be called while a match is running: it moves another child
// of the same gram into the freed place.
func (cs *globChildren[V]) remove(seg string) {
	c := cs.bySeg[seg]
	if c == nil {
		return
	}
	delete(cs.bySeg, seg)
	cs.filed[c.gram.where()][c.gram.len()]--
	gc := cs.byGram[c.gram]
	last := len(gc.children) - 1
	moved := gc.children[last]
	gc.children[c.at], moved.at = moved, c.at
	gc.children[last] = nil
	gc.children = gc.children[:last]
	if last == 0 {
		delete(cs.byGram, c.gram)
	}
}

// pickGrams is how many unanchored grams of each length pickGram weighs at
// most, so that adding a glob costs a bounded number of lookups, besides
// one pass over its text.
const pickGrams = 16

// pickGram returns the gram to file g under: the one whose children are
// likely the fewest to try, by the cost of gramShift. It weighs the gram
// anchored at each end and, from each piece between stars, the piece
// itself when shorter than gramMax, or its first pickGrams windows of
// gramMax bytes.
func (cs *globChildren[V]) pickGram(g *glob) gram {
	var best gram
	bestCost := uint64(math.MaxUint64)
	consider := func(where int, b string) {
		shift := gramShift(where, len(b))
		if 1<<shift >= bestCost {
			return // no better even with no children
		}
		gr := makeGram(where, b)
		cost := uint64(1) << shift
		if gc := cs.byGram[gr]; gc != nil {
			cost *= uint64(len(gc.children) + 1)
		}
		if cost < bestCost {
			best, bestCost = gr, cost
		}
	}
	if prefix := g.text[:g.first]; prefix != "" {
		consider(gramStart, prefix[:min(len(prefix), gramMax)])
	}
	if suffix := g.text[g.last+1:]; suffix != "" {
		consider(gramEnd, suffix[len(suffix)-min(len(suffix), gramMax):])
	}
	// at[l] holds where the unanchored grams of l bytes end.
	var at [gramMax + 1][pickGrams]int
	var n [gramMax + 1]int
	run := 0
	for i := g.first + 1; i <= g.last; i++ {
		switch {
		case g.text[i] == '*':
			if run < gramMax && run > 0 && n[run] < pickGrams {
				at[run][n[run]] = i - 1
				n[run]++
			}
			run = 0
		case run+1 >= gramMax && n[gramMax] < pickGrams:
			at[gramMax][n[gramMax]] = i
			n[gramMax]++
			fallthrough
		default:
			run++
		}
	}
	for l := gramMax; l > 0; l-- {
		for _, i := range at[l][:n[l]] {
			consider(gramAnywhere, g.text[i+1-l:i+1])
		}
	}
	return best
}

// gramShift is the cost of filing a glob under a gram of l bytes anchored
// as where says, as the power of two to multiply by its children plus one:
// a byte less makes a gram about 16 times as common in keys, and so does
// an anchor's absence, about 4 times. So a glob goes under its longest
// gram, an anchored one first, until that is crowded: then under a shorter
// or unanchored gram with fewer children. Globs that all hold the same
// text, perhaps the text of keys often written, spread over their other
// grams.
func gramShift(where, l int) uint {
	shift := uint(4 * (gramMax - l))
	if where == gramAnywhere {
		shift += 2
	}
	return shift
}

// match tries, against the key segment seg, the children filed under the
// grams seg holds, and goes on below those that match it with rest and
// more, as indexNode.matchRest does.
func (cs *globChildren[V]) match(x *index[V], seg, rest string, more bool, visit func(V)) {
	for l := 1; l <= min(len(seg), gramMax); l++ {
		if cs.filed[gramStart][l] > 0 {
			cs.try(x, makeGram(gramStart, seg[:l]), seg, rest, more, visit)
		}
		if cs.filed[gramEnd][l] > 0 {
			cs.try(x, makeGram(gramEnd, seg[len(seg)-l:]), seg, rest, more, visit)
		}
		if cs.filed[gramAnywhere][l] > 0 {
			for i := 0; i+l <= len(seg); i++ {
				cs.try(x, makeGram(gramAnywhere, seg[i:i+l]), seg, rest, more, visit)
			}
		}
	}
}

// try tries the children filed under gr against seg, unless this match
// tried them already.
func (cs *globChildren[V]) try(x *index[V], gr gram, seg, rest string, more bool, visit func(V)) {
	gc := cs.byGram[gr]
	if gc == nil || gc.tried == x.epoch {
		return
	}
	gc.tried = x.epoch
	for _, c := range gc.children {
		x.globSteps++
		if c.glob.match(seg) {
			c.node.matchRest(x, rest, more, visit)
		}
	}
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
