// Package kv is kvsse's state: a sharded in-memory map of keys, one global
// revision counter, a write-ahead log that makes every acknowledged write
// durable, and the feed of committed changes that watchers follow.
//
// All writes go through one committer goroutine, in batches: each write of
// a batch is checked against its precondition and takes the next revision
// (all the changes of a transaction take the same one), the batch is
// appended to the log with a commit marker after it and fsynced once
// (group commit), then it becomes visible to readers and is published to
// the change feed, in revision order, and only then are the writers
// answered. A batch that the log fails to take is refused whole: none of
// its writes is applied, then or after a restart. Reads never wait for the
// committer except for the short moment it applies a batch to the shard
// they touch.
package kv

import (
	"context"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"kvsse/kv/wal"
)

// Entry is a key's current state. Values handed out by the store are
// shared and must not be modified.
type Entry struct {
	Key         string
	Value       []byte
	ContentType string
	Revision    int64 // the revision of the key's last change
	Expires     int64 // Unix nanoseconds at which the key expires; 0 for never
}

// expired reports whether e has expired at now (Unix nanoseconds).
func (e *Entry) expired(now int64) bool { return e.Expires != 0 && now >= e.Expires }

// SyncMode says when the log is fsynced.
type SyncMode int

const (
	// SyncAlways fsyncs every batch before any of its writes is
	// acknowledged: an acknowledged write survives a crash of the process
	// or of the machine.
	SyncAlways SyncMode = iota
	// SyncNone never fsyncs: an acknowledged write survives a crash of the
	// process (the kernel has it) but may be lost if the machine fails.
	SyncNone
)

// Options configure a Store. The zero value is an in-memory store.
type Options struct {
	// Dir is the data directory. Empty keeps nothing on disk.
	Dir string
	// Sync is the fsync policy of the log.
	Sync SyncMode
	// CompactBytes is the log size past which it is compacted into a
	// snapshot. 0 means 64 MiB.
	CompactBytes int64
	// History is how many committed changes are kept for watchers that
	// resume. 0 means 100,000.
	History int
	// SubBuffer is how many events a subscription may have queued before
	// it is dropped as lagging. The changes of a transaction that match
	// are queued together or not at all, so an empty queue takes them
	// even when they are more. 0 means 1024.
	SubBuffer int
	// Shards is the number of map shards, rounded up to a power of two.
	// 0 means 64.
	Shards int
	// Logger receives start-up and failure messages. nil discards them.
	Logger *slog.Logger
	// Now is the clock used for expiry. nil means time.Now.
	Now func() time.Time
	// MaxKeys is the most keys the store holds: a put that would create
	// one more fails with ErrFull. 0 means no limit.
	MaxKeys int64
	// MaxBytes bounds the sum of the lengths of the values held (keys
	// and metadata not counted): a put that would grow it past MaxBytes
	// fails with ErrFull. Replacing a value counts the difference;
	// deletes and expiries free space. 0 means no limit.
	MaxBytes int64
	// MaxTxnOps is the most changes a transaction may make: its puts and
	// deletes (found or not) and the keys its TxnDeletePrefix ops remove.
	// 0 means DefaultMaxTxnOps.
	MaxTxnOps int

	// wrapLog, when set, wraps the file of every log segment the store
	// appends to: the package's tests inject faults through it.
	wrapLog func(wal.File) wal.File
}

func (o *Options) setDefaults() {
	if o.CompactBytes <= 0 {
		o.CompactBytes = 64 << 20
	}
	if o.History <= 0 {
		o.History = 100_000
	}
	if o.SubBuffer <= 0 {
		o.SubBuffer = 1024
	}
	if o.Shards <= 0 {
		o.Shards = 64
	}
	if o.MaxTxnOps <= 0 {
		o.MaxTxnOps = DefaultMaxTxnOps
	}
	n := 1
	for n < o.Shards {
		n <<= 1
	}
	o.Shards = n
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Store is the key-value state. All its methods are safe for concurrent
// use. Open starts its background goroutines; Close stops them.
type Store struct {
	opts Options
	seed maphash.Seed

	// Lock order: orderMu, then a shard's mu, then feed.mu.
	shards []shard

	// orderMu guards order (but not the views that order.freeze hands
	// out, which need no lock) and the moment rev moves; the committer
	// holds it for writing while it applies a batch to the maps.
	orderMu sync.RWMutex
	order   *ordered
	rev     atomic.Int64 // the revision of the last applied write
	// applying is true while the committer applies a batch to the maps,
	// from before its first change to after its last (see Get).
	applying atomic.Bool

	feed *Feed

	ops    chan *op      // writes, to the committer; unbuffered
	quit   chan struct{} // closed by Close to stop the committer
	done   chan struct{} // closed when the committer has stopped
	failed atomic.Value  // error: set once when the log fails

	log       *durability // nil for an in-memory store; owned by the committer
	stats     Stats
	closeErr  error
	closeOnce sync.Once
}

type shard struct {
	mu sync.RWMutex // guards m
	m  map[string]*Entry
}

// Stats are counters of the store's work, read with atomic loads.
type Stats struct {
	Writes      atomic.Int64 // committed changes, expiries included
	Txns        atomic.Int64 // committed transactions that changed something
	TxnChanges  atomic.Int64 // their changes (counted in Writes too)
	Batches     atomic.Int64 // group commits
	Fsyncs      atomic.Int64 // fsyncs of the log
	FsyncNanos  atomic.Int64 // time spent in those fsyncs
	LogBytes    atomic.Int64 // bytes in the active log segment
	Compactions atomic.Int64 // snapshots written
	// Keys and ValueBytes are gauges of the map: keys held and the sum of
	// their values' lengths. A key past its expiry counts until its delete
	// commits.
	Keys       atomic.Int64
	ValueBytes atomic.Int64
}

// Open loads the store from opts.Dir (replaying its snapshot and log) and
// starts the committer. With an empty Dir it keeps nothing on disk.
func Open(opts Options) (*Store, error) {
	s := newStore(opts)
	if s.opts.Dir != "" {
		d, err := openDurability(s)
		if err != nil {
			return nil, fmt.Errorf("kv: open %s: %w", s.opts.Dir, err)
		}
		s.log = d
	}
	go s.commitLoop()
	return s, nil
}

// newStore makes an empty store with opts and its defaults, its
// goroutines not started.
func newStore(opts Options) *Store {
	opts.setDefaults()
	s := &Store{
		opts:   opts,
		seed:   maphash.MakeSeed(),
		shards: make([]shard, opts.Shards),
		order:  newOrdered(),
		ops:    make(chan *op),
		quit:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	for i := range s.shards {
		s.shards[i].m = make(map[string]*Entry)
	}
	s.feed = NewFeed(opts.History, opts.SubBuffer, 0)
	return s
}

// Close stops the committer, answering writes still waiting with
// ErrClosed, syncs and closes the log and releases the data directory.
// It is idempotent.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.quit)
		<-s.done
		s.feed.Close()
		if s.log != nil {
			s.closeErr = s.log.close()
		}
	})
	return s.closeErr
}

// Stats returns the store's counters.
func (s *Store) Stats() *Stats { return &s.stats }

// Revision returns the revision of the last write that is durable and
// visible.
func (s *Store) Revision() int64 { return s.rev.Load() }

// Err returns why the store refuses writes, or nil.
func (s *Store) Err() error {
	if err, ok := s.failed.Load().(error); ok {
		return err
	}
	return nil
}

func (s *Store) shard(key string) *shard {
	return &s.shards[maphash.String(s.seed, key)&uint64(len(s.shards)-1)]
}

// Get returns key's entry, or an error wrapping ErrNotFound (also for a
// key past its expiry whose delete is not committed yet) or ErrInvalidKey.
// The context is unused: it is there for stores that read over a network.
//
// Get never shows part of a batch, a transaction's changes in particular:
// once it returned a key's entry, any read that follows it finds every
// other change of the same batch. It takes the lock of the key's shard
// for reading, and only when it read while the committer was applying a
// batch does it read again holding orderMu for reading, which waits for
// the batch to be applied whole.
func (s *Store) Get(_ context.Context, key string) (Entry, error) {
	if err := ValidateKey(key); err != nil {
		return Entry{}, err
	}
	sh := s.shard(key)
	sh.mu.RLock()
	e := sh.m[key]
	sh.mu.RUnlock()
	// Why one load of applying after the read is enough: the committer
	// sets applying (an atomic store) before it changes the first entry
	// of a batch and clears it after the last, all under orderMu held
	// for writing. When e is an entry that a batch stored, the
	// committer's store of true came before its write of e, which came
	// before it unlocked the shard; the RLock above came after that
	// Unlock, since it saw e; and the load below comes after the
	// RUnlock. So the store of true happens before the load (an Unlock
	// synchronizes with the next Lock or RLock, and atomics are
	// sequentially consistent), which therefore sees true, or the store
	// of false that the committer makes after the batch's last change:
	// then every change of the batch happens before the load, and so
	// before whatever the caller reads next. When the load sees true, e
	// may come from a batch half applied: read it again holding orderMu,
	// which no batch is applied under. When e is from before the batch,
	// it is a whole older state. Either way, the reads that follow see
	// every key of e's batch at least as new as e.
	if s.applying.Load() {
		s.orderMu.RLock()
		sh.mu.RLock()
		e = sh.m[key]
		sh.mu.RUnlock()
		s.orderMu.RUnlock()
	}
	if e == nil || e.expired(s.opts.Now().UnixNano()) {
		return Entry{}, fmt.Errorf("kv: get %q: %w", key, ErrNotFound)
	}
	return *e, nil
}

// Page is one page of a listing.
type Page struct {
	Revision int64   // the store's revision when the page was read
	Items    []Entry // in key order
	Next     string  // the last key, when more keys follow; "" on the last page
}

// List returns up to limit entries (all of them for a limit of 0 or less)
// whose keys start with prefix and sort after the key after, in byte
// order, read consistently at one revision.
// Expired keys are left out. It never fails; the error and the context
// are there for stores that read over a network.
func (s *Store) List(_ context.Context, prefix, after string, limit int) (Page, error) {
	now := s.opts.Now().UnixNano()
	from := prefix
	if after >= from {
		from = after + "\x00"
	}
	s.orderMu.RLock()
	defer s.orderMu.RUnlock()
	p := Page{Revision: s.rev.Load()}
	for e := range s.order.from(from) {
		if len(e.Key) < len(prefix) || e.Key[:len(prefix)] != prefix {
			break
		}
		if e.expired(now) {
			continue
		}
		if limit > 0 && len(p.Items) == limit {
			p.Next = p.Items[len(p.Items)-1].Key
			break
		}
		p.Items = append(p.Items, *e)
	}
	return p, nil
}

// apply makes a committed change to key visible: its entry becomes e
// (nil: deleted). The caller holds orderMu.
func (s *Store) apply(key string, e *Entry) {
	sh := s.shard(key)
	sh.mu.Lock()
	if old := sh.m[key]; old != nil {
		s.stats.Keys.Add(-1)
		s.stats.ValueBytes.Add(-int64(len(old.Value)))
	}
	if e != nil {
		sh.m[key] = e
		sh.mu.Unlock()
		s.stats.Keys.Add(1)
		s.stats.ValueBytes.Add(int64(len(e.Value)))
		s.order.set(e)
		return
	}
	delete(sh.m, key)
	sh.mu.Unlock()
	s.order.remove(key)
}

// current returns key's entry as the committer sees it. Only the committer
// (or Open, before it starts) calls it.
func (s *Store) current(key string) *Entry {
	sh := s.shard(key)
	sh.mu.RLock()
	e := sh.m[key]
	sh.mu.RUnlock()
	return e
}

// waitOp hands o to the committer and waits for its answer.
func (s *Store) waitOp(ctx context.Context, o *op) result {
	if err := ctx.Err(); err != nil {
		return result{err: err}
	}
	select {
	case s.ops <- o:
	case <-s.done:
		return result{err: ErrClosed}
	case <-ctx.Done():
		return result{err: ctx.Err()}
	}
	return <-o.done
}
