package kv

import (
	"fmt"
	"iter"
	"slices"
	"sort"
	"sync"
)

// Feed is the change feed: the history of recent changes and the live
// subscriptions, indexed by pattern. A Store has one; it is exported so
// that another source of committed changes (a replicated log followed
// over the network) can serve watchers the same way.
type Feed struct {
	subBuffer int

	mu     sync.Mutex // guards everything below; taken after Store.orderMu
	rev    int64      // every change up to rev is published, none above
	hist   history
	idx    *index[*Subscription]
	subs   map[*Subscription]struct{}
	closed bool
	seq    uint64 // numbers the changes published, from 1

	// takers is the scratch of publishGroup, empty between calls: the
	// subscriptions that the revision's changes match, locked.
	takers []*Subscription
}

// NewFeed returns a feed at revision rev that keeps the last history
// changes for resuming watchers and lets a subscription queue subBuffer
// changes before it is dropped as lagging.
func NewFeed(keep, subBuffer int, rev int64) *Feed {
	return &Feed{
		subBuffer: subBuffer,
		rev:       rev,
		hist:      history{max: keep, floor: rev},
		idx:       newIndex[*Subscription](),
		subs:      make(map[*Subscription]struct{}),
	}
}

// Revision returns the feed's revision: every change up to it has been
// published.
func (f *Feed) Revision() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rev
}

// Publish is the hook through which every committed change passes, once,
// in revision order, after it is durable and visible: it is kept in the
// history and sent to each subscription whose patterns match its key,
// without ever waiting. Several changes may share a revision (those of a
// transaction): they must all come in one call, and each subscription
// gets those that match it together, under one lock, so that no consumer
// takes part of them (see Subscription.Take). A subscription whose buffer
// cannot take them all is dropped as lagged, none of them queued. The
// feed's revision then moves to rev, which is at least the last change's:
// a source may know that no change happened up to a revision beyond it.
// changes is reused afterwards, so Publish copies what it keeps.
//
// Finding the subscriptions of a change costs about the length of its key
// plus the subscriptions it matches, not the number of patterns watched
// (see index). The feed's lock is held meanwhile, as the committer holds
// the store's, and for a revision of several changes the lock of each
// subscription they match too, from the first change it gets to the
// last: its consumer's Take waits that long.
func (f *Feed) Publish(changes []Change, rev int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n := len(changes); n > 0 {
		rev = max(rev, changes[n-1].Revision)
	}
	f.rev = max(f.rev, rev)
	for i := 0; i < len(changes); {
		j := i + 1
		for j < len(changes) && changes[j].Revision == changes[i].Revision {
			j++
		}
		if j == i+1 {
			f.publishOne(&changes[i])
		} else {
			f.publishGroup(changes[i:j])
		}
		i = j
	}
}

// publishOne publishes c, the one change of its revision. The caller
// holds f.mu.
func (f *Feed) publishOne(c *Change) {
	c, seq := f.record(c)
	f.idx.match(c.Key, func(sub *Subscription) {
		if sub.seen == seq {
			return // several of its patterns match this key
		}
		sub.seen = seq
		if !sub.ops.Has(c.Op) {
			return
		}
		if !sub.push(c, nil, f.subBuffer) {
			f.drop(sub, true)
		}
	})
}

// record keeps c, shared, in the history and numbers it, and returns the
// shared change and its number. The caller holds f.mu.
func (f *Feed) record(c *Change) (*Change, uint64) {
	c = shared(c)
	f.hist.add(c)
	f.seq++
	return c, f.seq
}

// publishGroup publishes the changes of one revision, several. The caller
// holds f.mu.
//
// It queues each change at once, but holds the lock of each subscription
// it queues one for, from the first until the whole revision is queued,
// so that Take never sees part of it; a subscription whose queue then
// holds too many loses the revision's changes again, before the lock is
// let go, and is dropped. It is the only code that holds the locks of
// several subscriptions, and it holds f.mu, so no one else waits for two
// of them: the order in which it takes them cannot deadlock.
func (f *Feed) publishGroup(group []Change) {
	first := f.seq + 1 // the number of the group's first change
	for i := range group {
		c, seq := f.record(&group[i])
		f.idx.match(c.Key, func(sub *Subscription) {
			if sub.seen == seq || !sub.ops.Has(c.Op) {
				return // several of its patterns match this key, or it does not follow c's kind
			}
			if sub.seen < first { // the first of the group it gets
				sub.mu.Lock()
				sub.before = len(sub.queue)
				f.takers = append(f.takers, sub)
			}
			sub.seen = seq
			sub.add(c)
		})
	}
	for _, sub := range f.takers {
		// As push: a queue that was empty takes them all, a coalescing
		// one merges.
		fits := sub.before == 0 || len(sub.queue) <= f.subBuffer || sub.overflow()
		if !fits {
			clear(sub.queue[sub.before:])
			sub.queue = sub.queue[:sub.before]
		} else if sub.before == 0 {
			sub.signal()
		}
		sub.mu.Unlock()
		if !fits {
			f.drop(sub, true)
		}
	}
	clear(f.takers)
	f.takers = f.takers[:0]
	if cap(f.takers) > 4096 {
		f.takers = nil // do not hold on to a burst
	}
}

// shared copies c for the history and the subscriptions, with its wire
// cache.
func shared(c *Change) *Change {
	p := new(struct {
		c Change
		w WireCache
	}) // one allocation for the change and its cache
	p.c = *c
	p.c.wire = &p.w
	return &p.c
}

// Backfill adds older changes to the history, so that watchers resuming
// from as far back as from are served by the feed: changes must hold
// every change in (from, to], in order, where to is the feed's floor
// (Floor). It does nothing when the floor is no longer to. When the
// history cannot hold them all, it keeps the newest. It holds the feed's
// lock while it copies the history's change pointers into new chunks.
func (f *Feed) Backfill(changes []Change, from, to int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	h := &f.hist
	if h.floor != to || from >= to {
		return
	}
	keep := min(len(changes), h.max-h.n)
	if keep < len(changes) {
		from = changes[len(changes)-keep-1].Revision
	}
	// Spans taken before hold the old chunks, which stay as they are.
	nh := history{max: h.max, floor: from}
	for i := len(changes) - keep; i < len(changes); i++ {
		nh.add(shared(&changes[i]))
	}
	for i := range h.n {
		nh.add(h.at(i))
	}
	*h = nh
}

// drop removes sub from the index and ends it, once; lagged says it was
// dropped because its queue was full. The caller holds f.mu.
func (f *Feed) drop(sub *Subscription, lagged bool) {
	if sub.gone {
		return
	}
	sub.gone = true
	delete(f.subs, sub)
	for _, p := range sub.patterns {
		f.idx.remove(p, sub)
	}
	sub.end(lagged)
}

// Close ends every subscription, and every later Subscribe fails with
// ErrClosed: the source is closing.
func (f *Feed) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for sub := range f.subs {
		f.drop(sub, false)
	}
}

// Restart drops every subscription as lagged and forgets the history,
// and the feed goes on from rev: for a source that lost changes (a
// followed log compacted past the point it had reached). The watchers
// resume, and find their revision too old.
func (f *Feed) Restart(rev int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for sub := range f.subs {
		f.drop(sub, true)
	}
	f.hist.reset(rev)
	f.rev = rev
}

// history keeps the last max changes, oldest first, for resumes. Its
// changes lie in chunks of histChunk slots that are filled in order and
// never written again: a chunk whose oldest changes fall out of the
// history stays as it is until its last one has, and is then let go, not
// reused (so up to histChunk-1 changes that fell out stay in memory). A
// span of the history, once its chunks are known, can therefore be read
// without the feed's lock while changes are published: they go into
// slots after the span, or into new chunks. Taking a span (since) costs a
// binary search and a copy of its chunk pointers, one per histChunk
// changes.
//
// Several changes may share a revision (a transaction's). The floor is
// then the revision of the last change let go, so that a revision the
// history holds only part of is at or below it: a resume is served only
// after the floor, and since never starts inside a revision.
//
// The feed's mu guards a history; the start-up loader fills the store's
// before anything else can see it.
type history struct {
	histSpan
	max   int
	floor int64 // every change with a revision above floor is kept
}

// histChunk is how many changes a chunk of the history holds.
const histChunk = 256

type chunk [histChunk]*Change

// histSpan is a run of n changes, oldest first, from slot head of the
// first chunk on.
type histSpan struct {
	chunks []*chunk
	head   int // < histChunk
	n      int
}

func (s *histSpan) at(i int) *Change {
	j := s.head + i
	return s.chunks[j/histChunk][j%histChunk]
}

// add appends c, and lets the oldest change go when there are more than
// max.
func (h *history) add(c *Change) {
	j := h.head + h.n
	if j/histChunk == len(h.chunks) {
		h.chunks = append(h.chunks, new(chunk))
	}
	h.chunks[j/histChunk][j%histChunk] = c
	h.n++
	if h.n <= h.max {
		return
	}
	h.floor = h.at(0).Revision
	h.head++
	h.n--
	if h.head == histChunk {
		h.chunks[0] = nil
		h.chunks = h.chunks[1:]
		h.head = 0
	}
}

// reset empties the history, which then keeps every change above floor.
// Chunks that spans still hold are left to them.
func (h *history) reset(floor int64) {
	h.histSpan = histSpan{}
	h.floor = floor
}

// since returns the span of the kept changes with revisions above rev.
// The span is the caller's: it stays readable, without the lock, whatever
// the history does afterwards.
func (h *history) since(rev int64) histSpan {
	i := sort.Search(h.n, func(i int) bool { return h.at(i).Revision > rev })
	if i == h.n {
		return histSpan{}
	}
	j, end := h.head+i, h.head+h.n
	return histSpan{
		chunks: slices.Clone(h.chunks[j/histChunk : (end+histChunk-1)/histChunk]),
		head:   j % histChunk,
		n:      h.n - i,
	}
}

// filter returns the span's changes that match, oldest first: nil
// when there are none.
func (s *histSpan) filter(match func(*Change) bool) []*Change {
	var out []*Change
	for i := range s.n {
		if c := s.at(i); match(c) {
			out = append(out, c)
		}
	}
	return out
}

// WatchOptions say what a Watch follows and from where.
type WatchOptions struct {
	Patterns []Pattern
	// From, when Resume is set, asks for every matching change after it.
	From   int64
	Resume bool
	// Snapshot asks for the matching entries first (ignored when resuming
	// within the history).
	Snapshot bool
	// Ops, when not zero, are the only kinds of change followed: in the
	// replay and live, and a snapshot (whose entries are puts) is left
	// out when puts are not followed.
	Ops Ops
	// Coalesce keeps a subscription that falls behind instead of ending
	// it: its waiting changes merge to the newest per key (see
	// Subscription.Take).
	Coalesce bool
}

// Watch subscribes to the changes of keys matching any of opts.Patterns.
// The subscription is registered before the catch-up is taken, at one
// revision, so that catch-up and live changes meet with no gap and no
// duplicate. It returns ErrClosed once the store is closed, and
// ErrInvalidRevision for a negative From.
//
// Watch holds orderMu for reading, which the committer needs to apply
// every batch, only while it registers the subscription (see
// Feed.Subscribe) and, for a snapshot, freezes the ordered keys (constant
// time; the committer's next writes copy the few nodes they change). It
// reads the snapshot, and matches it and the replay against
// opts.Patterns, after it lets go, while writes are committed and queued:
// a catch-up that takes long may end the subscription as lagged before it
// returns.
func (s *Store) Watch(opts WatchOptions) (*Subscription, error) {
	// orderMu holds the revision still while the subscription is
	// registered and the keys are frozen: the view is the store at
	// sub.Revision. Entries are never modified once stored (a write
	// replaces the pointer), so they can be read after.
	s.orderMu.RLock()
	sub, span, snapshot, err := s.feed.subscribe(opts)
	var view orderView
	var now int64
	if err == nil && snapshot {
		now = s.opts.Now().UnixNano()
		view = s.order.freeze()
	}
	s.orderMu.RUnlock()
	if err != nil {
		return nil, err
	}
	sub.Replay = span.filter(opts.wants)
	if snapshot {
		sub.Snapshot = liveMatching(view.prefixed(CommonPrefix(opts.Patterns)), opts.Match, now)
	}
	return sub, nil
}

// Match reports whether key matches any of opts.Patterns.
func (opts WatchOptions) Match(key string) bool {
	for _, p := range opts.Patterns {
		if p.Match(key) {
			return true
		}
	}
	return false
}

// wants reports whether a watch with opts follows c.
func (opts WatchOptions) wants(c *Change) bool {
	return opts.Ops.Has(c.Op) && opts.Match(c.Key)
}

// Subscribe registers a subscription at the feed's revision and fills the
// catch-up the feed can give: Replay when resuming within the history,
// or Reset ("history" or "future"). snapshot reports that the caller must
// fill sub.Snapshot with the matching entries at sub.Revision, which it
// must hold still until it has (no change above it may be published in
// between, or the subscription would receive it twice). Errors:
// ErrClosed, ErrInvalidRevision for a negative From.
//
// Subscribe holds the feed's lock, which publishing needs, for about the
// length of opts.Patterns, whatever else is subscribed, plus, when
// resuming, a binary search of the history and a copy of one pointer per
// 256 changes to replay. It matches those changes against opts.Patterns
// after it lets go, while changes are published and queued: a replay that
// takes long may end the subscription as lagged before it returns.
func (f *Feed) Subscribe(opts WatchOptions) (*Subscription, bool, error) {
	sub, span, snapshot, err := f.subscribe(opts)
	if err != nil {
		return nil, false, err
	}
	sub.Replay = span.filter(opts.wants)
	return sub, snapshot, nil
}

// subscribe is Subscribe but for the replay: it returns the span of the
// history to fill sub.Replay from (empty when there is none to give).
func (f *Feed) subscribe(opts WatchOptions) (sub *Subscription, span histSpan, snapshot bool, err error) {
	if opts.Resume && opts.From < 0 {
		return nil, span, false, fmt.Errorf("kv: watch from %d: %w", opts.From, ErrInvalidRevision)
	}
	sub = &Subscription{patterns: opts.Patterns, ops: opts.Ops, coalesce: opts.Coalesce, feed: f}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, span, false, ErrClosed
	}
	sub.Revision = f.rev
	f.subs[sub] = struct{}{}
	for _, p := range opts.Patterns {
		f.idx.add(p, sub)
	}
	snapshot = opts.Snapshot
	if opts.Resume {
		switch {
		case opts.From > f.rev:
			sub.Reset, snapshot = "future", true
		case opts.From < f.hist.floor:
			sub.Reset, snapshot = "history", true
		default:
			snapshot = false
			span = f.hist.since(opts.From)
		}
	}
	snapshot = snapshot && opts.Ops.Has(OpPut) // its entries are puts
	return sub, span, snapshot, nil
}

// Floor returns the revision after which the feed keeps every change:
// a watcher may resume from it or later.
func (f *Feed) Floor() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hist.floor
}

// liveMatching returns copies of the entries whose keys match and that
// have not expired at now (Unix nanoseconds), in the order given: nil when
// there are none.
func liveMatching(entries iter.Seq[*Entry], match func(string) bool, now int64) []Entry {
	var out []Entry
	for e := range entries {
		if !e.expired(now) && match(e.Key) {
			out = append(out, *e)
		}
	}
	return out
}

// CommonPrefix is a literal prefix that every key matched by any of the
// patterns has: the patterns' longest common prefix up to the first
// wildcard.
func CommonPrefix(patterns []Pattern) string {
	var prefix string
	for i, p := range patterns {
		s := p.Prefix()
		if i == 0 {
			prefix = s
			continue
		}
		n := 0
		for n < len(prefix) && n < len(s) && prefix[n] == s[n] {
			n++
		}
		prefix = prefix[:n]
	}
	return prefix
}
