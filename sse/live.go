package sse

import "kvsse/kv"

// live is what a stream does once it is live, whoever runs it: Stream on
// the handler's goroutine, or a Pool's worker. Each method appends to enc
// what the client must get; the runner writes it. One goroutine at a time
// owns a live.
type live struct {
	sub   *kv.Subscription
	opts  StreamOptions
	enc   encoder
	spare []*kv.Change // the last batch taken, for the next Take

	// The batch taken and not all appended yet (see deliver).
	batch  []*kv.Change
	next   int  // the index in batch of the first change not appended
	merged bool // TakeMerged's
	ended  bool // TakeMerged's: the subscription ended after batch
}

// chunk is about the most bytes of changes that deliver appends at once:
// a stream far behind is sent its backlog a chunk at a time, through
// buffers that stay this small and are used again, instead of buffers as
// large as the backlog, made, cleared and copied for each batch.
const chunk = 16 << 10

// deliver appends the queued changes, about a chunk of them: when more
// reports that some of the batch taken are left, the runner writes what
// was appended and calls deliver again. It returns why the stream ends
// when the subscription has ended and all its changes were appended, ""
// otherwise.
func (l *live) deliver() string {
	if !l.more() {
		// whole revisions: a Take never splits one
		l.batch, l.merged, l.ended = l.sub.TakeMerged(l.spare)
		l.next, l.spare = 0, nil
	}
	if len(l.batch) > 0 {
		l.next = l.enc.changes(l.batch, l.merged, l.next, chunk)
	}
	if l.more() {
		return ""
	}
	l.spare, l.batch = keepSpare(l.batch), nil
	if l.ended {
		if l.sub.Lagged() {
			return EndLag
		}
		return EndClosed
	}
	return ""
}

// more reports whether changes taken wait to be appended by deliver.
func (l *live) more() bool { return l.next < len(l.batch) }

// heartbeat appends the queued changes, then a heartbeat whose id is the
// store's revision: read before the take, so every change up to it is
// written before the id moves the client past it. While changes taken
// earlier wait (more), it appends the next of them and no heartbeat: they
// keep the connection alive, and changes queued after them would be
// passed by the id. It returns why the stream ends, as deliver.
func (l *live) heartbeat() string {
	if l.more() {
		return l.deliver()
	}
	rev := l.opts.Revision()
	if why := l.deliver(); why != "" || l.more() {
		return why
	}
	l.enc.heartbeat(max(rev, l.enc.last))
	return ""
}

// shutdown appends the changes that came before the server began to stop,
// all of them, and, in SSE, the retry line that spreads the clients'
// return.
func (l *live) shutdown() {
	for l.more() { // the rest of a batch taken earlier
		l.deliver()
	}
	for l.deliver() == "" && l.more() { // what was queued since
	}
	if l.opts.Format == SSE {
		l.enc.retry(l.opts.ShutdownRetry)
	}
}

// keepSpare returns the batch just taken, to be the next Take's spare,
// unless it is big: a busy stream's batches then reuse one slice, and a
// burst's big one goes back to the collector.
func keepSpare(changes []*kv.Change) []*kv.Change {
	if cap(changes) > 256 {
		return nil
	}
	return changes
}
