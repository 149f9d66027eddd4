package kv

import (
	"iter"
	"slices"
	"strings"
	"sync/atomic"
)

// ordered keeps the live entries sorted by key, for listings and
// snapshots: a B+tree whose leaves hold the entries, up to maxItems each,
// in key order. Setting or removing a key costs a search of a few levels
// and a shift of at most maxItems pointers in a node or two.
//
// The tree is copy-on-write, so that a reader can take the whole of it
// at one revision in constant time (freeze) and read it after letting go
// of orderMu: a snapshot of a million keys does not hold up the
// committer, nor does compaction. Each node is stamped with the
// generation of the tree that made it. freeze marks the tree frozen; the
// next set or remove then starts a new generation, and from then on
// copies every node of an older one before changing it (once: the copy
// is of the new generation), so the nodes a view holds never change. A
// write after a freeze thus copies the nodes on its path, a few hundred
// bytes each; writes with no freeze in between copy nothing.
//
// It is not safe for concurrent use, but for freeze (see there) and the
// views it returns; Store guards it with orderMu.
type ordered struct {
	root   *orderNode // nil when empty
	len    int
	gen    uint64      // the generation of the nodes that may change in place
	frozen atomic.Bool // set by freeze: nodes of gen must not change any more
}

const (
	// maxItems bounds the entries of a leaf and the children of an inner
	// node.
	maxItems = 64
	// minItems is the size below which a node that a remove shrank is
	// merged with a sibling or takes some of its items. (A node split off
	// by an insert at the end may start smaller: it is where the next
	// ascending keys go.)
	minItems = maxItems / 4
)

// orderNode is a leaf (entries; children nil) or an inner node (keys and
// children). In an inner node every key under children[i] sorts below
// keys[i], and every key under children[i+1] is keys[i] or above. All
// leaves are at the same depth; every node but the root holds at least
// one entry, or two children. A node whose gen is not the tree's never
// changes.
type orderNode struct {
	gen      uint64
	entries  []*Entry // leaf: in key order
	keys     []string
	children []*orderNode
}

func newOrdered() *ordered { return &ordered{} }

// newLeaf returns an empty leaf of the current generation.
func (o *ordered) newLeaf() *orderNode {
	return &orderNode{gen: o.gen, entries: make([]*Entry, 0, maxItems+1)}
}

func (n *orderNode) leaf() bool { return n.children == nil }

func (n *orderNode) size() int {
	if n.leaf() {
		return len(n.entries)
	}
	return len(n.children)
}

// searchEntries returns the index of the first entry whose key is key or
// above, and whether it is key.
func searchEntries(entries []*Entry, key string) (int, bool) {
	return slices.BinarySearchFunc(entries, key, func(e *Entry, key string) int {
		return strings.Compare(e.Key, key)
	})
}

// child returns the index of the child of n under which key is or would
// be.
func (n *orderNode) child(key string) int {
	i, found := slices.BinarySearch(n.keys, key)
	if found {
		i++
	}
	return i
}

// thaw starts a new generation if the tree was frozen since the last
// change. Only set and remove, which hold orderMu for writing, call it.
func (o *ordered) thaw() {
	if o.frozen.Load() {
		o.gen++
		o.frozen.Store(false)
	}
}

// mutable returns n, or a copy of it of the current generation when n is
// of an older one, which a view may hold. The caller puts the result
// where n was.
func (o *ordered) mutable(n *orderNode) *orderNode {
	if n.gen == o.gen {
		return n
	}
	c := &orderNode{gen: o.gen}
	if n.leaf() {
		c.entries = append(make([]*Entry, 0, maxItems+1), n.entries...)
		return c
	}
	c.keys = append(make([]string, 0, maxItems), n.keys...)
	c.children = append(make([]*orderNode, 0, maxItems+1), n.children...)
	return c
}

// mutableChild makes n's i'th child mutable and returns it. n is mutable.
func (o *ordered) mutableChild(n *orderNode, i int) *orderNode {
	c := o.mutable(n.children[i])
	n.children[i] = c
	return c
}

// set inserts e, or replaces the entry with the same key.
func (o *ordered) set(e *Entry) {
	o.thaw()
	if o.root == nil {
		o.root = o.newLeaf()
	}
	o.root = o.mutable(o.root)
	if sep, right := o.insert(o.root, e); right != nil {
		o.root = &orderNode{gen: o.gen, keys: []string{sep}, children: []*orderNode{o.root, right}}
	}
}

// insert sets e under n, which is mutable. When n overflows it splits:
// it returns the node split off to its right and the least key under
// that node.
func (o *ordered) insert(n *orderNode, e *Entry) (string, *orderNode) {
	if n.leaf() {
		i, found := searchEntries(n.entries, e.Key)
		if found {
			n.entries[i] = e
			return "", nil
		}
		n.entries = slices.Insert(n.entries, i, e)
		o.len++
		if len(n.entries) <= maxItems {
			return "", nil
		}
		at := len(n.entries) / 2
		if i == len(n.entries)-1 {
			at = maxItems // keys come in ascending: leave this leaf full
		}
		right := o.newLeaf()
		right.entries = append(right.entries, n.entries[at:]...)
		clear(n.entries[at:])
		n.entries = n.entries[:at]
		return right.entries[0].Key, right
	}
	i := n.child(e.Key)
	sep, split := o.insert(o.mutableChild(n, i), e)
	if split == nil {
		return "", nil
	}
	n.keys = slices.Insert(n.keys, i, sep)
	n.children = slices.Insert(n.children, i+1, split)
	if len(n.children) <= maxItems {
		return "", nil
	}
	at := len(n.children) / 2
	if i+1 == len(n.children)-1 {
		at = maxItems - 1 // ascending, as for a leaf; the new node gets two children
	}
	up := n.keys[at-1]
	right := &orderNode{gen: o.gen,
		keys:     append(make([]string, 0, maxItems), n.keys[at:]...),
		children: append(make([]*orderNode, 0, maxItems+1), n.children[at:]...)}
	clear(n.keys[at-1:])
	n.keys = n.keys[:at-1]
	clear(n.children[at:])
	n.children = n.children[:at]
	return up, right
}

// remove deletes key if present.
func (o *ordered) remove(key string) {
	if n, i := o.find(key); n == nil || i == len(n.entries) || n.entries[i].Key != key {
		return // copy nothing for a key that is not there
	}
	o.thaw()
	o.root = o.mutable(o.root)
	o.delete(o.root, key)
	o.len--
	for !o.root.leaf() && len(o.root.children) == 1 {
		o.root = o.root.children[0]
	}
	if o.root.leaf() && len(o.root.entries) == 0 {
		o.root = nil
	}
}

// delete removes key, which is there, from under n, which is mutable.
func (o *ordered) delete(n *orderNode, key string) {
	if n.leaf() {
		i, _ := searchEntries(n.entries, key)
		n.entries = slices.Delete(n.entries, i, i+1)
		return
	}
	i := n.child(key)
	c := o.mutableChild(n, i)
	o.delete(c, key)
	if c.size() < minItems && len(n.children) > 1 {
		o.rebalance(n, i)
	}
}

// rebalance merges n's i'th child with a sibling when both fit in one
// node, and otherwise shares their items evenly between them. n and its
// i'th child are mutable.
func (o *ordered) rebalance(n *orderNode, i int) {
	j := max(i-1, 0) // children[j] and children[j+1] are the pair
	l := o.mutableChild(n, j)
	r := n.children[j+1]
	if l.size()+r.size() <= maxItems {
		if l.leaf() {
			l.entries = append(l.entries, r.entries...)
		} else {
			l.keys = append(append(l.keys, n.keys[j]), r.keys...)
			l.children = append(l.children, r.children...)
		}
		n.keys = slices.Delete(n.keys, j, j+1)
		n.children = slices.Delete(n.children, j+1, j+2)
		return
	}
	r = o.mutableChild(n, j+1)
	if l.leaf() {
		all := slices.Concat(l.entries, r.entries)
		h := len(all) / 2
		clear(l.entries)
		clear(r.entries)
		l.entries = append(l.entries[:0], all[:h]...)
		r.entries = append(r.entries[:0], all[h:]...)
		n.keys[j] = r.entries[0].Key
		return
	}
	keys := slices.Concat(l.keys, []string{n.keys[j]}, r.keys)
	children := slices.Concat(l.children, r.children)
	h := len(children) / 2
	clear(l.keys)
	clear(l.children)
	clear(r.keys)
	clear(r.children)
	l.keys, l.children = append(l.keys[:0], keys[:h-1]...), append(l.children[:0], children[:h]...)
	n.keys[j] = keys[h-1]
	r.keys, r.children = append(r.keys[:0], keys[h:]...), append(r.children[:0], children[h:]...)
}

// find returns the leaf where key is or would be, and the index there of
// the first entry whose key is key or above (which may be past its last
// entry); nil when the tree is empty.
func (o *ordered) find(key string) (*orderNode, int) {
	n := o.root
	if n == nil {
		return nil, 0
	}
	for !n.leaf() {
		n = n.children[n.child(key)]
	}
	i, _ := searchEntries(n.entries, key)
	return n, i
}

// from returns the entries whose keys are key or above, in key order. The
// caller holds orderMu throughout, or is the committer, the only goroutine
// that changes the tree.
func (o *ordered) from(key string) iter.Seq[*Entry] {
	return orderView{o.root}.from(key)
}

// freeze returns the tree as it is, to read after letting go of orderMu:
// it stays as it is whatever is set or removed afterwards. It costs
// nothing but the copies that the next writes then make. The caller holds
// orderMu, for reading or writing; concurrent freezes are safe.
func (o *ordered) freeze() orderView {
	o.frozen.Store(true)
	return orderView{o.root}
}

// orderView is the ordered entries as they were when freeze took it. It
// needs no lock.
type orderView struct {
	root *orderNode
}

// from returns the entries whose keys are key or above, in key order.
func (v orderView) from(key string) iter.Seq[*Entry] {
	return func(yield func(*Entry) bool) {
		if v.root != nil {
			ascend(v.root, key, yield)
		}
	}
}

// prefixed returns the entries whose keys start with prefix, in key
// order.
func (v orderView) prefixed(prefix string) iter.Seq[*Entry] {
	return func(yield func(*Entry) bool) {
		for e := range v.from(prefix) {
			if !strings.HasPrefix(e.Key, prefix) || !yield(e) {
				return
			}
		}
	}
}

// ascend calls yield with each entry under n whose key is key or above,
// in key order, until yield returns false; it reports whether it went to
// the end.
func ascend(n *orderNode, key string, yield func(*Entry) bool) bool {
	if n.leaf() {
		i, _ := searchEntries(n.entries, key)
		for _, e := range n.entries[i:] {
			if !yield(e) {
				return false
			}
		}
		return true
	}
	for i := n.child(key); i < len(n.children); i++ {
		if !ascend(n.children[i], key, yield) {
			return false
		}
		key = "" // every key after the first child is above it
	}
	return true
}
