package main

import (
	"log/slog"
	"net/http"
	"time"
)

// observe wraps the whole API: it counts and times every request in
// a.metrics and logs one access line for it at Info when it ends (for a
// stream, when the stream closes). The line holds the method, the route
// (the ServeMux pattern, never the path: keys stay out of metric labels),
// status, duration, response bytes and remote address; never a header, a
// value or the query string, where an access_token may be. mux is the
// API's router, asked for the route of requests answered before it saw
// them (by the middleware in between).
func (a *api) observe(mux *http.ServeMux, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		d := time.Since(start)
		route := r.Pattern
		if route == "" {
			_, route = mux.Handler(r)
		}
		status := rec.status
		if status == 0 {
			status = http.StatusOK // the handler wrote nothing
		}
		a.metrics.request(route, status, d, rec.stream)
		a.logger.LogAttrs(r.Context(), slog.LevelInfo, "access",
			slog.String("method", r.Method),
			slog.String("route", route),
			slog.Int("status", status),
			slog.Duration("duration", d),
			slog.Int64("bytes", rec.bytes),
			slog.String("remote", r.RemoteAddr))
	})
}

// recorder is a ResponseWriter that notes the status, whether the
// response is a stream and how many body bytes were written. It passes
// Flush on, and Unwrap lets http.ResponseController reach the
// connection's deadlines. Only the handler's goroutine uses it.
type recorder struct {
	http.ResponseWriter
	status int   // the final status; 0 until the header is written
	stream bool  // the response is text/event-stream or application/x-ndjson
	bytes  int64 // body bytes written
}

func (rec *recorder) WriteHeader(code int) {
	if rec.status == 0 && code >= 200 { // 1xx are not final
		rec.setStatus(code)
	}
	rec.ResponseWriter.WriteHeader(code)
}

func (rec *recorder) setStatus(code int) {
	rec.status = code
	switch rec.Header().Get("Content-Type") {
	case "text/event-stream", "application/x-ndjson":
		rec.stream = true
	}
}

func (rec *recorder) Write(b []byte) (int, error) {
	if rec.status == 0 {
		rec.setStatus(http.StatusOK)
	}
	n, err := rec.ResponseWriter.Write(b)
	rec.bytes += int64(n)
	return n, err
}

// FlushError flushes the response, reporting a failed write, as
// http.ResponseController.Flush expects.
func (rec *recorder) FlushError() error {
	if rec.status == 0 {
		rec.setStatus(http.StatusOK)
	}
	return http.NewResponseController(rec.ResponseWriter).Flush()
}

// Flush is http.Flusher, for handlers that assert it.
func (rec *recorder) Flush() { rec.FlushError() }

// Unwrap is the ResponseWriter underneath, for http.ResponseController.
func (rec *recorder) Unwrap() http.ResponseWriter { return rec.ResponseWriter }
