package kv

import (
	"iter"
	"slices"
	"strings"
)

// ordered keeps the live entries sorted by key, for listings and
// snapshots: a B+tree whose leaves hold the entries, up to maxItems each,
// in key order, and are linked in that order. Walking many keys copies
// their pointers leaf by leaf from contiguous arrays, where a list of one
// node per key waits on memory at every key: taking the pointers of
// 1,000,000 entries, which watch snapshots and compaction do under
// orderMu, is a copy of 8 MB (about 25 ms on a small machine, most of it
// the kernel handing out the new array's pages) where walking a skip list
// took 130 ms. Setting or removing a key costs a search of a few levels
// and a shift of at most maxItems pointers. It is not safe for concurrent
// use; Store guards it with orderMu.
type ordered struct {
	root *orderNode // nil when empty
	len  int
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

// orderNode is a leaf (entries and next; children nil) or an inner node
// (keys and children). In an inner node every key under children[i]
// sorts below keys[i], and every key under children[i+1] is keys[i] or
// above. All leaves are at the same depth; every node but the root holds
// at least one entry, or two children.
type orderNode struct {
	entries []*Entry   // leaf: in key order
	next    *orderNode // leaf: the leaf with the next keys; nil for the last

	keys     []string
	children []*orderNode
}

func newOrdered() *ordered { return &ordered{} }

func newLeaf() *orderNode { return &orderNode{entries: make([]*Entry, 0, maxItems+1)} }

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

// set inserts e, or replaces the entry with the same key.
func (o *ordered) set(e *Entry) {
	if o.root == nil {
		o.root = newLeaf()
	}
	if sep, right := o.insert(o.root, e); right != nil {
		o.root = &orderNode{keys: []string{sep}, children: []*orderNode{o.root, right}}
	}
}

// insert sets e under n. When n overflows it splits: it returns the node
// split off to its right and the least key under that node.
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
		right := newLeaf()
		right.entries = append(right.entries, n.entries[at:]...)
		right.next = n.next
		clear(n.entries[at:])
		n.entries = n.entries[:at]
		n.next = right
		return right.entries[0].Key, right
	}
	i := n.child(e.Key)
	sep, split := o.insert(n.children[i], e)
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
	right := &orderNode{keys: slices.Clone(n.keys[at:]), children: slices.Clone(n.children[at:])}
	clear(n.keys[at-1:])
	n.keys = n.keys[:at-1]
	clear(n.children[at:])
	n.children = n.children[:at]
	return up, right
}

// remove deletes key if present.
func (o *ordered) remove(key string) {
	if o.root == nil || !o.delete(o.root, key) {
		return
	}
	o.len--
	for !o.root.leaf() && len(o.root.children) == 1 {
		o.root = o.root.children[0]
	}
	if o.root.leaf() && len(o.root.entries) == 0 {
		o.root = nil
	}
}

// delete removes key from under n, and reports whether it was there.
func (o *ordered) delete(n *orderNode, key string) bool {
	if n.leaf() {
		i, found := searchEntries(n.entries, key)
		if found {
			n.entries = slices.Delete(n.entries, i, i+1)
		}
		return found
	}
	i := n.child(key)
	if !o.delete(n.children[i], key) {
		return false
	}
	if n.children[i].size() < minItems && len(n.children) > 1 {
		n.rebalance(i)
	}
	return true
}

// rebalance merges children[i] with a sibling when both fit in one node,
// and otherwise shares their items evenly between them.
func (n *orderNode) rebalance(i int) {
	j := max(i-1, 0) // children[j] and children[j+1] are the pair
	l, r := n.children[j], n.children[j+1]
	if l.size()+r.size() <= maxItems {
		if l.leaf() {
			l.entries = append(l.entries, r.entries...)
			l.next = r.next
		} else {
			l.keys = append(append(l.keys, n.keys[j]), r.keys...)
			l.children = append(l.children, r.children...)
		}
		n.keys = slices.Delete(n.keys, j, j+1)
		n.children = slices.Delete(n.children, j+1, j+2)
		return
	}
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
	l.keys, l.children = slices.Clone(keys[:h-1]), slices.Clone(children[:h])
	n.keys[j] = keys[h-1]
	r.keys, r.children = slices.Clone(keys[h:]), slices.Clone(children[h:])
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

// from returns the entries whose keys are key or above, in key order.
func (o *ordered) from(key string) iter.Seq[*Entry] {
	return func(yield func(*Entry) bool) {
		for n, i := o.find(key); n != nil; n, i = n.next, 0 {
			for _, e := range n.entries[i:] {
				if !yield(e) {
					return
				}
			}
		}
	}
}

// rangeOf returns the entries whose keys start with prefix, in key order.
// It reads keys only in the two searches that find the ends of the range,
// and copies the pointers in between a leaf at a time.
func (o *ordered) rangeOf(prefix string) []*Entry {
	var end *orderNode // nil: the range runs to the last key
	endAt := 0
	if after, ok := prefixEnd(prefix); ok {
		end, endAt = o.find(after)
	}
	var out []*Entry
	if prefix == "" {
		out = make([]*Entry, 0, o.len)
	}
	for n, i := o.find(prefix); n != nil; n, i = n.next, 0 {
		if n == end {
			return append(out, n.entries[i:endAt]...)
		}
		out = append(out, n.entries[i:]...)
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
