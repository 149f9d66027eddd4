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
	// event's data object with "event" added.
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
	// Revoked, when closed, ends the stream: its credentials lost the
	// right to it. nil never ends it.
	Revoked <-chan struct{}
	// Sent, when not nil, counts the changes written to the client.
	Sent *atomic.Int64
	// FlushInterval is the least time between two flushes of a busy
	// stream: events that arrive sooner wait for the next flush and go
	// out together. 0 flushes every event at once.
	FlushInterval time.Duration
}

// Stream writes a subscription to w until the client goes away, the
// subscription ends (lag or store closed) or opts.Stop is closed, and
// returns why it ended. First come the headers, the retry line, the
// catch-up (reset, snapshot, replay), one sync event at sub.Revision, then
// the live changes. It is the only writer of w and must run in the
// request's handler goroutine. It does not cancel sub.
func Stream(w http.ResponseWriter, r *http.Request, sub *kv.Subscription, opts StreamOptions) string {
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", opts.Format.ContentType())
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	s := &stream{w: w, rc: rc, opts: opts, last: sub.Revision, hurried: make(chan struct{})}
	stop := context.AfterFunc(opts.Stop, s.hurry)
	defer func() {
		if !stop() {
			<-s.hurried // it started: the writer must not be touched after we return
		}
		if s.paceTimer != nil {
			s.paceTimer.Stop()
		}
	}()
	if opts.Format == SSE {
		s.buf = Retry(opts.Retry).AppendTo(s.buf)
	}
	if sub.Reset != "" {
		s.control("reset", sub.Revision, sub.Reset)
	}
	for i := range sub.Snapshot {
		s.snapshotItem(&sub.Snapshot[i])
	}
	for _, c := range sub.Replay {
		s.change(c)
		if len(s.buf) > 64<<10 && !s.flush() {
			return EndWrite
		}
	}
	s.control("sync", sub.Revision, "")
	if !s.flush() {
		return EndWrite
	}

	beat := time.NewTimer(jitter(opts.Heartbeat))
	defer beat.Stop()
	for {
		select {
		case <-r.Context().Done():
			return EndClient
		case <-opts.Revoked:
			return EndAuth
		case <-opts.Stop.Done():
			if opts.Format == SSE {
				s.buf = Retry(time.Duration(rand.Int64N(int64(opts.ShutdownRetry)) + 1)).AppendTo(s.buf)
				s.flush()
			}
			return EndShutdown
		case <-beat.C:
			rev := opts.Revision()
			if !s.drain(sub.C, len(sub.C)) {
				s.flush()
				return s.ended(sub)
			}
			s.heartbeat(max(rev, s.last))
			if !s.flush() {
				return EndWrite
			}
			beat.Reset(jitter(opts.Heartbeat))
		case c, ok := <-sub.C:
			if !ok {
				return s.ended(sub)
			}
			s.change(c)
			s.pace(r.Context())
			if !s.drain(sub.C, len(sub.C)) {
				s.flush()
				return s.ended(sub)
			}
			if !s.flush() {
				return EndWrite
			}
		}
	}
}

// pace waits, when the stream flushed less than FlushInterval ago, until
// that much time has passed, without waking for each event that arrives
// meanwhile: a busy stream then writes everything that gathered with one
// flush (one system call instead of one an event), while a quiet stream's
// event goes out at once. It returns early when the stream must end.
func (s *stream) pace(ctx context.Context) {
	wait := s.opts.FlushInterval - time.Since(s.flushed)
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
	case <-s.opts.Revoked:
	case <-s.opts.Stop.Done():
	}
}

func jitter(d time.Duration) time.Duration {
	return d - d/10 + time.Duration(rand.Int64N(int64(d/5)+1))
}

// stream is the state of one Stream call.
type stream struct {
	w         http.ResponseWriter
	rc        *http.ResponseController
	opts      StreamOptions
	buf       []byte
	scratch   []byte
	last      int64         // the revision of the last change written, or of the sync
	deadline  time.Time     // the write deadline last set
	flushed   time.Time     // when the last flush ended
	paceTimer *time.Timer   // pace's, made on first use
	stopping  atomic.Bool   // the server is shutting down: writes get a short deadline
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

func (s *stream) ended(sub *kv.Subscription) string {
	if sub.Lagged() {
		return EndLag
	}
	return EndClosed
}

// drain appends up to n changes that are already queued, without
// waiting; false when the channel is closed.
func (s *stream) drain(c <-chan *kv.Change, n int) bool {
	for range n {
		select {
		case ch, ok := <-c:
			if !ok {
				return false
			}
			s.change(ch)
		default:
			return true
		}
	}
	return true
}

// flush writes the buffered events and flushes them to the client.
func (s *stream) flush() bool {
	if len(s.buf) == 0 {
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
	_, err := s.w.Write(s.buf)
	s.buf = s.buf[:0]
	if err == nil {
		err = s.rc.Flush()
	}
	s.flushed = time.Now()
	return err == nil
}

// change appends a live or replayed change: id, event name, JSON data.
func (s *stream) change(c *kv.Change) {
	s.last = c.Revision
	if s.opts.Sent != nil {
		s.opts.Sent.Add(1)
	}
	if s.opts.Format == NDJSON {
		s.buf = append(s.buf, c.Encoded(1, encodeNDJSON)...)
		return
	}
	s.buf = append(s.buf, c.Encoded(0, encodeSSE)...)
}

func encodeSSE(c *kv.Change) []byte { return AppendChangeEvent(nil, c) }

func encodeNDJSON(c *kv.Change) []byte { return append(AppendChange(nil, c, true), '\n') }

// AppendChangeEvent appends the SSE event of a change: "id: <revision>",
// "event: put" or "delete", and its JSON data on one line. It is the hot
// path of every stream, so it writes the fields itself rather than through
// New: the id is a number, the name a constant, and the JSON escapes every
// control character, so no raw CR, LF or NUL can reach the wire (a fuzz
// test holds it to what New and Reader make of the same event).
func AppendChangeEvent(b []byte, c *kv.Change) []byte {
	b = append(b, "id: "...)
	b = strconv.AppendInt(b, c.Revision, 10)
	b = append(b, "\nevent: "...)
	b = append(b, c.Event()...)
	b = append(b, "\ndata: "...)
	b = AppendChange(b, c, false)
	return append(b, '\n', '\n')
}

// snapshotItem appends a key of a snapshot: a put event with no id.
func (s *stream) snapshotItem(e *kv.Entry) {
	if s.opts.Format == NDJSON {
		s.buf = append(s.buf, `{"event":"put",`...)
		s.buf = append(appendEntryFields(s.buf, e, false), '}', '\n')
		return
	}
	s.buf = append(s.buf, "event: put\ndata: "...)
	s.buf = AppendEntry(s.buf, e, false)
	s.buf = append(s.buf, '\n', '\n')
}

// control appends a reset or sync event. A sync carries the revision as
// its id; a reset has none.
func (s *stream) control(name string, rev int64, reason string) {
	data := append(s.scratch[:0], `"revision":`...)
	data = strconv.AppendInt(data, rev, 10)
	if reason != "" {
		data = append(data, `,"reason":"`...)
		data = append(data, reason...)
		data = append(data, '"')
	}
	data = append(data, '}')
	s.scratch = data
	if s.opts.Format == NDJSON {
		s.buf = append(s.buf, `{"event":"`...)
		s.buf = append(s.buf, name...)
		s.buf = append(s.buf, `",`...)
		s.buf = append(append(s.buf, data...), '\n')
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
	s.buf = ev.AppendTo(s.buf)
}

// heartbeat appends a keep-alive: in SSE a comment and an id with no data,
// which fires no event but moves the client's last event id to rev.
func (s *stream) heartbeat(rev int64) {
	if s.opts.Format == NDJSON {
		s.buf = append(s.buf, `{"event":"heartbeat","revision":`...)
		s.buf = strconv.AppendInt(s.buf, rev, 10)
		s.buf = append(s.buf, '}', '\n')
		return
	}
	ev, err := Heartbeat("keep-alive", strconv.FormatInt(rev, 10))
	if err != nil {
		panic(err) // a number is a valid id
	}
	s.buf = ev.AppendTo(s.buf)
}
