package sse

import (
	"context"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"kvsse/kv"
)

// EndAnswered is why a long poll ends once it has answered (at once, on
// a matching change, or at the end of its wait).
const EndAnswered = "answered"

// PollOptions make a watch a long poll (StreamOptions.Poll): one JSON
// document answers it instead of a stream.
type PollOptions struct {
	// Wait is how long to wait for a matching change when there is none
	// to answer with at once; 0 answers at once.
	Wait time.Duration
	// Limit is the most changes an answer holds, but never less than the
	// first revision's: an answer holds whole revisions only.
	Limit int
	// Snapshot answers with the matching keys ("items") rather than
	// changes, as a reset does.
	Snapshot bool
	// From is the revision the client has (its since), or -1 when it
	// gave none. An answer cut short by lost rights gives it back.
	From int64
}

// pollState is a long poll in progress: the changes taken from its
// subscription so far. One goroutine at a time owns it: the handler's,
// or the Pool's worker that runs its conn.
type pollState struct {
	sub      *kv.Subscription
	poll     PollOptions
	revision func() int64
	sent     *atomic.Int64
	prev     bool // the events carry previous values
	started  time.Time

	changes []*kv.Change // whole revisions, in order: the replay, then what Take gave
	rev     int64        // the store's revision read before the last Take
	ended   bool         // the subscription ended: nothing more will come
}

// newPollState starts a long poll on sub with opts.Poll, taking the
// replay and whatever is queued already.
func newPollState(sub *kv.Subscription, opts *StreamOptions) *pollState {
	ps := &pollState{sub: sub, poll: *opts.Poll, revision: opts.Revision, sent: opts.Sent, prev: opts.Prev, started: time.Now()}
	ps.changes, sub.Replay = sub.Replay, nil
	ps.take()
	return ps
}

// take adds the queued changes. The store's revision is read first, as a
// heartbeat's is: every matching change up to it is then among them.
func (ps *pollState) take() {
	ps.rev = ps.revision()
	more, ended := ps.sub.Take(nil)
	ps.changes = append(ps.changes, more...)
	ps.ended = ended
}

// due reports whether the poll can answer now, without waiting.
func (ps *pollState) due() bool {
	return ps.items() || ps.poll.Wait == 0 || len(ps.changes) > 0 || ps.ended
}

// items reports whether the answer is the snapshot rather than changes.
func (ps *pollState) items() bool { return ps.poll.Snapshot || ps.sub.Reset != "" }

// waitLeft is the time left of the wait.
func (ps *pollState) waitLeft() time.Duration {
	return max(ps.poll.Wait-time.Since(ps.started), 0)
}

// answer appends the poll's JSON answer:
// {"revision":R,"events":[...]}, each event the object of its NDJSON
// stream line; or {"revision":R,"reset":"history","items":[...]} with
// the snapshot ("reset" left out for a snapshot asked for). R is the
// revision to pass as since next time: the last sent when the limit cut
// the changes or the subscription lagged, else the store's revision
// (nothing that matches up to it is left out). revoked answers no
// change and gives back the client's own revision: its rights went
// during the wait.
func (ps *pollState) answer(b []byte, revoked bool) []byte {
	b = append(b, `{"revision":`...)
	if ps.items() && !revoked {
		b = strconv.AppendInt(b, ps.sub.Revision, 10)
		if r := ps.sub.Reset; r != "" {
			b = append(b, `,"reset":"`...)
			b = append(b, r...)
			b = append(b, '"')
		}
		b = append(b, `,"items":[`...)
		for i := range ps.sub.Snapshot {
			if i > 0 {
				b = append(b, ',')
			}
			b = AppendEntry(b, &ps.sub.Snapshot[i], true)
		}
		return append(b, "]}"...)
	}
	var sent []*kv.Change
	rev := max(ps.rev, ps.sub.Revision)
	switch {
	case revoked:
		rev = ps.poll.From
		if rev < 0 {
			rev = ps.sub.Revision
		}
	default:
		sent = ps.changes[:cutAt(ps.changes, ps.poll.Limit)]
		switch n := len(sent); {
		case n == 0:
		case n < len(ps.changes) || ps.sub.Lagged():
			rev = sent[n-1].Revision
		default: // the store's revision may be read before it reaches the last change published
			rev = max(rev, sent[n-1].Revision)
		}
	}
	b = strconv.AppendInt(b, rev, 10)
	b = append(b, `,"events":[`...)
	for i, c := range sent {
		if i > 0 {
			b = append(b, ',')
		}
		line := encoded(c, NDJSON, endsRevision(sent, i), ps.prev).b
		b = append(b, line[:len(line)-1]...) // without its newline
	}
	if ps.sent != nil {
		ps.sent.Add(int64(len(sent)))
	}
	return append(b, "]}"...)
}

// cutAt returns how many of changes (whole revisions, in order) an answer
// holds: the most whole revisions within limit, or the first revision
// whole when it alone is bigger. A revision is never split, so that the
// revision an answer gives back is one the client has whole.
func cutAt(changes []*kv.Change, limit int) int {
	if len(changes) <= limit {
		return len(changes)
	}
	n := limit
	for n > 0 && changes[n].Revision == changes[n-1].Revision {
		n--
	}
	if n == 0 {
		n = 1
		for n < len(changes) && changes[n].Revision == changes[0].Revision {
			n++
		}
	}
	return n
}

// servePoll answers a long poll on the handler's goroutine: at once when
// it can, else once a matching change comes, the wait is over or the
// server stops (with what came until then), or the client's rights go
// (with nothing). A poll that waits gets its headers first, as it does
// in a Pool: the client knows that it waits. It returns why it ended.
func servePoll(w http.ResponseWriter, r *http.Request, ps *pollState, opts *StreamOptions) string {
	waits := !ps.due()
	pollHeaders(w.Header())
	if waits {
		w.WriteHeader(http.StatusOK)
		if http.NewResponseController(w).Flush() != nil {
			return EndWrite
		}
	}
	why := ps.wait(r.Context(), opts)
	if why == EndClient {
		return why
	}
	body := ps.answer(nil, why == EndAuth)
	if !waits {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
	}
	if opts.WriteTimeout > 0 {
		http.NewResponseController(w).SetWriteDeadline(time.Now().Add(opts.WriteTimeout))
	}
	if _, err := w.Write(body); err != nil {
		return EndWrite
	}
	return why
}

// pollHeaders sets the headers of a long poll's answer.
func pollHeaders(h http.Header) {
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
}

// wait waits until the poll can answer and returns why: EndAnswered (a
// change came, or the wait is over), EndShutdown, EndAuth or EndClient.
func (ps *pollState) wait(ctx context.Context, opts *StreamOptions) string {
	if ps.due() {
		return EndAnswered
	}
	timer := time.NewTimer(ps.waitLeft())
	defer timer.Stop()
	for ready := ps.sub.Ready(); ; {
		select {
		case <-ready:
			if ps.take(); !ps.due() {
				continue
			}
			return EndAnswered
		case <-timer.C:
			ps.take()
			return EndAnswered
		case <-opts.Stop.Done():
			ps.take()
			return EndShutdown
		case <-opts.revoked():
			return EndAuth
		case <-ctx.Done():
			return EndClient
		}
	}
}

// servePoll is Serve for a long poll. One that can answer at once, or
// that the pool would not take, is answered on the handler's goroutine,
// with a Content-Length, on a connection that stays open for the next
// request. One that waits on an HTTP/1.1 connection in clear is taken
// over like a stream: its headers (chunked, Connection: close) go out
// now, and the answer later, from a worker, as one chunk, before the
// connection closes (net/http cannot take a connection back).
func (p *Pool) servePoll(w http.ResponseWriter, r *http.Request, sub *kv.Subscription, opts StreamOptions, done func(why string, bytes int64)) {
	ps := newPollState(sub, &opts)
	if ps.due() || !p.takes(r) {
		done(servePoll(w, r, ps, &opts), 0)
		return
	}
	pollHeaders(w.Header())
	w.Header().Set("Connection", "close")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if rc.Flush() != nil {
		done(EndWrite, 0)
		return
	}
	c := p.takeOver(rc, sub, opts, done)
	if c == nil {
		return
	}
	c.poll = ps
	c.flushed = time.Now()
	p.start(c)
}

// runPoll is run for a long poll the pool took over: it answers, and
// ends, when the poll is due, its wait is over (the beat timer) or the
// server stops; with nothing when its rights went. A client gone ends it
// without an answer.
func (c *conn) runPoll() {
	ps := c.poll
	switch {
	case c.gone.Load():
		c.why = EndClient
		c.finish()
		return
	case c.revoked.Load():
		c.enc.buf = ps.answer(c.enc.buf, true)
		c.end(EndAuth)
		return
	}
	ps.take()
	why := EndAnswered
	switch {
	case c.stopping.Load():
		why = EndShutdown
	case !ps.due() && !c.beatDue.Load():
		return // nothing yet: wait on
	}
	c.enc.buf = ps.answer(c.enc.buf, false)
	c.end(why)
}
