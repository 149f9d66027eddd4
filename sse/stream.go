package sse

import (
	"context"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"kvsse/kv"
)

// Format is the encoding of a stream.
type Format int

const (
	// SSE is text/event-stream.
	SSE Format = iota
	// NDJSON is one JSON object a line (application/x-ndjson), each the
	// event's data object with "event" added, and with "last":true, as
	// its final field, on a change that is the last of its revision on
	// the stream.
	NDJSON
)

// ContentType is the format's media type.
func (f Format) ContentType() string {
	if f == NDJSON {
		return "application/x-ndjson"
	}
	return "text/event-stream"
}

// Why a stream ended, as Stream reports it.
const (
	EndClient   = "client gone"
	EndLag      = "lag"
	EndShutdown = "shutdown"
	EndClosed   = "store closed"
	EndWrite    = "write failed"
	EndAuth     = "auth"
)

// StreamOptions configure Stream.
type StreamOptions struct {
	Format Format
	// Retry is the reconnection delay sent first (SSE only).
	Retry time.Duration
	// Heartbeat is the mean interval of heartbeats; each waits a random
	// ±10 % around it so that many streams do not beat in step.
	Heartbeat time.Duration
	// WriteTimeout bounds each write to the client: a client that does not
	// read for that long is disconnected.
	WriteTimeout time.Duration
	// Stop ends the stream when done (server shutdown). The client is
	// first told to come back after a random delay of up to ShutdownRetry,
	// so that clients do not all return at once. A client that does not
	// read gets a second to take that line, then its write fails: one
	// stalled client must not hold up the shutdown.
	Stop          context.Context
	ShutdownRetry time.Duration
	// Revision returns the store's revision. A heartbeat carries it as its
	// id only after every change up to it has been written.
	Revision func() int64
	// Revoked, when done, ends the stream: its credentials lost the right
	// to it. nil never ends it. (A context rather than a channel, so that a
	// Pool can be told without a goroutine waiting on it.)
	Revoked context.Context
	// Sent, when not nil, counts the changes written to the client.
	Sent *atomic.Int64
	// FlushInterval returns the least time between two flushes of a busy
	// stream, now: events that arrive sooner wait for the next flush and
	// go out together. It is asked at each flush, so that the pacing can
	// follow the load. nil (or 0) flushes every event at once.
	FlushInterval func() time.Duration
	// Prev adds to put and delete events the key's previous value (a
	// watch's prev=1; see AppendChange).
	Prev bool
	// HandOver, when not nil, is called on the handler's goroutine just
	// before a Pool takes the connection over from net/http: from then on
	// the handler's return does not end the response.
	HandOver func()
	// Poll, when not nil, makes the watch a long poll: one JSON answer
	// instead of a stream (Format, Retry, Heartbeat and FlushInterval do
	// not apply).
	Poll *PollOptions
}

// Stream writes a subscription to w until the client goes away, the
// subscription ends (lag or store closed) or opts.Stop is closed, and
// returns why it ended. First come the headers, the retry line, the
// catch-up (reset, snapshot, replay), one sync event at sub.Revision, then
// the live changes. Each change is an event of its own; of the changes of
// one revision (a transaction) that the stream sends, only the last
// carries the revision as its id (SSE) or "last":true (NDJSON), so a
// client cut off in the middle of a revision resumes from before it. It
// relies on sub's replay and Takes holding whole revisions. It is the
// only writer of w and must run in the request's handler goroutine. It
// does not cancel sub. With opts.Poll it answers a long poll instead
// (see PollOptions).
func Stream(w http.ResponseWriter, r *http.Request, sub *kv.Subscription, opts StreamOptions) string {
	if opts.Poll != nil {
		return servePoll(w, r, newPollState(sub, &opts), &opts)
	}
	s := newStream(w, sub, opts)
	defer s.release()
	if !s.catchUp() {
		return EndWrite
	}
	return s.run(r.Context())
}

// newStream writes the headers and starts watching opts.Stop; the caller
// calls release when it has done with w.
func newStream(w http.ResponseWriter, sub *kv.Subscription, opts StreamOptions) *stream {
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", opts.Format.ContentType())
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	s := &stream{w: w, rc: rc, hurried: make(chan struct{})}
	s.live = live{sub: sub, opts: opts, enc: newEncoder(&opts, sub.Revision)}
	s.stopHurry = context.AfterFunc(opts.Stop, s.hurry)
	return s
}

// release stops watching opts.Stop and waits for a hurry under way: the
// writer must not be touched after it returns.
func (s *stream) release() {
	if !s.stopHurry() {
		<-s.hurried
	}
	if s.paceTimer != nil {
		s.paceTimer.Stop()
	}
}

// catchUp writes the retry line, the reset, snapshot and replay, and the
// sync, and flushes them; false when a write failed. It lets go of the
// subscription's catch-up fields once they are written.
func (s *stream) catchUp() bool {
	sub := s.sub
	if s.opts.Format == SSE {
		s.enc.buf = Retry(s.opts.Retry).AppendTo(s.enc.buf)
	}
	if sub.Reset != "" {
		s.enc.control("reset", sub.Revision, sub.Reset)
	}
	for i := range sub.Snapshot {
		s.enc.snapshotItem(&sub.Snapshot[i])
		if len(s.enc.buf) > 64<<10 && !s.flush() {
			return false
		}
	}
	for i, c := range sub.Replay {
		s.enc.change(c, endsRevision(sub.Replay, i))
		if len(s.enc.buf) > 64<<10 && !s.flush() {
			return false
		}
	}
	sub.Snapshot, sub.Replay = nil, nil
	s.enc.control("sync", sub.Revision, "")
	return s.flush()
}

// run writes the live changes until the stream ends, and returns why.
func (s *stream) run(ctx context.Context) string {
	revoked := s.opts.revoked()
	ready := s.sub.Ready()
	beat := time.NewTimer(jitter(s.opts.Heartbeat))
	defer beat.Stop()
	for {
		select {
		case <-ctx.Done():
			return EndClient
		case <-revoked:
			return EndAuth
		case <-s.opts.Stop.Done():
			s.shutdown()
			s.flush()
			return EndShutdown
		case <-beat.C:
			if why := s.flushAll(s.heartbeat()); why != "" {
				return why
			}
			beat.Reset(jitter(s.opts.Heartbeat))
		case <-ready:
			s.pace(ctx)
			if why := s.flushAll(s.deliver()); why != "" {
				return why
			}
		}
	}
}

// flushAll flushes what deliver or heartbeat appended, which returned
// why, then delivers and flushes the rest of the batch taken, a chunk at
// a time. It returns why the stream ends, or "".
func (s *stream) flushAll(why string) string {
	for {
		if !s.flush() && why == "" {
			return EndWrite
		}
		if why != "" || !s.more() {
			return why
		}
		why = s.deliver()
	}
}

// revoked is Revoked's Done channel; nil (never ready) without one.
func (o *StreamOptions) revoked() <-chan struct{} {
	if o.Revoked == nil {
		return nil
	}
	return o.Revoked.Done()
}

// flushInterval is the least time between two flushes now.
func (o *StreamOptions) flushInterval() time.Duration {
	if o.FlushInterval == nil {
		return 0
	}
	return o.FlushInterval()
}

// pace waits, when the stream flushed less than FlushInterval ago, until
// that much time has passed, without waking for each event that arrives
// meanwhile: a busy stream then writes everything that gathered with one
// flush (one system call instead of one an event), while a quiet stream's
// event goes out at once. It returns early when the stream must end.
func (s *stream) pace(ctx context.Context) {
	wait := s.opts.flushInterval() - time.Since(s.flushed)
	if wait <= 0 {
		return
	}
	if s.paceTimer == nil {
		s.paceTimer = time.NewTimer(wait)
	} else {
		s.paceTimer.Reset(wait)
	}
	select {
	case <-s.paceTimer.C:
	case <-ctx.Done():
	case <-s.opts.revoked():
	case <-s.opts.Stop.Done():
	}
}

func jitter(d time.Duration) time.Duration {
	return d - d/10 + time.Duration(rand.Int64N(int64(d/5)+1))
}

// stream is the state of one Stream call.
type stream struct {
	live
	w         http.ResponseWriter
	rc        *http.ResponseController
	deadline  time.Time     // the write deadline last set
	flushed   time.Time     // when the last flush ended
	paceTimer *time.Timer   // pace's, made on first use
	stopping  atomic.Bool   // the server is shutting down: writes get a short deadline
	stopHurry func() bool   // stops watching opts.Stop
	hurried   chan struct{} // closed when hurry has run
}

// stopGrace is how long a write may take once the server is stopping.
const stopGrace = time.Second

// hurry cuts the deadline of a write that may be under way when the server
// starts stopping. It runs in its own goroutine (context.AfterFunc);
// setting a deadline is safe alongside a Write.
func (s *stream) hurry() {
	defer close(s.hurried)
	s.stopping.Store(true)
	s.rc.SetWriteDeadline(time.Now().Add(stopGrace))
}

// flush writes the buffered events and flushes them to the client.
func (s *stream) flush() bool {
	if len(s.enc.buf) == 0 {
		return true
	}
	if s.opts.WriteTimeout > 0 {
		// Moving the deadline costs a syscall-sized amount of work: move
		// it only once half of it is spent.
		if now := time.Now(); s.deadline.Sub(now) < s.opts.WriteTimeout/2 {
			s.deadline = now.Add(s.opts.WriteTimeout)
			s.rc.SetWriteDeadline(s.deadline)
		}
	}
	if s.stopping.Load() {
		s.rc.SetWriteDeadline(time.Now().Add(stopGrace))
	}
	_, err := s.w.Write(s.enc.buf)
	s.enc.buf = s.enc.buf[:0]
	if err == nil {
		err = s.rc.Flush()
	}
	s.flushed = time.Now()
	return err == nil
}

// encoder builds the bytes of a stream's events, in its format.
type encoder struct {
	format  Format
	prev    bool          // changes carry their key's previous value
	sent    *atomic.Int64 // counts the changes appended, when not nil
	buf     []byte
	scratch []byte
	last    int64 // the revision of the last change appended, or of the sync
}

// newEncoder returns the encoder of a stream with opts whose last change
// or sync was at revision last.
func newEncoder(opts *StreamOptions, last int64) encoder {
	return encoder{format: opts.Format, prev: opts.Prev, sent: opts.Sent, last: last}
}

// retry appends the retry line of a stream that ends because the server
// stops: a random delay of up to d, so that clients do not all return at
// once.
func (e *encoder) retry(d time.Duration) {
	e.buf = Retry(time.Duration(rand.Int64N(int64(d)) + 1)).AppendTo(e.buf)
}

// change appends a live or replayed change: its event (SSE) or line
// (NDJSON). last says that c is the last change of its revision that the
// stream sends: only then does its event carry the id (SSE), or its line
// "last":true (NDJSON), so that a client resumes from before a revision
// it did not get whole.
func (e *encoder) change(c *kv.Change, last bool) {
	e.last = c.Revision
	if e.sent != nil {
		e.sent.Add(1)
	}
	if base := c.MergedFrom(); base != nil && base.WireCache() != nil {
		// A merged change: the published one's shared bytes, with the
		// previous state put in.
		w := encoded(base, e.format, last, e.prev)
		e.buf = append(e.buf, w.b[:w.prevAt]...)
		e.buf = appendPrev(e.buf, c, e.prev)
		e.buf = append(e.buf, w.b[w.prevEnd:]...)
		return
	}
	if c.WireCache() == nil { // never published: encoded for this stream alone
		e.buf, _, _ = appendEncoded(e.buf, c, e.format, last, e.prev)
		return
	}
	e.buf = append(e.buf, encoded(c, e.format, last, e.prev).b...)
}

// changes appends the live changes of batch from batch[from], in order,
// until the buffer holds budget bytes or more, and returns the index of
// the first change not appended (len(batch) when all were). It appends at
// least one. The batch must hold whole revisions, as a Take does: a
// change is the last of its revision when the next one in the batch is of
// another revision, or when none follows. A merged batch
// (kv.Subscription.TakeMerged) brings the client to a whole state only at
// its end: only its last change is a point to resume from.
func (e *encoder) changes(batch []*kv.Change, merged bool, from, budget int) int {
	i := from
	for i < len(batch) && (i == from || len(e.buf) < budget) {
		e.change(batch[i], i+1 == len(batch) || !merged && endsRevision(batch, i))
		i++
	}
	return i
}

// endsRevision reports whether changes[i] is the last of its revision in
// changes, which holds whole revisions in order.
func endsRevision(changes []*kv.Change, i int) bool {
	return i+1 == len(changes) || changes[i+1].Revision != changes[i].Revision
}

// encodings are a published change's bytes on the wire, made once for
// every stream that sends the change: they live in the change's
// kv.WireCache, whose only user is this function. They are indexed by
// whether they carry the previous value (1, prev=1) or not (0), by format,
// then by whether the change is the last of its revision on the stream
// (1) or not (0): streams whose patterns match different changes of one
// revision may need both.
type encodings [2][2][2]atomic.Pointer[wire]

// wire is a change's bytes on the wire, and where its previous state
// stands in them (see appendPrev): b[prevAt:prevEnd], empty when it has
// none. A change merged from it (kv.Change.MergedFrom) differs only
// there.
type wire struct {
	b               []byte
	prevAt, prevEnd int
}

// encoded returns c's bytes in format f: its event (SSE) or its line
// (NDJSON), as the last change of its revision on a stream or not (see
// encoder.change), with its previous value or not. For a published change
// they are made once and shared, and must not be modified.
func encoded(c *kv.Change, f Format, last, prev bool) *wire {
	cache := c.WireCache()
	if cache == nil {
		return encode(c, f, last, prev)
	}
	e, _ := cache.Load().(*encodings)
	if e == nil {
		e = cache.LoadOrStore(new(encodings)).(*encodings)
	}
	p := &e[bit(prev)][f][bit(last)]
	if w := p.Load(); w != nil {
		return w
	}
	p.CompareAndSwap(nil, encode(c, f, last, prev))
	return p.Load()
}

func bit(b bool) int {
	if b {
		return 1
	}
	return 0
}

func encode(c *kv.Change, f Format, last, prev bool) *wire {
	w := new(wire)
	w.b, w.prevAt, w.prevEnd = appendEncoded(nil, c, f, last, prev)
	return w
}

// appendEncoded appends c's bytes in format f (see encoded), and says
// where its previous state stands in b, as appendChange.
func appendEncoded(b []byte, c *kv.Change, f Format, last, prev bool) (_ []byte, prevAt, prevEnd int) {
	if f == NDJSON {
		b, prevAt, prevEnd = appendChangeLine(b, c, last, prev)
		return append(b, '\n'), prevAt, prevEnd
	}
	return appendChangeEvent(b, c, last, prev)
}

// AppendChangeEvent appends the SSE event of a change: "id: <revision>"
// when last is set, "event: put" or "delete", and its JSON data on one
// line. last says that the change is the last of its revision that the
// stream sends: the events of a revision before its last carry no id, so
// that a client's last event id only ever names a revision it got whole.
// It is the hot path of every stream, so it writes the fields itself
// rather than through New: the id is a number, the name a constant, and
// the JSON escapes every control character, so no raw CR, LF or NUL can
// reach the wire (a fuzz test holds it to what New and Reader make of the
// same event). prev is AppendChange's.
func AppendChangeEvent(b []byte, c *kv.Change, last, prev bool) []byte {
	b, _, _ = appendChangeEvent(b, c, last, prev)
	return b
}

// appendChangeEvent is AppendChangeEvent, and says where the change's
// previous state stands in b, as appendChange.
func appendChangeEvent(b []byte, c *kv.Change, last, prev bool) (_ []byte, prevAt, prevEnd int) {
	if last {
		b = append(b, "id: "...)
		b = strconv.AppendInt(b, c.Revision, 10)
		b = append(b, '\n')
	}
	b = append(b, "event: "...)
	b = append(b, c.Event()...)
	b = append(b, "\ndata: "...)
	b, prevAt, prevEnd = appendChange(b, c, false, prev)
	return append(b, '\n', '\n'), prevAt, prevEnd
}

// snapshotItem appends a key of a snapshot: a put event with no id.
func (e *encoder) snapshotItem(en *kv.Entry) {
	if e.format == NDJSON {
		e.buf = append(e.buf, `{"event":"put",`...)
		e.buf = append(appendEntryFields(e.buf, en, false), '}', '\n')
		return
	}
	e.buf = append(e.buf, "event: put\ndata: "...)
	e.buf = AppendEntry(e.buf, en, false)
	e.buf = append(e.buf, '\n', '\n')
}

// control appends a reset or sync event. A sync carries the revision as
// its id; a reset has none.
func (e *encoder) control(name string, rev int64, reason string) {
	data := append(e.scratch[:0], `"revision":`...)
	data = strconv.AppendInt(data, rev, 10)
	if reason != "" {
		data = append(data, `,"reason":"`...)
		data = append(data, reason...)
		data = append(data, '"')
	}
	data = append(data, '}')
	e.scratch = data
	if e.format == NDJSON {
		e.buf = append(e.buf, `{"event":"`...)
		e.buf = append(e.buf, name...)
		e.buf = append(e.buf, `",`...)
		e.buf = append(append(e.buf, data...), '\n')
		return
	}
	var id string
	if name == "sync" {
		id = strconv.FormatInt(rev, 10)
	}
	ev, err := New(name, id, append([]byte{'{'}, data...))
	if err != nil {
		panic(err) // the name, id and data are ours and valid
	}
	e.buf = ev.AppendTo(e.buf)
}

// heartbeat appends a keep-alive: in SSE a comment and an id with no data,
// which fires no event but moves the client's last event id to rev.
func (e *encoder) heartbeat(rev int64) {
	if e.format == NDJSON {
		e.buf = append(e.buf, `{"event":"heartbeat","revision":`...)
		e.buf = strconv.AppendInt(e.buf, rev, 10)
		e.buf = append(e.buf, '}', '\n')
		return
	}
	ev, err := Heartbeat("keep-alive", strconv.FormatInt(rev, 10))
	if err != nil {
		panic(err) // a number is a valid id
	}
	e.buf = ev.AppendTo(e.buf)
}
