package main

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

func (a *api) handleWatch(w http.ResponseWriter, r *http.Request) {
	wr, err := parseWatch(r, a.cfg.maxPatterns)
	if err != nil {
		writeError(w, r, a.logger, err)
		return
	}
	revoked, untrack, err := a.auth.track(r, wr.opts.Patterns)
	if err != nil {
		writeError(w, r, a.logger, err)
		return
	}
	defer untrack()
	select {
	case a.subs <- struct{}{}:
		defer func() { <-a.subs }()
	default:
		writeError(w, r, a.logger, errTooManySubs)
		return
	}
	ip := clientIP(r)
	if !a.subsByIP.acquire(ip) {
		writeError(w, r, a.logger, errTooManySubsIP)
		return
	}
	defer a.subsByIP.release(ip)
	sub, err := a.store.Watch(wr.opts)
	if err != nil {
		writeError(w, r, a.logger, err)
		return
	}
	defer sub.Cancel()
	a.metrics.streamOpened()
	why := sse.Stream(w, r, sub, sse.StreamOptions{
		Format:        wr.format,
		Retry:         2 * time.Second,
		Heartbeat:     a.cfg.heartbeat,
		FlushInterval: a.cfg.flushInterval,
		WriteTimeout:  30 * time.Second,
		Stop:          a.stopping,
		ShutdownRetry: 5 * time.Second,
		Revision:      a.store.Revision,
		Revoked:       revoked,
		Sent:          &a.metrics.eventsSent,
	})
	a.metrics.streamEnded(why)
	a.logger.Info("stream ended", "why", why, "patterns", len(wr.opts.Patterns), "remote", r.RemoteAddr)
}
