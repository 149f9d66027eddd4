package server

import (
	"cmp"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"kvsse/kv"
	"kvsse/sse"
)

// watchRequest is a parsed /watch request.
type watchRequest struct {
	opts   kv.WatchOptions
	format sse.Format
	prev   bool // prev=1: put and delete events carry the previous value

	// A long poll (poll=1, or wait=D) answers with one JSON document
	// instead of a stream.
	poll  bool
	wait  time.Duration // 0: answer at once
	limit int           // the most events a poll answers with
}

// isPoll reports whether wr asks for a long poll rather than a stream.
func (wr *watchRequest) isPoll() bool { return wr.poll || wr.wait > 0 }

// pollOptions are the options of a long poll, nil for a stream.
func (wr *watchRequest) pollOptions() *sse.PollOptions {
	if !wr.isPoll() {
		return nil
	}
	from := int64(-1)
	if wr.opts.Resume {
		from = wr.opts.From
	}
	return &sse.PollOptions{
		Wait:     wr.wait,
		Limit:    wr.limit,
		Snapshot: wr.opts.Snapshot && !wr.opts.Resume,
		From:     from,
	}
}

// The events a long poll answers with: by default, and at most.
const (
	defaultPollLimit = 1000
	maxPollLimit     = 10_000
)

// watchPatterns reads the patterns of a /watch request: the path's,
// then each ?pattern=. A stream may have up to max patterns, of maxBytes
// bytes together (0: no limit). It returns
// the valid patterns, and the error of the first invalid one, so that
// the caller can check the rights on the valid ones first.
func watchPatterns(r *http.Request, max, maxBytes int) ([]kv.Pattern, error) {
	raw := r.URL.Query()["pattern"]
	if p := r.PathValue("pattern"); p != "" {
		raw = append([]string{p}, raw...)
	}
	if len(raw) == 0 {
		return nil, badParam("name at least one pattern: /watch/PATTERN or /watch?pattern=P")
	}
	if len(raw) > max {
		return nil, badParam(fmt.Sprintf("%d patterns: at most %d are allowed in one stream (-max-patterns)", len(raw), max))
	}
	if n := patternBytes(raw); maxBytes > 0 && n > maxBytes {
		return nil, badParam(fmt.Sprintf("patterns of %d bytes: at most %d bytes of patterns are allowed in one stream (-max-pattern-bytes)", n, maxBytes))
	}
	var out []kv.Pattern
	var first error
	for _, s := range raw {
		p, err := kv.ParsePattern(s)
		if err != nil {
			first = cmp.Or(first, err)
			continue
		}
		out = append(out, p)
	}
	return out, first
}

// patternBytes is the length of the patterns together.
func patternBytes(raw []string) int {
	n := 0
	for _, p := range raw {
		n += len(p)
	}
	return n
}

// parseWatch reads the rest of a /watch request into wr: the revision to
// resume after (Last-Event-ID wins over ?since=), the switches (snapshot,
// prev, coalesce, poll), events=, a long poll's wait= (at most maxWait)
// and limit=, and the format (?format= or Accept).
func parseWatch(r *http.Request, wr *watchRequest, maxWait time.Duration) error {
	q := r.URL.Query()
	from, source := q.Get("since"), "since"
	if v, ok := r.Header["Last-Event-Id"]; ok && len(v) > 0 && v[0] != "" {
		from, source = v[0], "Last-Event-ID"
	}
	if from != "" {
		n, err := strconv.ParseInt(from, 10, 64)
		if err != nil || n < 0 {
			return badParam(source + " must be a non-negative revision number")
		}
		wr.opts.From, wr.opts.Resume = n, true
	}
	for _, sw := range []struct {
		name string
		to   *bool
	}{
		{"snapshot", &wr.opts.Snapshot},
		{"prev", &wr.prev},
		{"coalesce", &wr.opts.Coalesce},
		{"poll", &wr.poll},
	} {
		switch q.Get(sw.name) {
		case "", "0", "false":
		case "1", "true":
			*sw.to = true
		default:
			return badParam(sw.name + " must be 1 or 0")
		}
	}

	switch e := q.Get("events"); e {
	case "":
	case "put":
		wr.opts.Ops = kv.OpsOf(kv.OpPut)
	case "delete":
		wr.opts.Ops = kv.OpsOf(kv.OpDelete, kv.OpExpire) // an expiry is a delete
	default:
		return badParam("events must be put or delete (leave it out for both)")
	}

	if s := q.Get("wait"); s != "" {
		d, err := time.ParseDuration(s)
		switch {
		case wr.poll:
			return badParam("wait goes without poll: poll=1 answers at once, wait=D waits up to D")
		case err != nil || d <= 0:
			return badParam("wait must be a positive duration, like 30s")
		case d > maxWait:
			return badParam(fmt.Sprintf("wait=%s: a long poll may wait at most %s (-max-wait)", s, maxWait))
		}
		wr.wait = d
	}
	wr.limit = defaultPollLimit
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		switch {
		case !wr.isPoll():
			return badParam("limit goes with a long poll (poll=1 or wait=D)")
		case err != nil || n <= 0 || n > maxPollLimit:
			return badParam(fmt.Sprintf("limit must be a number of events from 1 to %d", maxPollLimit))
		}
		wr.limit = n
	}
	if wr.isPoll() {
		wr.opts.Coalesce = false // an answer holds whole revisions, none skipped
	}

	switch f := q.Get("format"); f {
	case "":
		if strings.Contains(r.Header.Get("Accept"), "application/x-ndjson") {
			wr.format = sse.NDJSON
		}
	case "sse":
	case "ndjson":
		wr.format = sse.NDJSON
	default:
		return badParam("format must be sse or ndjson")
	}
	return nil
}

// handleWatch serves a stream: it parses the request's patterns once,
// authorizes them (track), then reads the rest. Its resources (the subscriber slots, the
// auth tracking, the subscription) are freed by the stream's end, which
// comes after the handler returned when the stream's connection was
// handed over to a.streams.
func (a *api) handleWatch(w http.ResponseWriter, r *http.Request) {
	var wr watchRequest
	ps, perr := watchPatterns(r, a.cfg.MaxPatterns, a.cfg.MaxPatternBytes)
	wr.opts.Patterns = ps
	// The rights come first: a pattern the token may not read is 403,
	// whatever else is wrong with the request.
	revoked, untrack, err := a.auth.track(r, ps)
	if err != nil {
		writeError(w, r, a.logger, err)
		return
	}
	if err := cmp.Or(perr, parseWatch(r, &wr, a.cfg.MaxWait)); err != nil {
		untrack()
		writeError(w, r, a.logger, err)
		return
	}
	admitted, err := a.admit(clientIP(r), wr.opts.Patterns)
	if err != nil {
		untrack()
		writeError(w, r, a.logger, err)
		return
	}
	release := func() {
		admitted()
		untrack()
	}
	sub, err := a.store.Watch(wr.opts)
	if err != nil {
		release()
		writeError(w, r, a.logger, err)
		return
	}
	a.metrics.streamOpened()
	patterns, remote, kind := len(wr.opts.Patterns), r.RemoteAddr, "stream"
	if wr.isPoll() {
		kind = "poll"
	} else {
		noteStream(w)
	}
	var logAccess func(bytes int64) // set when the connection is handed over
	a.streams.Serve(w, r, sub, sse.StreamOptions{
		Format:        wr.format,
		Prev:          wr.prev,
		Retry:         2 * time.Second,
		Heartbeat:     a.cfg.Heartbeat,
		FlushInterval: a.flushInterval,
		WriteTimeout:  30 * time.Second,
		Stop:          a.stopping,
		ShutdownRetry: 5 * time.Second,
		Revision:      a.store.Revision,
		Revoked:       revoked,
		Sent:          &a.metrics.eventsSent,
		HandOver:      func() { logAccess = handOver(w) },
		Poll:          wr.pollOptions(),
	}, func(why string, bytes int64) {
		a.metrics.streamEnded(why)
		a.logger.Info(kind+" ended", "why", why, "patterns", patterns, "remote", remote)
		sub.Cancel()
		release()
		if logAccess != nil {
			logAccess(bytes) // as observe would have, once the handler returned
		}
	})
}

// paceStreams is how many open streams make every busy stream wait the
// whole -flush-interval between two flushes.
const paceStreams = 1000

// flushInterval paces busy streams by load: the wait between two flushes
// grows with the streams open, up to -flush-interval from paceStreams on.
// With many streams the events that gather meanwhile share one write (the
// server's CPU goes to system calls otherwise); with few, where that
// saving is small, an event goes out within a fraction of it.
func (a *api) flushInterval() time.Duration {
	return a.cfg.FlushInterval * time.Duration(min(len(a.subs), paceStreams)) / paceStreams
}
