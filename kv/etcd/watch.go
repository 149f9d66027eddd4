package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"kvsse/kv"
)

// errCompacted: etcd no longer keeps the changes asked for.
var errCompacted = errors.New("etcd: revision compacted")

// follow is the store's one watch on the whole prefix: it publishes every
// change after rev to the feed, in order, and when the watch breaks it
// opens it again after the last revision seen, on the next endpoint. It
// ends when the store closes.
func (s *Store) follow(rev int64) {
	defer close(s.done)
	for attempt := 0; ; attempt++ {
		err := s.watchFrom(s.ctx, rev+1, func(changes []kv.Change, upTo int64) bool {
			s.publish(changes, upTo)
			s.watchErr.Store(nil)
			attempt = 0
			return true
		})
		if s.ctx.Err() != nil {
			return
		}
		if errors.Is(err, errCompacted) {
			// Changes this node has not seen are gone: every watcher
			// must start again from a snapshot.
			now, cerr := s.currentRevision(s.ctx)
			if cerr == nil {
				s.opts.Logger.Warn("etcd compacted past this node's revision: ending every stream", "revision", rev, "now", now)
				s.feed.Restart(now)
				s.signal()
				rev = now
				continue
			}
			err = cerr
		}
		werr := fmt.Errorf("%w: following etcd: %v", kv.ErrUnavailable, err)
		if s.watchErr.Swap(&werr) == nil {
			s.opts.Logger.Warn("etcd watch broken; retrying", "revision", s.feed.Revision(), "err", err)
		}
		s.c.next()
		d := backoff(attempt)
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(d/2 + rand.N(d/2+1)):
		}
		rev = s.feed.Revision()
	}
}

// publish hands changes (and the knowledge that nothing else happened up
// to upTo) to the feed and wakes whoever waits for the revision to move.
func (s *Store) publish(changes []kv.Change, upTo int64) {
	s.feed.Publish(changes, upTo)
	s.stats.Writes.Add(int64(len(changes)))
	s.signal()
}

func (s *Store) signal() {
	s.mu.Lock()
	close(s.advance)
	s.advance = make(chan struct{})
	s.mu.Unlock()
}

// watchFrom watches the prefix from revision from and calls each with the
// changes of each answer and the revision they reach, until each returns
// false (then it returns nil), ctx ends or the watch fails. It returns
// errCompacted when from is no longer kept.
//
// etcd never splits the events of one revision (the changes of a txn, the
// keys of one lease) over two answers, so each gets all the changes of a
// revision in one call, and follow publishes them to the feed with one
// Publish.
func (s *Store) watchFrom(ctx context.Context, from int64, each func(changes []kv.Change, upTo int64) bool) error {
	body, err := s.c.watch(ctx, s.prefix, rangeEnd(s.prefix), from)
	if err != nil {
		return err
	}
	defer body.Close()
	stop := context.AfterFunc(ctx, func() { body.Close() })
	defer stop()
	dec := json.NewDecoder(body)
	var changes []kv.Change
	for {
		var m watchMessage
		if err := dec.Decode(&m); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("etcd watch: %w", err)
		}
		if m.Error != nil {
			return fmt.Errorf("etcd watch: %w", m.Error)
		}
		r := m.Result
		if r == nil {
			continue
		}
		if r.CompactRevision != 0 {
			for old := s.compactedTo.Load(); old < r.CompactRevision && !s.compactedTo.CompareAndSwap(old, r.CompactRevision); {
				old = s.compactedTo.Load()
			}
			return fmt.Errorf("%w: asked from %d, kept from %d", errCompacted, from, r.CompactRevision)
		}
		if r.Canceled {
			return fmt.Errorf("etcd watch canceled: %s", r.CancelReason)
		}
		if len(r.Events) == 0 {
			// The watch is up; or a progress notification: every
			// change up to the header's revision has been sent (etcd
			// sends one when the prefix has been quiet for a while).
			upTo := r.Header.Revision
			if r.Created {
				upTo = 0
			}
			if !each(nil, upTo) {
				return nil
			}
			continue
		}
		changes = changes[:0]
		now := s.opts.Now().UnixNano()
		var upTo int64
		for i := range r.Events {
			upTo = r.Events[i].KV.ModRevision
			if c, ok := s.change(&r.Events[i], now); ok {
				changes = append(changes, c)
			}
		}
		if !each(changes, upTo) {
			return nil
		}
	}
}

// change turns an etcd event into a change; ok is false for keys outside
// kvsse's rules. A delete of a key whose time to live had run out says
// OpExpire: it is etcd's lease at work (or a delete that came after the
// expiry, which is the same to a watcher).
func (s *Store) change(ev *event, now int64) (c kv.Change, ok bool) {
	key, ok := cutKey(ev.KV.Key, s.prefix)
	if !ok {
		return kv.Change{}, false
	}
	c = kv.Change{Op: kv.OpPut, Key: key, Revision: ev.KV.ModRevision}
	if ev.PrevKV != nil {
		c.PrevRevision = ev.PrevKV.ModRevision
		value, ctype, expires := decodeValue(ev.PrevKV.Value)
		if value == nil {
			value = []byte{} // nil would say the previous value is not known
		}
		c.PrevValue, c.PrevContentType = value, ctype
		if expires != 0 && now >= expires {
			c.PrevRevision = 0 // it had expired: the put created the key
			c.PrevValue, c.PrevContentType = nil, ""
			if ev.Type == "DELETE" {
				c.Op = kv.OpExpire
				c.PrevRevision = ev.PrevKV.ModRevision
				c.PrevValue, c.PrevContentType = value, ctype
			}
		}
	}
	if ev.Type == "DELETE" {
		if c.Op != kv.OpExpire {
			c.Op = kv.OpDelete
		}
		return c, true
	}
	c.Value, c.ContentType, c.Expires = decodeValue(ev.KV.Value)
	return c, true
}

// Watch subscribes to the changes of keys matching opts.Patterns. It
// first lets the node catch up with etcd, so that the stream turns live
// at a revision at or after every write acknowledged before it began, on
// any node. A resume from before the changes the node keeps first fills
// the node's history from etcd's, and gets a reset when etcd has
// compacted those changes (or there are more than the history holds).
// While etcd cannot be reached, a watch starts from what the node has
// seen, unless it needs etcd: a snapshot, or a resume from a revision the
// node has not reached.
func (s *Store) Watch(opts kv.WatchOptions) (*kv.Subscription, error) {
	ctx, cancel := context.WithTimeout(s.ctx, 2*s.opts.Timeout)
	defer cancel()
	if err := s.catchUp(ctx); err != nil && opts.Resume && opts.From > s.feed.Revision() {
		return nil, fmt.Errorf("kv: watch: %w", err)
	}
	// etcd keeps the changes from compactedTo on: a resume before it can
	// only be reset.
	for opts.Resume && opts.From >= 0 && opts.From < s.feed.Floor() && opts.From+1 >= s.compactedTo.Load() {
		err := s.backfill(ctx, opts.From)
		if errors.Is(err, errCompacted) || errors.Is(err, errFull) {
			break // the feed answers with a reset
		}
		if err != nil {
			return nil, fmt.Errorf("kv: watch: %w", err)
		}
	}
	return s.subscribe(ctx, opts)
}

// errFull: the changes asked for are more than the history holds.
var errFull = errors.New("etcd: more changes than the history holds")

// backfill fills the feed's history from etcd's with the changes after
// from. Watchers that resume at once (every client of a node that just
// started) share one read of etcd.
func (s *Store) backfill(ctx context.Context, from int64) error {
	_, err, _ := s.backfills.Do("", func() (any, error) {
		to := s.feed.Floor()
		changes, first, err := s.changesBetween(ctx, from, to, s.opts.History)
		if err != nil {
			return nil, err
		}
		s.feed.Backfill(changes, first, to)
		if first > from {
			return nil, errFull
		}
		return nil, nil
	})
	return err
}

// subscribe registers with the feed and reads the snapshot it asks for
// from etcd at the subscription's revision.
func (s *Store) subscribe(ctx context.Context, opts kv.WatchOptions) (*kv.Subscription, error) {
	sub, snapshot, err := s.feed.Subscribe(opts)
	if err != nil {
		return nil, err
	}
	if snapshot {
		if sub.Snapshot, err = s.snapshot(ctx, opts, sub.Revision); err != nil {
			sub.Cancel()
			return nil, fmt.Errorf("kv: watch: %w", err)
		}
	}
	return sub, nil
}

// snapshot reads the live entries matching opts at revision rev.
func (s *Store) snapshot(ctx context.Context, opts kv.WatchOptions, rev int64) ([]kv.Entry, error) {
	start := s.etcdKey(kv.CommonPrefix(opts.Patterns))
	entries, _, err := s.scan(ctx, start, rangeEnd(start), rev, 0, opts.Match)
	if compacted(err) {
		err = fmt.Errorf("%w: %v", errCompacted, err)
	}
	return entries, err
}

// fenceKey is written to learn that a watch has delivered everything up
// to now: its own change comes after every earlier one. It lies under the
// prefix but outside kvsse's keys (no key starts with a NUL byte).
const fenceKey = "\x00fence"

// fence writes the fence key and returns the revision of that write.
func (s *Store) fence(ctx context.Context) (int64, error) {
	var r putResponse
	if err := s.call(ctx, "/v3/kv/put", putRequest{Key: s.etcdKey(fenceKey)}, &r); err != nil {
		return 0, fmt.Errorf("fence: %w", err)
	}
	return r.Header.Revision, nil
}

// catchUp waits until the feed has reached etcd's current revision.
// Changes under the prefix get it there by themselves; when they do not
// within a moment (the last writes were outside the prefix, or the watch
// lags), a fence write makes a change that comes after them.
func (s *Store) catchUp(ctx context.Context) error {
	now, err := s.currentRevision(ctx)
	if err != nil {
		return err
	}
	wait, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	err = s.reach(wait, now)
	cancel()
	if err == nil {
		return nil
	}
	f, err := s.fence(ctx)
	if err != nil {
		return err
	}
	return s.reach(ctx, f)
}

// reach waits until the feed's revision is rev or more.
func (s *Store) reach(ctx context.Context, rev int64) error {
	for {
		s.mu.Lock()
		advance := s.advance
		s.mu.Unlock()
		if s.feed.Revision() >= rev {
			return nil
		}
		select {
		case <-advance:
		case <-ctx.Done():
			return fmt.Errorf("%w: waiting for etcd's watch to reach revision %d: %v", kv.ErrUnavailable, rev, ctx.Err())
		}
	}
}

// changesBetween reads from etcd the changes in (from, to], with a watch
// of its own that ends at the fence. Of more than max changes it keeps
// the newest max, and first is the revision they follow: from, or the
// revision of the newest change it left out.
func (s *Store) changesBetween(ctx context.Context, from, to int64, max int) (changes []kv.Change, first int64, err error) {
	f, err := s.fence(ctx)
	if err != nil {
		return nil, 0, err
	}
	first = from
	err = s.watchFrom(ctx, from+1, func(batch []kv.Change, upTo int64) bool {
		for _, c := range batch {
			if c.Revision <= to {
				changes = append(changes, c)
			}
		}
		if n := len(changes); n > 2*max {
			first = changes[n-max-1].Revision
			changes = append(changes[:0], changes[n-max:]...)
		}
		return upTo < f
	})
	if err != nil {
		return nil, 0, err
	}
	if n := len(changes); n > max {
		first = changes[n-max-1].Revision
		changes = changes[n-max:]
	}
	return changes, first, nil
}

// cutKey is key without prefix, when it is a kvsse key.
func cutKey(k, prefix []byte) (string, bool) {
	if len(k) < len(prefix) || string(k[:len(prefix)]) != string(prefix) {
		return "", false
	}
	key := string(k[len(prefix):])
	return key, kv.ValidateKey(key) == nil
}
