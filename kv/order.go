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
}

const maxLevel = 20 // 4^20 keys before the list degrades

type orderNode struct {
	e    *Entry
	next []*orderNode
}

func newOrdered() *ordered {
	return &ordered{
		head:  orderNode{next: make([]*orderNode, maxLevel)},
		level: 1,
		rng:   rand.NewPCG(1, 2),
	}
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

// set inserts e, or replaces the entry with the same key.
func (o *ordered) set(e *Entry) {
	var prev [maxLevel]*orderNode
	if n := o.findPrev(e.Key, &prev); n != nil && n.e.Key == e.Key {
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
	n := &orderNode{e: e, next: make([]*orderNode, lvl)}
	for i := 0; i < lvl; i++ {
		n.next[i] = prev[i].next[i]
		prev[i].next[i] = n
	}
	o.len++
}

// remove deletes key if present.
func (o *ordered) remove(key string) {
	var prev [maxLevel]*orderNode
	n := o.findPrev(key, &prev)
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
