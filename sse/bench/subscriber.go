package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"kvsse/kv"
	"kvsse/sse"
)

// newSubscribers builds the subscribers, each with its pattern and the
// numbers of the keys that the pattern matches.
func (b *load) newSubscribers() ([]*subscriber, error) {
	cfg := b.cfg
	matching := map[string][]int{} // the keys matched by each distinct pattern
	subs := make([]*subscriber, cfg.subscribers)
	for i := range subs {
		text := strings.ReplaceAll(cfg.pattern, "%d", strconv.Itoa(i%cfg.keys))
		p, err := kv.ParsePattern(text)
		if err != nil {
			return nil, fmt.Errorf("bench: -pattern: %v", err)
		}
		keys, ok := matching[text]
		if !ok {
			for k, key := range b.keys {
				if p.Match(key) {
					keys = append(keys, k)
				}
			}
			matching[text] = keys
		}
		q := url.Values{"pattern": {text}}
		if cfg.format == "ndjson" {
			q.Set("format", "ndjson")
		}
		poll := cfg.format == "poll"
		subs[i] = &subscriber{
			n:       i,
			pattern: text,
			keys:    keys,
			url:     cfg.serverFor(i) + "/watch?" + q.Encode(),
			ndjson:  cfg.format == "ndjson" || poll, // a poll's events are NDJSON objects
			poll:    poll,
		}
	}
	return subs, nil
}

// subscriber is one stream of the bench and what it received. Its fields
// belong to its goroutine (run) until that ends, except last.
type subscriber struct {
	n       int
	pattern string
	keys    []int // numbers of the keys its pattern matches
	url     string
	ndjson  bool
	poll    bool        // long polls instead of a stream
	ready   func(error) // reports the first sync or the first failure; nil after

	// last is the highest id received: of the last change of a revision,
	// a sync or a heartbeat. It is where the stream resumes; the run reads
	// it to see whether the subscriber has caught up.
	last atomic.Int64

	synced     bool     // the first sync arrived
	base       int64    // the revision of the first sync
	seen       []uint64 // bit i: revision base+1+i was received
	events     int64    // revisions received above the first sync, each once, at its last event
	dups       int64    // revisions received again
	outOfOrder int64    // revisions received after a higher one
	resets     int64
	reconnects int64
	lastErr    error // why the last connection ended
	lastEvent  time.Time
	lat        histogram // end-to-end latency of changes that carry a send time

	// The state of the current connection.
	live    bool // its sync arrived
	inReset bool // a reset arrived and its snapshot is being sent
}

type kind uint8

const (
	kindOther kind = iota
	kindPut
	kindDelete
	kindSync
	kindReset
	kindHeartbeat
)

func kindOf(name []byte) kind {
	switch {
	case string(name) == "put":
		return kindPut
	case string(name) == "delete":
		return kindDelete
	case string(name) == "sync":
		return kindSync
	case string(name) == "reset":
		return kindReset
	case string(name) == "heartbeat":
		return kindHeartbeat
	}
	return kindOther
}

// run follows the stream until ctx ends, reconnecting with Last-Event-ID
// whenever it ends. It sends to ready once: nil when the first sync
// arrives, or why the first connection failed before it (and then
// returns).
func (s *subscriber) run(ctx context.Context, b *load, ready chan<- error) {
	select {
	case b.gate <- struct{}{}:
	case <-ctx.Done():
		ready <- ctx.Err()
		return
	}
	s.ready = func(err error) {
		<-b.gate
		ready <- err
		s.ready = nil
	}
	const minBackoff, maxBackoff = 20 * time.Millisecond, time.Second
	backoff := minBackoff
	for {
		s.live, s.inReset = false, false
		var err error
		if s.poll {
			err = s.follow(ctx, b)
		} else if body, cerr := s.connect(ctx, b); cerr != nil {
			err = cerr
		} else {
			err = s.read(body)
			body.Close()
		}
		if err == nil || errors.Is(err, io.EOF) {
			err = errors.New("stream ended")
		}
		if s.ready != nil {
			s.ready(fmt.Errorf("bench: subscriber %d (%s): %w", s.n, s.pattern, err))
			return
		}
		if ctx.Err() != nil {
			return
		}
		s.reconnects++
		s.lastErr = err
		if s.live {
			backoff = minBackoff
			continue // at once: the server dropped us for lagging
		}
		if !sleepUntil(ctx, time.Now().Add(backoff)) {
			return
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// connect opens the stream, resuming after the last id once synced.
func (s *subscriber) connect(ctx context.Context, b *load) (io.ReadCloser, error) {
	return s.get(ctx, b, s.url)
}

// get sends a GET of u (a /watch URL), with the last id once synced, and
// returns the body of a 200.
func (s *subscriber) get(ctx context.Context, b *load, u string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	if s.synced {
		req.Header.Set("Last-Event-ID", strconv.FormatInt(s.last.Load(), 10))
	}
	resp, err := b.watchHTTP.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("GET /watch: %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	return resp.Body, nil
}

// follow long-polls until a poll fails: poll=1 first, whose revision is
// the subscriber's sync, then waits from the last revision (sent as
// Last-Event-ID). The subscriber is ready once its first wait's headers
// came: the server sends them when the poll waits, so that the idle
// memory is measured with every poll waiting.
func (s *subscriber) follow(ctx context.Context, b *load) error {
	for {
		u := s.url + "&poll=1"
		if s.synced {
			u = s.url + "&wait=1m"
		}
		body, err := s.get(ctx, b, u)
		if err != nil {
			return err
		}
		if s.synced && s.ready != nil {
			s.ready(nil)
		}
		answer, err := io.ReadAll(io.LimitReader(body, maxAnswer))
		body.Close()
		if err != nil {
			return err
		}
		if err := s.answer(answer, time.Now()); err != nil {
			return err
		}
	}
}

// maxAnswer bounds a long poll's answer: 1,000 changes of the longest
// line.
const maxAnswer = 1000 * maxLine

// answer handles a long poll's answer: its changes as the NDJSON lines
// they are, then its revision as a heartbeat's (the first answer's as the
// sync, without calling ready).
func (s *subscriber) answer(body []byte, now time.Time) error {
	var a struct {
		Revision int64             `json:"revision"`
		Reset    string            `json:"reset"`
		Events   []json.RawMessage `json:"events"`
	}
	if err := json.Unmarshal(body, &a); err != nil {
		return fmt.Errorf("bad answer %.200q: %w", body, err)
	}
	if a.Reset != "" {
		s.resets++
	}
	for _, ev := range a.Events {
		name, _, _ := bytes.Cut(bytes.TrimPrefix(ev, []byte(`{"event":"`)), []byte(`"`))
		if err := s.frame(sse.Frame{Event: name, Data: ev, HasData: true}, now); err != nil {
			return err
		}
	}
	s.live = true
	if !s.synced {
		s.synced, s.base = true, a.Revision
		s.last.Store(a.Revision)
	}
	s.advance(a.Revision)
	return nil
}

// maxLine bounds a line of the stream (a value of 1 MiB escaped as JSON
// may take 6 MiB).
const maxLine = 16 << 20

// read handles the events of body until it ends. It reads the clock once
// a read of body, as the arrival time of every event in it, rather than
// once an event.
func (s *subscriber) read(body io.Reader) error {
	rb := &readMark{r: body}
	var rd *sse.Reader
	if s.ndjson {
		rd = sse.NewNDJSONReader(rb, maxLine)
	} else {
		rd = sse.NewReaderSize(rb, maxLine)
	}
	var now time.Time
	for {
		f, err := rd.NextFrame()
		if err != nil {
			return err
		}
		if rb.read {
			now, rb.read = time.Now(), false
		}
		if err := s.frame(f, now); err != nil {
			return err
		}
	}
}

// readMark notes that a read was made, so that the clock is read once a
// read.
type readMark struct {
	r    io.Reader
	read bool
}

func (m *readMark) Read(p []byte) (int, error) {
	m.read = true
	return m.r.Read(p)
}

// lastField ends the NDJSON line of a change that is the last of its
// revision on the stream: kvsse writes "last":true as the final field.
const lastField = `,"last":true}`

// frame handles one event of the stream. A change counts only at the
// event that ends its revision, the one with an id of its own (SSE) or
// "last":true (NDJSON): the changes of a revision before it (a
// transaction's) are counted with it, and a stream cut before it resumes
// from before the revision and gets it again whole.
func (s *subscriber) frame(f sse.Frame, now time.Time) error {
	if !f.HasData { // a heartbeat: no event fires, the id moves
		if id, ok := parseRev(f.ID); ok {
			s.advance(id)
		}
		return nil
	}
	kind := kindOf(f.Event)
	if s.ndjson {
		rev, hasRev := jsonInt(f.Data, `"revision":`)
		if kind == kindPut || kind == kindDelete {
			hasRev = hasRev && bytes.HasSuffix(f.Data, []byte(lastField))
		}
		return s.event(kind, rev, hasRev, sentTime(f.Data), now)
	}
	id, hasID := parseRev(f.ID)
	return s.event(kind, id, hasID && f.HasID, sentTime(f.Data), now)
}

// event handles a dispatched event of either format. id is its SSE id,
// or its NDJSON revision; hasID says that the event carries it as a
// point to resume from: a change that ends its revision, a sync, a
// heartbeat.
func (s *subscriber) event(kind kind, id int64, hasID bool, sent int64, now time.Time) error {
	switch kind {
	case kindSync:
		if !hasID {
			return errors.New("sync event without a revision")
		}
		s.live, s.inReset = true, false
		if !s.synced {
			s.synced, s.base = true, id
			s.last.Store(id)
			s.ready(nil)
		}
		s.advance(id)
	case kindReset:
		s.resets++
		s.inReset = true
	case kindHeartbeat:
		if hasID {
			s.advance(id)
		}
	case kindPut, kindDelete:
		if !s.synced || !hasID || s.inReset {
			// A snapshot item (a key's state, not a change), or a change
			// before the last of its revision, which counts for them all.
			return nil
		}
		s.change(id, sent, now)
	}
	return nil
}

// advance moves the resume point to id, if it is higher.
func (s *subscriber) advance(id int64) {
	if id > s.last.Load() {
		s.last.Store(id)
	}
}

// maxTracked bounds the bitset of received revisions (256 MiB).
const maxTracked = 1 << 31

// change records a received revision, at its last event: its order,
// whether it came before, the latency of that event.
func (s *subscriber) change(rev, sent int64, now time.Time) {
	s.events++
	s.lastEvent = now
	if sent > 0 {
		s.lat.record(now.UnixNano() - sent)
	}
	last := s.last.Load()
	switch i := rev - s.base - 1; {
	case i < 0:
		s.outOfOrder++ // older than the first sync
	case i >= maxTracked:
		// not tracked: counted as unexpected
	default:
		w, bit := int(i>>6), uint64(1)<<(i&63)
		if w >= len(s.seen) {
			s.seen = append(s.seen, make([]uint64, max(w+1-len(s.seen), len(s.seen)))...)
		}
		switch {
		case s.seen[w]&bit != 0:
			s.dups++
		case rev <= last:
			s.outOfOrder++
		}
		s.seen[w] |= bit
	}
	if rev > last {
		s.last.Store(rev)
	}
}

// has reports whether revision rev was received.
func (s *subscriber) has(rev int64) bool {
	i := rev - s.base - 1
	if i < 0 || i >= maxTracked || int(i>>6) >= len(s.seen) {
		return false
	}
	return s.seen[i>>6]&(1<<(i&63)) != 0
}

// parseRev parses a revision: decimal digits only.
func parseRev(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// jsonInt returns the number after key (such as `"revision":`) in a JSON
// object. Inside a JSON string every quote is escaped, so the first
// occurrence of key is the field's.
func jsonInt(obj []byte, key string) (int64, bool) {
	i := bytes.Index(obj, []byte(key))
	if i < 0 {
		return 0, false
	}
	rest := obj[i+len(key):]
	n := 0
	for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
		n++
	}
	return parseRev(rest[:n])
}

// sentTime returns the send time at the start of the value in an event's
// JSON data, or 0 when the value does not start with one.
func sentTime(data []byte) int64 {
	const key = `"value":"`
	i := bytes.Index(data, []byte(key))
	if i < 0 || len(data) < i+len(key)+timeDigits {
		return 0
	}
	var n int64
	for _, c := range data[i+len(key) : i+len(key)+timeDigits] {
		if c < '0' || c > '9' {
			return 0
		}
		n = n*10 + int64(c-'0')
	}
	return n
}
