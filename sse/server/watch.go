package server

import (
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
}

// parseWatch reads the patterns (the path's, then each ?pattern=), the
// revision to resume after (Last-Event-ID wins over ?since=), ?snapshot=
// and the format (?format= or Accept). A stream may have up to
// maxPatterns patterns.
func parseWatch(r *http.Request, maxPatterns int) (watchRequest, error) {
	var wr watchRequest
	q := r.URL.Query()
	raw := q["pattern"]
	if p := r.PathValue("pattern"); p != "" {
		raw = append([]string{p}, raw...)
	}
	if len(raw) == 0 {
		return wr, badParam("name at least one pattern: /watch/PATTERN or /watch?pattern=P")
	}
	if len(raw) > maxPatterns {
		return wr, badParam("at most " + strconv.Itoa(maxPatterns) + " patterns a stream")
	}
	for _, s := range raw {
		p, err := kv.ParsePattern(s)
		if err != nil {
			return wr, err
		}
		wr.opts.Patterns = append(wr.opts.Patterns, p)
	}

	from, source := q.Get("since"), "since"
	if v, ok := r.Header["Last-Event-Id"]; ok && len(v) > 0 && v[0] != "" {
		from, source = v[0], "Last-Event-ID"
	}
	if from != "" {
		n, err := strconv.ParseInt(from, 10, 64)
		if err != nil || n < 0 {
			return wr, badParam(source + " must be a non-negative revision number")
		}
		wr.opts.From, wr.opts.Resume = n, true
	}

	switch s := q.Get("snapshot"); s {
	case "", "0", "false":
	case "1", "true":
		wr.opts.Snapshot = true
	default:
		return wr, badParam("snapshot must be 1 or 0")
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
		return wr, badParam("format must be sse or ndjson")
	}
	return wr, nil
}

// handleWatch serves a stream. Its resources (the subscriber slots, the
// auth tracking, the subscription) are freed by the stream's end, which
// comes after the handler returned when the stream's connection was
// handed over to a.streams.
func (a *api) handleWatch(w http.ResponseWriter, r *http.Request) {
	wr, err := parseWatch(r, a.cfg.MaxPatterns)
	if err != nil {
		writeError(w, r, a.logger, err)
		return
	}
	revoked, untrack, err := a.auth.track(r, wr.opts.Patterns)
	if err != nil {
		writeError(w, r, a.logger, err)
		return
	}
	select {
	case a.subs <- struct{}{}:
	default:
		untrack()
		writeError(w, r, a.logger, errTooManySubs)
		return
	}
	ip := clientIP(r)
	if !a.subsByIP.acquire(ip) {
		<-a.subs
		untrack()
		writeError(w, r, a.logger, errTooManySubsIP)
		return
	}
	release := func() {
		a.subsByIP.release(ip)
		<-a.subs
		untrack()
	}
	sub, err := a.store.Watch(wr.opts)
	if err != nil {
		release()
		writeError(w, r, a.logger, err)
		return
	}
	a.metrics.streamOpened()
	patterns, remote := len(wr.opts.Patterns), r.RemoteAddr
	var logAccess func(bytes int64) // set when the connection is handed over
	a.streams.Serve(w, r, sub, sse.StreamOptions{
		Format:        wr.format,
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
	}, func(why string, bytes int64) {
		a.metrics.streamEnded(why)
		a.logger.Info("stream ended", "why", why, "patterns", patterns, "remote", remote)
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
