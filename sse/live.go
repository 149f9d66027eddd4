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
}

// deliver appends every queued change. It returns why the stream ends
// when the subscription has ended, "" otherwise.
func (l *live) deliver() string {
	changes, merged, over := l.sub.TakeMerged(l.spare) // whole revisions: a Take never splits one
	l.enc.changes(changes, merged)
	l.spare = keepSpare(changes)
	if over {
		if l.sub.Lagged() {
			return EndLag
		}
		return EndClosed
	}
	return ""
}

// heartbeat appends the queued changes, then a heartbeat whose id is the
// store's revision: read before the take, so every change up to it is
// written before the id moves the client past it. It returns why the
// stream ends, as deliver.
func (l *live) heartbeat() string {
	rev := l.opts.Revision()
	if why := l.deliver(); why != "" {
		return why
	}
	l.enc.heartbeat(max(rev, l.enc.last))
	return ""
}

// shutdown appends the changes that came before the server began to stop
// and, in SSE, the retry line that spreads the clients' return.
func (l *live) shutdown() {
	l.deliver()
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
