// Package etcd keeps kvsse's keys in an etcd cluster, reached through
// etcd's HTTP/JSON gateway with the standard library alone, so that many
// kvsse nodes can serve the same data.
//
// Revisions are etcd's: a key's revision is its mod_revision and a change's
// is the revision etcd gave the write, so event ids mean the same on every
// node. Writes go to etcd and are acknowledged once etcd has committed
// them; reads are linearizable ranges. Each node follows the whole prefix
// with one etcd watch and fans the changes out through a kv.Feed, as the
// embedded store does; a watcher resuming from before what the node has
// seen is caught up from etcd's own history.
package etcd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"kvsse/kv"
)

// Options configure Open.
type Options struct {
	// Endpoints are the client URLs of the etcd members
	// (http://host:2379); calls go to one and move on when it fails.
	Endpoints []string
	// Prefix is put before every key in etcd; everything kvsse writes
	// lies under it. "" means "/kvsse/".
	Prefix string
	// History is how many recent changes the node keeps to resume
	// watchers without asking etcd. 0 means 100,000.
	History int
	// SubBuffer is how many changes a subscription may have queued
	// before it is dropped as lagging. 0 means 1024.
	SubBuffer int
	// Logger receives connection and failure messages. nil discards them.
	Logger *slog.Logger
	// Now is the clock used for expiry. nil means time.Now.
	Now func() time.Time
	// Timeout bounds each call to etcd. 0 means 5 s.
	Timeout time.Duration
	// MaxTxnOps is the most changes a transaction may make, counting
	// each key its TxnDeletePrefix ops remove. 0 means
	// kv.DefaultMaxTxnOps. etcd's own --max-txn-ops (128 by default) may
	// refuse a smaller one.
	MaxTxnOps int
}

// Store is a key-value store in etcd. Its methods are safe for concurrent
// use. Open starts the watch that follows etcd; Close stops it.
type Store struct {
	opts   Options
	prefix []byte
	c      *client
	feed   *kv.Feed
	stats  kv.Stats

	ctx    context.Context // done when the store closes
	cancel context.CancelFunc
	done   chan struct{} // closed when the watch loop has ended

	watchErr    atomic.Pointer[error] // why the watch is down; nil while it runs
	compactedTo atomic.Int64          // the oldest revision etcd was seen to keep

	backfills singleflight.Group

	mu      sync.Mutex    // guards advance
	advance chan struct{} // closed and replaced each time the feed's revision moves
}

// Open connects to etcd, reads its current revision and starts following
// the prefix from there. It fails when no endpoint answers.
func Open(ctx context.Context, opts Options) (*Store, error) {
	if len(opts.Endpoints) == 0 {
		return nil, errors.New("etcd: no endpoints")
	}
	if opts.Prefix == "" {
		opts.Prefix = "/kvsse/"
	}
	if opts.History <= 0 {
		opts.History = 100_000
	}
	if opts.SubBuffer <= 0 {
		opts.SubBuffer = 1024
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.MaxTxnOps <= 0 {
		opts.MaxTxnOps = kv.DefaultMaxTxnOps
	}
	s := &Store{
		opts:    opts,
		prefix:  []byte(opts.Prefix),
		c:       newClient(opts.Endpoints),
		done:    make(chan struct{}),
		advance: make(chan struct{}),
	}
	rev, err := s.currentRevision(ctx)
	if err != nil {
		return nil, fmt.Errorf("etcd: connect: %w", err)
	}
	s.feed = kv.NewFeed(opts.History, opts.SubBuffer, rev)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	go s.follow(rev)
	return s, nil
}

// Close stops following etcd and ends every subscription. It is
// idempotent.
func (s *Store) Close() error {
	s.cancel()
	<-s.done
	s.feed.Close()
	return nil
}

// Revision returns the revision up to which this node has seen every
// change.
func (s *Store) Revision() int64 { return s.feed.Revision() }

// Stats returns the store's counters: Writes counts the changes this node
// has seen.
func (s *Store) Stats() *kv.Stats { return &s.stats }

// Err reports why the store cannot follow etcd now (it wraps
// kv.ErrUnavailable), or nil while it can.
func (s *Store) Err() error {
	if p := s.watchErr.Load(); p != nil {
		return *p
	}
	return nil
}

// call is a call to etcd bounded by the store's timeout.
func (s *Store) call(ctx context.Context, path string, req, resp any) error {
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	return s.c.call(ctx, path, req, resp)
}

func (s *Store) etcdKey(key string) []byte {
	return append(bytes.Clone(s.prefix), key...)
}

// currentRevision is etcd's revision now, read linearizably.
func (s *Store) currentRevision(ctx context.Context) (int64, error) {
	var r rangeResponse
	// One key, so that etcd has nothing to count.
	if err := s.call(ctx, "/v3/kv/range", rangeRequest{Key: s.etcdKey(fenceKey), CountOnly: true}, &r); err != nil {
		return 0, err
	}
	return r.Header.Revision, nil
}

// entry turns an etcd key-value into an entry; ok is false for a key
// outside kvsse's rules (written by someone else, or the fence) and for
// one whose time to live has run out.
func (s *Store) entry(x *keyValue, now int64) (e kv.Entry, ok bool) {
	key, ok := cutKey(x.Key, s.prefix)
	if !ok {
		return kv.Entry{}, false
	}
	value, ctype, expires := decodeValue(x.Value)
	e = kv.Entry{Key: key, Value: value, ContentType: ctype, Revision: x.ModRevision, Expires: expires}
	return e, expires == 0 || now < expires
}

// Get returns the entry of key, read linearizably from etcd.
func (s *Store) Get(ctx context.Context, key string) (kv.Entry, error) {
	if err := kv.ValidateKey(key); err != nil {
		return kv.Entry{}, err
	}
	e, ok, err := s.get(ctx, key)
	if err != nil {
		return kv.Entry{}, fmt.Errorf("kv: get %q: %w", key, err)
	}
	if !ok {
		return kv.Entry{}, fmt.Errorf("kv: get %q: %w", key, kv.ErrNotFound)
	}
	return e, nil
}

// get reads key; ok is false when it is absent or expired, and then
// e.Revision is still its revision in etcd (0 when absent).
func (s *Store) get(ctx context.Context, key string) (e kv.Entry, ok bool, err error) {
	var r rangeResponse
	if err := s.call(ctx, "/v3/kv/range", rangeRequest{Key: s.etcdKey(key)}, &r); err != nil {
		return kv.Entry{}, false, err
	}
	if len(r.KVs) == 0 {
		return kv.Entry{}, false, nil
	}
	e, ok = s.entry(&r.KVs[0], s.opts.Now().UnixNano())
	return e, ok, nil
}

// live is the revision of prev when it is a live entry, else 0.
func (s *Store) live(prev *keyValue) int64 {
	if prev == nil {
		return 0
	}
	if _, ok := s.entry(prev, s.opts.Now().UnixNano()); !ok {
		return 0
	}
	return prev.ModRevision
}

// Put sets key to value. A TTL becomes an etcd lease of whole seconds (at
// least etcd's minimum), and the exact expiry is kept with the value so
// that the key is never returned after it. A precondition is checked on a
// linearizable read and the write made with a txn that fails if the key
// changed in between, then tried again.
func (s *Store) Put(ctx context.Context, key string, value []byte, opts kv.PutOptions) (kv.Result, error) {
	if err := kv.ValidateKey(key); err != nil {
		return kv.Result{}, err
	}
	var expires, lease int64
	if opts.TTL > 0 {
		expires = s.opts.Now().Add(opts.TTL).UnixNano()
		secs := leaseSeconds(opts.TTL)
		var g leaseGrantResponse
		if err := s.call(ctx, "/v3/lease/grant", leaseGrantRequest{TTL: secs}, &g); err != nil {
			return kv.Result{}, fmt.Errorf("kv: put %q: lease: %w", key, err)
		}
		lease = g.ID
	}
	put := &putRequest{Key: s.etcdKey(key), Value: encodeValue(value, opts.ContentType, expires), Lease: lease, PrevKV: true}
	res, err := s.write(ctx, key, opts.Cond, requestOp{Put: put}, func(r responseOp) (int64, bool) {
		if r.Put == nil {
			return 0, false
		}
		return s.live(r.Put.PrevKV), true
	})
	if err != nil {
		return kv.Result{}, fmt.Errorf("kv: put %q: %w", key, err)
	}
	return res, nil
}

// Delete deletes key. Deleting a key past its expiry that etcd has not
// deleted yet deletes it (its event then says "expired") and answers
// kv.ErrNotFound.
func (s *Store) Delete(ctx context.Context, key string, cond kv.Cond) (kv.Result, error) {
	if err := kv.ValidateKey(key); err != nil {
		return kv.Result{}, err
	}
	del := &deleteRequest{Key: s.etcdKey(key), PrevKV: true}
	res, err := s.write(ctx, key, cond, requestOp{Delete: del}, func(r responseOp) (int64, bool) {
		if r.Delete == nil || len(r.Delete.PrevKVs) == 0 {
			return 0, false
		}
		prev := s.live(&r.Delete.PrevKVs[0])
		return prev, prev != 0
	})
	if err != nil {
		return kv.Result{}, fmt.Errorf("kv: delete %q: %w", key, err)
	}
	return res, nil
}

// write carries out op on key under cond. prev reads the key's live
// revision before the write from op's answer; ok false means the key was
// absent (for a delete: nothing was deleted, kv.ErrNotFound).
func (s *Store) write(ctx context.Context, key string, cond kv.Cond, op requestOp, prev func(responseOp) (rev int64, ok bool)) (kv.Result, error) {
	for {
		var cmp []compare
		if cond != (kv.Cond{}) {
			cur, ok, err := s.get(ctx, key)
			if err != nil {
				return kv.Result{}, err
			}
			var live *kv.Entry
			if ok {
				live = &cur
			}
			if !cond.Holds(live) {
				if live == nil {
					return kv.Result{}, &kv.ConflictError{Key: key}
				}
				return kv.Result{}, &kv.ConflictError{Key: key, Revision: cur.Revision}
			}
			// Write only if the key is still as read (mod_revision 0:
			// still absent).
			cmp = []compare{{Key: s.etcdKey(key), Result: "EQUAL", Target: "MOD", ModRevision: cur.Revision}}
		}
		var r txnResponse
		if err := s.txn(ctx, cmp, op, &r); err != nil {
			return kv.Result{}, err
		}
		if !r.Succeeded {
			continue // the key changed since it was read: decide again
		}
		if len(r.Responses) != 1 {
			return kv.Result{}, fmt.Errorf("etcd: txn answered %d responses", len(r.Responses))
		}
		p, ok := prev(r.Responses[0])
		if !ok && op.Delete != nil {
			return kv.Result{}, kv.ErrNotFound
		}
		return kv.Result{Revision: r.Header.Revision, PrevRevision: p}, nil
	}
}

// txn carries out op if cmp holds. Without a condition it is a plain put
// or delete, which etcd does with less work than a txn.
func (s *Store) txn(ctx context.Context, cmp []compare, op requestOp, r *txnResponse) error {
	switch {
	case cmp != nil:
		return s.call(ctx, "/v3/kv/txn", txnRequest{Compare: cmp, Success: []requestOp{op}}, r)
	case op.Put != nil:
		var p putResponse
		err := s.call(ctx, "/v3/kv/put", op.Put, &p)
		*r = txnResponse{Header: p.Header, Succeeded: true, Responses: []responseOp{{Put: &p}}}
		return err
	default:
		var d deleteResponse
		err := s.call(ctx, "/v3/kv/deleterange", op.Delete, &d)
		*r = txnResponse{Header: d.Header, Succeeded: true, Responses: []responseOp{{Delete: &d}}}
		return err
	}
}

// List returns up to limit live entries (all for limit ≤ 0) whose keys
// start with prefix and sort after the key after, read at one revision.
func (s *Store) List(ctx context.Context, prefix, after string, limit int) (kv.Page, error) {
	start := s.etcdKey(prefix)
	if after >= prefix {
		start = append(s.etcdKey(after), 0)
	}
	var page kv.Page
	// One more than asked tells whether more follow.
	items, rev, err := s.scan(ctx, start, rangeEnd(s.etcdKey(prefix)), 0, limit+1, func(string) bool { return true })
	if err != nil {
		return kv.Page{}, fmt.Errorf("kv: list %q: %w", prefix, err)
	}
	if limit > 0 && len(items) > limit {
		items = items[:limit]
		page.Next = items[limit-1].Key
	}
	page.Revision, page.Items = rev, items
	return page, nil
}

// scan reads the live entries in [start, end) that keep accepts, at
// revision rev (0: now), in pages, until it has want of them (want ≤ 1:
// all). It returns the revision read at.
func (s *Store) scan(ctx context.Context, start, end []byte, rev int64, want int, keep func(string) bool) ([]kv.Entry, int64, error) {
	var out []kv.Entry
	now := s.opts.Now().UnixNano()
	for start != nil {
		kvs, next, err := s.page(ctx, start, end, &rev)
		if err != nil {
			return nil, 0, err
		}
		for i := range kvs {
			if e, ok := s.entry(&kvs[i], now); ok && keep(e.Key) {
				out = append(out, e)
				if want > 1 && len(out) == want {
					return out, rev, nil
				}
			}
		}
		start = next
	}
	return out, rev, nil
}

// page reads one page of the key-values in [start, end) at revision *rev,
// which it sets to the revision read at when it is 0 (now). next is
// where the next page starts, nil after the last.
func (s *Store) page(ctx context.Context, start, end []byte, rev *int64) (kvs []keyValue, next []byte, err error) {
	const size = 1000
	var r rangeResponse
	if err := s.call(ctx, "/v3/kv/range", rangeRequest{Key: start, RangeEnd: end, Limit: size, Revision: *rev}, &r); err != nil {
		return nil, nil, err
	}
	if *rev == 0 {
		*rev = r.Header.Revision
	}
	if r.More && len(r.KVs) > 0 {
		next = append(bytes.Clone(r.KVs[len(r.KVs)-1].Key), 0)
	}
	return r.KVs, next, nil
}

// Export returns etcd's current revision and the live entries whose keys
// start with prefix, in key order, all read at that revision, a page of
// 1,000 keys at a time as the sequence is read: memory stays bounded
// however many keys match. A page that fails (etcd compacted past the
// revision meanwhile, say) ends the sequence with its error. The first
// page is read before Export returns, so that an etcd that does not
// answer is an error before anything is sent.
func (s *Store) Export(ctx context.Context, prefix string) (int64, iter.Seq2[kv.Entry, error], error) {
	start, end := s.etcdKey(prefix), rangeEnd(s.etcdKey(prefix))
	var rev int64
	kvs, next, err := s.page(ctx, start, end, &rev)
	if err != nil {
		return 0, nil, fmt.Errorf("kv: export %q: %w", prefix, err)
	}
	now := s.opts.Now().UnixNano()
	return rev, func(yield func(kv.Entry, error) bool) {
		for {
			for i := range kvs {
				if e, ok := s.entry(&kvs[i], now); ok && !yield(e, nil) {
					return
				}
			}
			if next == nil {
				return
			}
			if kvs, next, err = s.page(ctx, next, end, &rev); err != nil {
				yield(kv.Entry{}, fmt.Errorf("kv: export %q at revision %d: %w", prefix, rev, err))
				return
			}
		}
	}, nil
}

// compactedError reports whether err is etcd's refusal to read or watch
// at a revision it no longer keeps.
func compacted(err error) bool {
	var ge *gatewayError
	return errors.As(err, &ge) && ge.Code == codeOutOfRange && strings.Contains(ge.Message, "compacted")
}
