package kv

import "math/rand/v2"

// ordered keeps the live entries sorted by key, for listings and
// snapshots: a skip list with p = 1/4. It is not safe for concurrent use;
// Store guards it with orderMu.
type ordered struct {
	head  orderNode
	level int
	len   int
	rng   *rand.PCG
	// finger is the search path of the last set or remove: at each level,
	// a node in the list whose key is below the key of that operation (the
	// head counts as below every key). A set of a larger key, as when
	// loading a snapshot (sorted) or a log written in roughly key order,
	// searches from there instead of from the head.
	finger [maxLevel]*orderNode
}

const maxLevel = 20 // 4^20 keys before the list degrades

type orderNode struct {
	e    *Entry
	next []*orderNode
	// one is next's backing array for nodes of level 1, three in four of
	// them, so that most nodes are a single allocation.
	one [1]*orderNode
}

func newOrdered() *ordered {
	o := &ordered{
		head:  orderNode{next: make([]*orderNode, maxLevel)},
		level: 1,
		rng:   rand.NewPCG(1, 2),
	}
	for i := range o.finger {
		o.finger[i] = &o.head
	}
	return o
}

// findPrev fills prev with the last node at each level whose key is < key.
func (o *ordered) findPrev(key string, prev *[maxLevel]*orderNode) *orderNode {
	x := &o.head
	for i := o.level - 1; i >= 0; i-- {
		for x.next[i] != nil && x.next[i].e.Key < key {
			x = x.next[i]
		}
		prev[i] = x
	}
	return x.next[0]
}

// findPrevFinger is findPrev starting from the finger when key sorts after
// it. Only set and remove, which hold orderMu for writing, call it.
func (o *ordered) findPrevFinger(key string, prev *[maxLevel]*orderNode) *orderNode {
	f := &o.finger
	if f[0] == &o.head || f[0].e.Key >= key {
		return o.findPrev(key, prev)
	}
	// Every finger node sorts below key. From the lowest level h at which
	// the finger's successor does not, the finger is already the
	// predecessor at h and at every level above it.
	h := 0
	for h < o.level && f[h].next[h] != nil && f[h].next[h].e.Key < key {
		h++
	}
	for i := h; i < o.level; i++ {
		prev[i] = f[i]
	}
	x := &o.head
	if h < o.level {
		x = f[h]
	}
	for i := h - 1; i >= 0; i-- {
		// Start from whichever of x and the finger lies further right.
		if y := f[i]; y != &o.head && (x == &o.head || y.e.Key > x.e.Key) {
			x = y
		}
		for x.next[i] != nil && x.next[i].e.Key < key {
			x = x.next[i]
		}
		prev[i] = x
	}
	return prev[0].next[0]
}

// set inserts e, or replaces the entry with the same key.
func (o *ordered) set(e *Entry) {
	prev := &o.finger
	path := o.headPath()
	n := o.findPrevFinger(e.Key, &path)
	*prev = path
	if n != nil && n.e.Key == e.Key {
		n.e = e
		return
	}
	lvl := 1
	for lvl < maxLevel && o.rng.Uint64()&3 == 0 {
		lvl++
	}
	if lvl > o.level {
		for i := o.level; i < lvl; i++ {
			prev[i] = &o.head
		}
		o.level = lvl
	}
	n = &orderNode{e: e}
	if lvl == 1 {
		n.next = n.one[:]
	} else {
		n.next = make([]*orderNode, lvl)
	}
	for i := 0; i < lvl; i++ {
		n.next[i] = prev[i].next[i]
		prev[i].next[i] = n
		prev[i] = n // n sorts below any key the next set may take the finger for
	}
	o.len++
}

// headPath returns a search path that is the head at every level, which
// the searches then fill up to the list's level.
func (o *ordered) headPath() (p [maxLevel]*orderNode) {
	for i := range p {
		p[i] = &o.head
	}
	return p
}

// remove deletes key if present.
func (o *ordered) remove(key string) {
	prev := o.headPath()
	n := o.findPrevFinger(key, &prev)
	o.finger = prev // nodes below key: n is not one of them
	if n == nil || n.e.Key != key {
		return
	}
	for i := 0; i < len(n.next); i++ {
		prev[i].next[i] = n.next[i]
	}
	for o.level > 1 && o.head.next[o.level-1] == nil {
		o.level--
	}
	o.len--
}

// seek returns the first node whose key is >= key, or nil. Walk on with
// node.next[0].
func (o *ordered) seek(key string) *orderNode {
	var prev [maxLevel]*orderNode
	return o.findPrev(key, &prev)
}

// rangeOf returns the entries whose keys start with prefix, in key order.
// It reads keys only in the two searches that find the ends of the range,
// then follows the nodes in between: its cost is those searches and one
// pointer copied per entry returned.
func (o *ordered) rangeOf(prefix string) []*Entry {
	var end *orderNode // nil: the range runs to the last key
	if after, ok := prefixEnd(prefix); ok {
		end = o.seek(after)
	}
	var out []*Entry
	if prefix == "" {
		out = make([]*Entry, 0, o.len)
	}
	for n := o.seek(prefix); n != end; n = n.next[0] {
		out = append(out, n.e)
	}
	return out
}

// prefixEnd returns the least key above every key that starts with
// prefix; ok is false when there is none (prefix is empty or all 0xff).
func prefixEnd(prefix string) (end string, ok bool) {
	for i := len(prefix) - 1; i >= 0; i-- {
		if prefix[i] != 0xff {
			return prefix[:i] + string([]byte{prefix[i] + 1}), true
		}
	}
	return "", false
}
