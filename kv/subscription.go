package kv

import (
	"cmp"
	"context"
	"sync"
)

// Subscription is a watch on a set of patterns. Its owner reads the
// catch-up fields first, then takes the live changes (Take or Next, told
// by Ready or OnReady that some are queued), and calls Cancel when done.
//
// The live changes wait in a queue that grows as they come, up to the
// feed's subscription buffer, and is handed over whole: an idle
// subscription holds no buffer (a channel of 1,024 slots held 8 KiB that
// the garbage collector scanned, for each of thousands of idle watchers),
// and a busy consumer takes everything that gathered with one lock. A
// full queue ends the subscription as lagged: the feed never waits for a
// consumer. The changes of one revision enter the queue together or not
// at all.
//
// A coalescing subscription (WatchOptions.Coalesce) is never ended for a
// full queue: from then on until the next Take, its queue holds only the
// newest change of each key (see TakeMerged), so it holds at most one
// change per matching key, and each push costs a map lookup.
type Subscription struct {
	// Reset is why the catch-up is a snapshot rather than a replay:
	// "history" (the asked-for revision is older than the history kept) or
	// "future" (it is newer than the store's); "" otherwise.
	Reset string
	// Snapshot holds the matching entries at Revision, in key order, when
	// a snapshot was asked for or Reset is set.
	Snapshot []Entry
	// Replay holds the matching changes after the asked-for revision, up
	// to Revision, in order.
	Replay []*Change
	// Revision is the revision at which the stream turns live: the
	// catch-up covers everything up to it, and the queue holds only
	// changes above it.
	Revision int64

	patterns []Pattern
	ops      Ops
	coalesce bool
	feed     *Feed
	seen     uint64 // guarded by feed.mu: the number (Feed.seq) of the last change it matched
	gone     bool   // guarded by feed.mu: dropped from the index

	mu     sync.Mutex         // guards the fields below; taken after feed.mu
	queue  []*Change          // matching changes not taken yet, oldest first
	before int                // the queue's length before the revision being published (see publishGroup)
	ended  bool               // no change will be queued any more
	lagged bool               // it ended because the queue was full
	newest map[string]*queued // while coalescing: each key's change in queue
	slots  []*queued          // while coalescing: the key of each change in queue (nil for a hole)
	holes  int                // while coalescing: the nil slots merged changes left in queue
	ready  chan struct{}      // made by Ready: one value when changes are queued, closed at the end
	notify func()             // set by OnReady: called instead of signalling ready
}

// push queues c and more, the changes of one revision that match, all of
// them or none: none when the queue is not empty and cannot take them all
// within max changes, and then it returns false and the subscription must
// be dropped, unless it coalesces: it then merges its queue instead. An
// empty queue takes them all, even more than max, or a revision larger
// than the buffer could never be sent live. The caller holds feed.mu;
// push does not keep more.
func (sub *Subscription) push(c *Change, more []*Change, max int) bool {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	n := len(sub.queue)
	if sub.newest == nil && n > 0 && n+1+len(more) > max {
		if !sub.coalesce {
			return false
		}
		sub.merge()
	}
	sub.add(c)
	for _, c := range more {
		sub.add(c)
	}
	if n == 0 {
		sub.signal()
	}
	return true
}

// queued is where a coalescing queue holds a key's change, and the oldest
// change it stands for (nil: none but itself), whose previous state the
// consumer has: the merged change is made from the two once, when taken,
// not at every change it replaces.
type queued struct {
	i      int
	oldest *Change
}

// add appends c to the queue; while coalescing, in place of the key's
// older change, which leaves a hole. It costs one map lookup: the slots
// move with their changes when the holes close. The caller holds sub.mu.
func (sub *Subscription) add(c *Change) {
	if sub.newest == nil {
		sub.queue = append(sub.queue, c)
		return
	}
	q, ok := sub.newest[c.Key]
	if ok {
		q.oldest = cmp.Or(q.oldest, sub.queue[q.i])
		sub.queue[q.i], sub.slots[q.i] = nil, nil
		sub.holes++
	} else {
		q = new(queued)
		sub.newest[c.Key] = q
	}
	q.i = len(sub.queue)
	sub.queue = append(sub.queue, c)
	sub.slots = append(sub.slots, q)
	if sub.holes > len(sub.queue)/2 {
		sub.closeHoles()
	}
}

// merge begins coalescing: it keeps the newest change of each key in the
// queue, in revision order, and indexes them. The caller holds sub.mu.
func (sub *Subscription) merge() {
	sub.newest = make(map[string]*queued) // sized by the keys, not by the queue
	q := sub.queue
	sub.queue = q[:0:0]
	for _, c := range q {
		sub.add(c)
	}
	sub.closeHoles()
}

// closeHoles removes the holes from a coalescing queue. The caller holds
// sub.mu.
func (sub *Subscription) closeHoles() {
	n := 0
	for i, c := range sub.queue {
		if c != nil {
			sub.queue[n], sub.slots[n] = c, sub.slots[i]
			sub.slots[n].i = n
			n++
		}
	}
	clear(sub.queue[n:])
	clear(sub.slots[n:])
	sub.queue, sub.slots, sub.holes = sub.queue[:n], sub.slots[:n], 0
}

// unmerge ends coalescing: the queue holds the merged changes, each made
// from a key's newest change and the oldest it stands for. The caller
// holds sub.mu.
func (sub *Subscription) unmerge() {
	sub.closeHoles()
	for i, c := range sub.queue {
		if oldest := sub.slots[i].oldest; oldest != nil {
			sub.queue[i] = c.since(oldest)
		}
	}
	sub.newest, sub.slots = nil, nil
}

// overflow handles a queue over max changes after publishGroup queued a
// revision: it merges a coalescing queue and reports true, or reports
// false: the subscription must lose the revision and be dropped. The
// caller holds sub.mu.
func (sub *Subscription) overflow() bool {
	if !sub.coalesce {
		return false
	}
	if sub.newest == nil {
		sub.merge()
	}
	return true
}

// end marks the subscription ended, once, and tells the consumer. The
// caller holds feed.mu.
func (sub *Subscription) end(lagged bool) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	sub.ended, sub.lagged = true, lagged
	if sub.ready != nil {
		close(sub.ready)
	}
	if sub.notify != nil {
		sub.notify()
	}
}

// signal tells the consumer that changes are queued. The caller holds
// sub.mu.
func (sub *Subscription) signal() {
	if sub.notify != nil {
		sub.notify()
		return
	}
	select {
	case sub.ready <- struct{}{}: // a nil ready is never ready
	default:
	}
}

// Ready returns a channel that receives a value when changes are queued
// after the queue was empty (take them all, or no other value may come),
// and is closed when the subscription ends. Its owner is the
// subscription: a consumer only receives from it.
func (sub *Subscription) Ready() <-chan struct{} {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if sub.ready == nil {
		sub.ready = make(chan struct{}, 1)
		switch {
		case sub.ended:
			close(sub.ready)
		case len(sub.queue) > 0:
			sub.ready <- struct{}{}
		}
	}
	return sub.ready
}

// OnReady makes fn the consumer's signal, for a consumer that does not
// wait in a select: fn is called when changes are queued after the queue
// was empty and when the subscription ends, and at once if either
// already holds. fn runs under the feed's locks, on the publisher's
// goroutine: it must return quickly and must not call into the feed or
// the subscription. OnReady(nil) stops the calls.
func (sub *Subscription) OnReady(fn func()) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	sub.notify = fn
	if fn != nil && (sub.ended || len(sub.queue) > 0) {
		fn()
	}
}

// Take returns every queued change, oldest first, and empties the
// queue; ended reports that the subscription has ended and that nothing
// follows the changes returned. The changes of one revision are queued
// together: Take never returns part of them, so the last change that
// Take returns is the last of its revision that the subscription gets.
// spare, when not nil, is a slice the caller has done with (a previous
// Take's): it is cleared and becomes the queue, to be filled again
// without allocating.
func (sub *Subscription) Take(spare []*Change) (changes []*Change, ended bool) {
	changes, _, ended = sub.TakeMerged(spare)
	return changes, ended
}

// TakeMerged is Take for a coalescing subscription: merged reports that
// the changes were merged because the consumer fell behind. They are then
// the newest change of each key that changed since the last Take, in
// revision order, so that applying all of them brings a copy of the
// matching keys to the state of the last one's revision, but not to the
// state of any revision in between: only the last is a point to resume
// from. A merged change carries the PrevRevision of the oldest change it
// stands for, so it goes from what the consumer has to the newest state.
func (sub *Subscription) TakeMerged(spare []*Change) (changes []*Change, merged, ended bool) {
	clear(spare)
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if merged = sub.newest != nil; merged {
		sub.unmerge()
	}
	changes, sub.queue = sub.queue, spare[:0]
	return changes, merged, sub.ended
}

// Next returns the next change, waiting for one until ctx ends. ok is
// false when the subscription has ended and every change queued before
// its end was returned, or when ctx ended first. It is for consumers
// that take one change at a time, which cannot tell whether more of its
// revision follow; Take serves whole revisions with one lock.
func (sub *Subscription) Next(ctx context.Context) (c *Change, ok bool) {
	for {
		sub.mu.Lock()
		if sub.newest != nil { // the indexes would not survive taking one
			sub.unmerge()
		}
		if len(sub.queue) > 0 {
			c = sub.queue[0]
			sub.queue[0] = nil
			sub.queue = sub.queue[1:]
			sub.mu.Unlock()
			return c, true
		}
		ended := sub.ended
		sub.mu.Unlock()
		if ended {
			return nil, false
		}
		select {
		case <-sub.Ready():
		case <-ctx.Done():
			return nil, false
		}
	}
}

// Lagged reports whether the subscription ended because its queue was
// full.
func (sub *Subscription) Lagged() bool {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	return sub.lagged
}

// Cancel ends the subscription; changes already queued can still be
// taken. It is idempotent. It holds the feed's lock, which publishing
// needs, for about the length of the subscription's patterns.
func (sub *Subscription) Cancel() {
	sub.feed.mu.Lock()
	defer sub.feed.mu.Unlock()
	sub.feed.drop(sub, false)
}
