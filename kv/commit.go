package kv

import (
	"container/heap"
	"context"
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"time"

	"kvsse/kv/wal"
)

// Op is the kind of a change.
type Op uint8

// The kinds of change.
const (
	OpPut    Op = iota + 1 // a key was set
	OpDelete               // a key was deleted by a client
	OpExpire               // a key was deleted because its time to live ran out
)

// Ops is a set of kinds of change, for a watch that follows only some of
// them. The zero Ops holds every kind.
type Ops uint8

// OpsOf returns the set of the kinds ops.
func OpsOf(ops ...Op) Ops {
	var s Ops
	for _, op := range ops {
		s |= 1 << op
	}
	return s
}

// Has reports whether op is in the set.
func (s Ops) Has(op Op) bool { return s == 0 || s&(1<<op) != 0 }

// Change is one committed write. Changes handed out by the store share
// their Value with it and must not be modified.
type Change struct {
	Op           Op
	Key          string
	Value        []byte // OpPut only
	ContentType  string // OpPut only
	Expires      int64  // OpPut only: Unix nanoseconds, 0 for never
	Revision     int64
	PrevRevision int64 // the key's revision before this change; 0 when it was absent
	// PrevValue and PrevContentType are the key's value before this
	// change, shared with the entry it replaced (values are never
	// modified once stored). PrevValue is nil when the key was absent, or
	// when its previous value is not known: a change read from a log
	// written before previous values were kept, or one that etcd no
	// longer had.
	PrevValue       []byte
	PrevContentType string

	wire *WireCache // set when the change is published
	base *Change    // set by since: the published change whose new state this one carries
}

// since returns c as it reads for a consumer that has not seen older, an
// earlier change of the same key that c replaces in a coalesced queue:
// c's new state, from older's previous one. It is a new change, with no
// wire cache, but MergedFrom tells whose cache holds its new state.
func (c *Change) since(older *Change) *Change {
	m := *c
	m.PrevRevision, m.PrevValue, m.PrevContentType = older.PrevRevision, older.PrevValue, older.PrevContentType
	m.wire, m.base = nil, c
	return &m
}

// MergedFrom returns, for a change merged from several by a coalescing
// subscription (see Subscription.TakeMerged), the published change whose
// new state it carries: the two differ only in their previous state
// (PrevRevision, PrevValue, PrevContentType), so that an encoding of the
// published one, shared by every stream, needs only that part redone.
// It returns nil for any other change.
func (c *Change) MergedFrom() *Change { return c.base }

// WireCache is the room a published change keeps for the package that
// writes changes to clients (sse): what it computes from the change once,
// its encodings, for every stream that sends it. Every subscription
// receives the same *Change, so a change is encoded once however many
// streams send it. kv never reads it; its one user decides what it holds.
// It is safe for concurrent use.
type WireCache struct{ v atomic.Value }

// Load returns what the cache holds, or nil.
func (w *WireCache) Load() any { return w.v.Load() }

// LoadOrStore stores v unless the cache holds something already, and
// returns what it holds then. Every value stored must be of one type.
func (w *WireCache) LoadOrStore(v any) any {
	if w.v.CompareAndSwap(nil, v) {
		return v
	}
	return w.v.Load()
}

// WireCache returns the change's wire cache, or nil for a change that was
// never published (one built by a caller, or read from the log at
// start-up).
func (c *Change) WireCache() *WireCache { return c.wire }

// Event is the change's event name on the wire: "put" or "delete".
func (c *Change) Event() string {
	if c.Op == OpPut {
		return "put"
	}
	return "delete"
}

// Reason is why a key was deleted: "deleted" or "expired"; "" for a put.
func (c *Change) Reason() string {
	switch c.Op {
	case OpDelete:
		return "deleted"
	case OpExpire:
		return "expired"
	}
	return ""
}

// Cond is a write's precondition. The zero Cond always holds.
type Cond struct {
	kind condKind
	rev  int64
}

type condKind uint8

const (
	condAny condKind = iota
	condAbsent
	condExists
	condRevision
)

// IfAbsent holds when the key does not exist.
func IfAbsent() Cond { return Cond{kind: condAbsent} }

// IfExists holds when the key exists, at any revision.
func IfExists() Cond { return Cond{kind: condExists} }

// IfRevision holds when the key exists at revision rev (so never for a
// rev of 0 or less).
func IfRevision(rev int64) Cond { return Cond{kind: condRevision, rev: rev} }

// Holds reports whether c holds for the current entry cur (nil: absent).
func (c Cond) Holds(cur *Entry) bool {
	switch c.kind {
	case condAbsent:
		return cur == nil
	case condExists:
		return cur != nil
	case condRevision:
		return cur != nil && cur.Revision == c.rev
	}
	return true
}

// PutOptions qualify a Put.
type PutOptions struct {
	ContentType string        // stored and returned with the value
	TTL         time.Duration // > 0: the key expires this long after the write
	Cond        Cond
}

// Result is what a successful write did.
type Result struct {
	Revision     int64 // the revision the write took
	PrevRevision int64 // the key's revision before; 0 when it was absent
}

// Created reports whether a put created the key.
func (r Result) Created() bool { return r.PrevRevision == 0 }

// Put sets key to value once the write is durable. The store keeps value:
// the caller must not modify it afterwards. Errors wrap ErrInvalidKey,
// ErrPrecondition (a *ConflictError), ErrFull, ErrUnavailable or ErrClosed,
// or are ctx's error when ctx ended before the write was handed to the
// committer.
func (s *Store) Put(ctx context.Context, key string, value []byte, opts PutOptions) (Result, error) {
	if err := ValidateKey(key); err != nil {
		return Result{}, err
	}
	o := &op{kind: OpPut, key: key, value: value, ctype: opts.ContentType, cond: opts.Cond, done: make(chan result, 1)}
	if opts.TTL > 0 {
		o.expires = s.opts.Now().Add(opts.TTL).UnixNano()
	}
	r := s.waitOp(ctx, o)
	if r.err != nil {
		return Result{}, fmt.Errorf("kv: put %q: %w", key, r.err)
	}
	return r.Result, nil
}

// Delete deletes key once the delete is durable. Errors are those of Put,
// and ErrNotFound when the key does not exist.
func (s *Store) Delete(ctx context.Context, key string, cond Cond) (Result, error) {
	if err := ValidateKey(key); err != nil {
		return Result{}, err
	}
	o := &op{kind: OpDelete, key: key, cond: cond, done: make(chan result, 1)}
	r := s.waitOp(ctx, o)
	if r.err != nil {
		return Result{}, fmt.Errorf("kv: delete %q: %w", key, r.err)
	}
	return r.Result, nil
}

// op is one write waiting for the committer: a put or a delete of key,
// or a transaction (txn not nil; the other fields unused but done and res).
type op struct {
	kind    Op
	key     string
	value   []byte
	ctype   string
	expires int64
	cond    Cond
	txn     *txnReq
	done    chan result // buffered; the committer sends exactly once
	res     result
}

type result struct {
	Result // of a put or delete; a transaction's is in its txnReq
	err    error
}

// maxBatch bounds how many writes share one fsync.
const maxBatch = 4096

// expiryRetry is how long the committer waits before it tries again, on
// its own, the expiries of a batch that the log refused, so that a full
// disk does not keep it retrying in a loop. Writes of clients still take
// due expiries along.
const expiryRetry = time.Second

// commitLoop is the committer: the one goroutine that writes the log and
// the maps. It ends when quit is closed.
func (s *Store) commitLoop() {
	defer close(s.done)
	c := committer{s: s, pending: make(map[string]*Entry)}
	for i := range s.shards {
		for _, e := range s.shards[i].m {
			c.count(e, 1)
			if e.Expires != 0 {
				c.expiries.push(e)
			}
		}
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		c.resetTimer(timer)
		var batch []*op
		select {
		case o := <-s.ops:
			batch = append(c.batch[:0], o)
		case <-timer.C:
			batch = c.batch[:0]
		case <-s.quit:
			return
		}
	drain:
		for len(batch) < maxBatch {
			select {
			case o := <-s.ops:
				batch = append(batch, o)
			default:
				break drain
			}
		}
		c.batch = batch
		c.commit(batch)
	}
}

// committer is the committer goroutine's state.
type committer struct {
	s        *Store
	batch    []*op
	changes  []Change
	entries  []*Entry          // the key's entry after each change; nil: deleted
	pending  map[string]*Entry // the batch's view of keys it changed; nil = deleted
	buf      []byte
	expiries expiryHeap
	popped   []expiry  // taken off expiries by the batch, put back if it is refused
	retry    int64     // Unix nanoseconds: no batch for expiries alone before then
	rev      int64     // the revision of the batch's last change so far
	keys     int64     // keys in the store, as the batch so far leaves it
	bytes    int64     // the sum of their values' lengths, likewise
	txns     int64     // transactions in the batch that change something
	txnN     int64     // their changes
	plan     []planned // scratch of txn
	curs     []*Entry  // scratch of txn
}

func (c *committer) resetTimer(t *time.Timer) {
	if len(c.expiries) == 0 || c.s.Err() != nil {
		t.Reset(time.Hour)
		return
	}
	at := max(c.expiries[0].expires, c.retry)
	t.Reset(time.Duration(at - c.s.opts.Now().UnixNano()))
}

// lookup returns key's entry as the batch so far sees it.
func (c *committer) lookup(key string) *Entry {
	if e, ok := c.pending[key]; ok {
		return e
	}
	return c.s.current(key)
}

// add records a change decided in the batch, prev and e, the key's entry
// before it, as the batch so far sees it, and after it (nil: absent).
func (c *committer) add(ch Change, prev, e *Entry) {
	if prev != nil {
		ch.PrevValue, ch.PrevContentType = known(prev.Value), prev.ContentType
	}
	c.count(prev, -1)
	c.count(e, 1)
	c.changes = append(c.changes, ch)
	c.entries = append(c.entries, e)
	c.pending[ch.Key] = e
}

// known returns v, or an empty slice (which allocates nothing) in place
// of nil, a value a caller gave as nil: a nil previous value means one not
// known.
func known(v []byte) []byte {
	if v == nil {
		return []byte{}
	}
	return v
}

// count adds e (nil: nothing) to the store's keys and bytes, or takes it
// out with n = -1.
func (c *committer) count(e *Entry, n int64) {
	if e != nil {
		c.keys += n
		c.bytes += n * int64(len(e.Value))
	}
}

// live returns key's entry as the batch so far sees it (nil: absent),
// after expiring it, as a change of its own, when its time has run out at
// now.
func (c *committer) live(key string, now int64) *Entry {
	cur := c.lookup(key)
	if cur != nil && cur.expired(now) {
		c.rev++
		c.add(Change{Op: OpExpire, Key: key, Revision: c.rev, PrevRevision: cur.Revision}, cur, nil)
		return nil
	}
	return cur
}

// room returns a *FullError when putting value over cur (nil: absent)
// would create a key beyond MaxKeys or grow the values beyond MaxBytes. A
// put that grows neither always fits, even in a store already past a
// limit that was lowered.
func (c *committer) room(cur *Entry, value []byte) error {
	var keys int64
	grow := int64(len(value))
	if cur == nil {
		keys = 1
	} else {
		grow -= int64(len(cur.Value))
	}
	return c.roomFor(keys, grow)
}

// roomFor returns a *FullError when a write that adds keys keys and grow
// bytes of values (either may be negative) would take the store beyond
// MaxKeys or MaxBytes; a write that grows neither always fits.
func (c *committer) roomFor(keys, grow int64) error {
	o := &c.s.opts
	switch {
	case keys <= 0 || o.MaxKeys <= 0 || c.keys+keys <= o.MaxKeys:
	case c.keys >= o.MaxKeys:
		return &FullError{Limit: LimitKeys, Max: o.MaxKeys,
			msg: fmt.Sprintf("it holds %d keys, the most allowed", c.keys)}
	default:
		return &FullError{Limit: LimitKeys, Max: o.MaxKeys,
			msg: fmt.Sprintf("it holds %d keys; %d more would pass the limit of %d", c.keys, keys, o.MaxKeys)}
	}
	if grow > 0 && o.MaxBytes > 0 && c.bytes+grow > o.MaxBytes {
		return &FullError{Limit: LimitBytes, Max: o.MaxBytes,
			msg: fmt.Sprintf("its values hold %d bytes; %d more would pass the limit of %d", c.bytes, grow, o.MaxBytes)}
	}
	return nil
}

// commit runs one batch: decide, log, sync, apply, publish, answer. Once
// the store refuses writes it writes nothing more, expiries included: it
// answers every write with the store's error.
func (c *committer) commit(batch []*op) {
	s := c.s
	if err := s.Err(); err != nil {
		for _, o := range batch {
			o.done <- result{err: err}
		}
		return
	}
	now := s.opts.Now().UnixNano()
	c.rev = s.rev.Load()
	c.txns, c.txnN = 0, 0
	c.changes = c.changes[:0]
	clear(c.entries)
	c.entries = c.entries[:0]
	clear(c.pending)
	keys, bytes := c.keys, c.bytes // restored if the batch is not logged
	c.popped = c.popped[:0]

	// Keys whose time ran out expire first, each as a write of its own.
	for len(c.expiries) > 0 && c.expiries[0].expires <= now {
		x := heap.Pop(&c.expiries).(expiry)
		c.popped = append(c.popped, x)
		if cur := c.lookup(x.key); cur != nil && cur.Revision == x.rev {
			c.rev++
			c.add(Change{Op: OpExpire, Key: x.key, Revision: c.rev, PrevRevision: cur.Revision}, cur, nil)
		}
	}
	for _, o := range batch {
		if o.txn != nil {
			c.txn(o, now)
			continue
		}
		cur := c.live(o.key, now)
		var curRev int64
		if cur != nil {
			curRev = cur.Revision
		}
		var full error
		if o.kind == OpPut {
			full = c.room(cur, o.value)
		}
		switch {
		case !o.cond.Holds(cur):
			o.res = result{err: &ConflictError{Key: o.key, Revision: curRev}}
		case o.kind == OpDelete && cur == nil:
			o.res = result{err: ErrNotFound}
		case full != nil:
			o.res = result{err: full}
		default:
			c.rev++
			ch := Change{Op: o.kind, Key: o.key, Revision: c.rev, PrevRevision: curRev}
			var e *Entry
			if o.kind == OpPut {
				ch.Value, ch.ContentType, ch.Expires = o.value, o.ctype, o.expires
				e = &Entry{Key: o.key, Value: o.value, ContentType: o.ctype, Revision: c.rev, Expires: o.expires}
			}
			c.add(ch, cur, e)
			o.res = result{Result: Result{Revision: c.rev, PrevRevision: curRev}}
		}
	}
	if len(c.changes) > 0 {
		s.stats.Batches.Add(1)
		if err := c.persist(); err != nil {
			for _, o := range batch {
				o.res = result{err: err}
			}
			c.changes = c.changes[:0]
			c.keys, c.bytes = keys, bytes
			c.txns, c.txnN = 0, 0
			for _, x := range c.popped {
				heap.Push(&c.expiries, x)
			}
			c.retry = now + int64(expiryRetry)
		}
	}
	if len(c.changes) > 0 {
		s.orderMu.Lock()
		s.applying.Store(true) // before the first change: see Get
		for i := range c.changes {
			ch, e := &c.changes[i], c.entries[i]
			s.apply(ch.Key, e)
			if e != nil && e.Expires != 0 {
				c.expiries.push(e)
			}
		}
		s.applying.Store(false)
		// Publish before the revision moves: whoever reads Revision R
		// knows every change up to R is already in the subscriptions.
		s.feed.Publish(c.changes, c.rev)
		s.rev.Store(c.rev)
		s.orderMu.Unlock()
		s.stats.Writes.Add(int64(len(c.changes)))
		s.stats.Txns.Add(c.txns)
		s.stats.TxnChanges.Add(c.txnN)
	}
	for _, o := range batch {
		o.done <- o.res
	}
	if s.log != nil && len(c.changes) > 0 {
		s.log.maybeCompact(c.rev)
	}
}

// persist appends the batch's changes to the log, ended by the commit
// marker that makes them count, and syncs it. On failure none of the
// changes may be applied, and the error is the one for the batch's
// writers; see durability.write for what the store then does.
func (c *committer) persist() error {
	s := c.s
	if s.log == nil {
		return nil
	}
	c.buf = c.buf[:0]
	for i := range c.changes {
		c.buf = wal.Append(c.buf, recordOf(&c.changes[i], s.log.first))
	}
	first, last := c.changes[0].Revision, c.changes[len(c.changes)-1].Revision
	c.buf = wal.Append(c.buf, &wal.Record{Op: wal.OpCommit, Rev: last})
	return s.log.write(c.buf, first, last)
}

// recordOf is the log record of c, written to the segment whose first
// revision is first. It carries the key's previous value only when that
// value's revision lies before the segment: a reader of the segment finds
// the others in it (see segmentKeys.prevOf), so a hot key costs no more on
// disk. It leaves the previous value out, unknown after a restart, when
// it would take the record past what the log accepts (two values near the
// largest allowed).
func recordOf(c *Change, first int64) *wal.Record {
	r := &wal.Record{Op: wal.OpPut, Rev: c.Revision, PrevRev: c.PrevRevision, Key: []byte(c.Key)}
	size := len(c.Key) + len(c.ContentType) + len(c.Value) + len(c.PrevContentType) + len(c.PrevValue) + 8*binary.MaxVarintLen64
	if c.PrevValue != nil && c.PrevRevision < first && size <= wal.MaxPayload {
		r.HasPrev, r.PrevContentType, r.PrevValue = true, []byte(c.PrevContentType), c.PrevValue
	}
	switch c.Op {
	case OpPut:
		r.ContentType, r.Expires, r.Value = []byte(c.ContentType), c.Expires, c.Value
	case OpDelete:
		r.Op = wal.OpDelete
	case OpExpire:
		r.Op = wal.OpExpire
	}
	return r
}

// expiry is a key due to expire at a time, if it is still at rev then.
type expiry struct {
	expires int64
	key     string
	rev     int64
}

// expiryHeap is a min-heap of expiries, owned by the committer.
type expiryHeap []expiry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].expires < h[j].expires }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiry)) }
func (h *expiryHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

func (h *expiryHeap) push(e *Entry) {
	heap.Push(h, expiry{expires: e.Expires, key: e.Key, rev: e.Revision})
}
