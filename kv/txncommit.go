package kv

import (
	"fmt"
	"slices"
	"strings"
)

// planned is a change that a transaction would make, and the key's entry
// before and after it (nil: absent).
type planned struct {
	ch      Change
	prev, e *Entry
}

// txn decides the transaction o against the batch's view of the keys at
// now, in this order: the keys it names expire when their time has run
// out; every condition is checked; the keys its TxnDeletePrefix ops
// remove are found; then its size (MaxTxnOps), ops that touch one key,
// and the store's limits. It sets o's result, and adds its changes, all
// at one new revision, to the batch's. Only the committer calls it.
func (c *committer) txn(o *op, now int64) {
	t := o.txn
	for _, cmp := range t.If {
		c.live(cmp.Key, now)
	}
	curs := c.curs[:0] // by op of Then: its key's entry (no other op changes it)
	for _, op := range t.Then {
		var cur *Entry
		if op.Kind != TxnDeletePrefix {
			cur = c.live(op.Key, now)
		}
		curs = append(curs, cur)
	}
	defer func() {
		clear(curs)
		c.curs = curs[:0]
	}()
	var failed []Failure
	for _, cmp := range t.If {
		if cur := c.lookup(cmp.Key); !cmp.Cond.Holds(cur) {
			failed = append(failed, Failure{Key: cmp.Key, Revision: revisionOf(cur)})
		}
	}
	if failed != nil {
		o.res = result{err: &TxnFailedError{Failed: failed}}
		return
	}
	removed, err := c.removals(t, now)
	if err != nil {
		o.res = result{err: err}
		return
	}

	rev := c.rev + 1
	plan := c.plan[:0]
	del := func(key string, cur *Entry) {
		if cur != nil {
			plan = append(plan, planned{ch: Change{Op: OpDelete, Key: key, Revision: rev, PrevRevision: cur.Revision}, prev: cur})
		}
	}
	for i, op := range t.Then {
		switch op.Kind {
		case TxnPut:
			var expires int64
			if t.expires != nil {
				expires = t.expires[i]
			}
			ch := Change{Op: OpPut, Key: op.Key, Value: op.Value, ContentType: op.ContentType, Expires: expires,
				Revision: rev, PrevRevision: revisionOf(curs[i])}
			e := &Entry{Key: op.Key, Value: op.Value, ContentType: op.ContentType, Revision: rev, Expires: expires}
			plan = append(plan, planned{ch: ch, prev: curs[i], e: e})
		case TxnDelete:
			del(op.Key, curs[i])
		case TxnDeletePrefix:
			for _, key := range removed[i] {
				del(key, c.lookup(key))
			}
		}
	}
	defer func() {
		clear(plan) // let the values go
		c.plan = plan[:0]
	}()
	if len(plan) == 0 {
		o.res, t.res = result{}, TxnResult{Revision: c.rev}
		return
	}
	var keys, bytes int64
	for _, p := range plan {
		if p.prev != nil {
			keys--
			bytes -= int64(len(p.prev.Value))
		}
		if p.e != nil {
			keys++
			bytes += int64(len(p.e.Value))
		}
	}
	if err := c.roomFor(keys, bytes); err != nil {
		o.res = result{err: err}
		return
	}
	c.rev = rev
	res := TxnResult{Revision: rev, Changes: make([]TxnChange, len(plan))}
	for i, p := range plan {
		c.add(p.ch, p.prev, p.e)
		res.Changes[i] = TxnChange{Key: p.ch.Key, Op: p.ch.Op, PrevRevision: p.ch.PrevRevision}
	}
	c.txns++
	c.txnN += int64(len(plan))
	o.res, t.res = result{}, res
}

// removals returns, by op of t.Then, the keys that each TxnDeletePrefix
// removes, in key order (nil when t has none), or the error of a
// transaction that would make more than MaxTxnOps changes (a
// *TxnSizeError) or in which a key removed by a TxnDeletePrefix is also
// another op's (a *TxnOpError on the later of the two).
func (c *committer) removals(t *txnReq, now int64) ([][]string, error) {
	limit := c.s.opts.MaxTxnOps
	var removed [][]string
	total := 0
	for i, op := range t.Then {
		if op.Kind != TxnDeletePrefix {
			total++
			continue
		}
		if removed == nil {
			removed = make([][]string, len(t.Then))
		}
		keys, n := c.prefixed(op.Key, now, limit-total)
		removed[i] = keys
		total += n
	}
	if total > limit {
		return nil, &TxnSizeError{Ops: total, Max: limit, Limit: "MaxTxnOps"}
	}
	if removed == nil {
		return nil, nil
	}
	changedBy := make(map[string]int, total) // key: the op of Then that changes it
	claim := func(key string, i int) error {
		if j, ok := changedBy[key]; ok {
			return &TxnOpError{Part: "then", Index: i,
				Err: fmt.Errorf("%w: key %s is changed by then[%d] already", ErrInvalidTxn, quoteForError(key), j)}
		}
		changedBy[key] = i
		return nil
	}
	for i, op := range t.Then {
		if op.Kind != TxnDeletePrefix {
			if err := claim(op.Key, i); err != nil {
				return nil, err
			}
			continue
		}
		for _, key := range removed[i] {
			if err := claim(key, i); err != nil {
				return nil, err
			}
		}
	}
	return removed, nil
}

// prefixed returns the live keys that start with prefix as the batch so
// far sees them, in key order, and how many they are: the ordered keys,
// but for those the batch changed, and the keys the batch put. A key past
// its expiry at now counts as absent. Past room keys it only counts them.
//
// It reads the ordered keys without orderMu: only the committer changes
// them.
func (c *committer) prefixed(prefix string, now int64, room int) ([]string, int) {
	var keys []string
	n := 0
	for e := range c.s.order.from(prefix) {
		if !strings.HasPrefix(e.Key, prefix) {
			break
		}
		if _, changed := c.pending[e.Key]; changed || e.expired(now) {
			continue
		}
		if n++; n <= room {
			keys = append(keys, e.Key)
		}
	}
	sorted := len(keys)
	for key, e := range c.pending {
		if e == nil || e.expired(now) || !strings.HasPrefix(key, prefix) {
			continue
		}
		if n++; n <= room {
			keys = append(keys, key)
		}
	}
	if len(keys) > sorted {
		slices.Sort(keys)
	}
	return keys, n
}

// revisionOf returns e's revision, 0 for nil.
func revisionOf(e *Entry) int64 {
	if e == nil {
		return 0
	}
	return e.Revision
}
