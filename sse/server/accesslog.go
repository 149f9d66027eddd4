package server

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
//
// A handler that hands its response over to another goroutine (a stream
// whose connection is taken over) calls handOver: the request is then
// counted and logged when that goroutine calls the function it returns.
func (a *api) observe(mux *http.ServeMux, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &recorder{ResponseWriter: w, a: a, mux: mux, r: r, start: time.Now()}
		next.ServeHTTP(rec, r)
		if !rec.handedOver {
			e := rec.entry()
			e.log(0)
		}
	})
}

// access is what the access line of a request holds: a stream that lives
// on after its handler keeps this, not the request.
type access struct {
	a             *api
	start         time.Time
	method, route string
	remote        string
	status        int
	stream        bool
	bytes         int64
	ops           int // the changes a transaction asked for; 0: not a transaction
}

func (rec *recorder) entry() access {
	r := rec.r
	route := r.Pattern
	if route == "" {
		_, route = rec.mux.Handler(r)
	}
	status := rec.status
	if status == 0 {
		status = http.StatusOK // the handler wrote nothing
	}
	return access{a: rec.a, start: rec.start, method: r.Method, route: route, remote: r.RemoteAddr,
		status: status, stream: rec.stream, bytes: rec.bytes, ops: rec.ops}
}

// log counts the request and logs its line, with bytes more body bytes
// than its recorder saw.
func (e *access) log(bytes int64) {
	d := time.Since(e.start)
	e.a.metrics.request(e.route, e.status, d, e.stream)
	e.a.access.write(e, e.start.Add(d), d, e.bytes+bytes)
}

// attrs are the access line's attributes after the message.
func (e *access) attrs(d time.Duration, bytes int64) []slog.Attr {
	attrs := []slog.Attr{
		slog.String("method", e.method),
		slog.String("route", e.route),
		slog.Int("status", e.status),
		slog.Duration("duration", d),
		slog.Int64("bytes", bytes),
	}
	if e.ops > 0 {
		attrs = append(attrs, slog.Int("ops", e.ops))
	}
	return append(attrs, slog.String("remote", e.remote))
}

// recorderOf returns the recorder that observe made under w, or nil.
func recorderOf(w http.ResponseWriter) *recorder {
	for {
		switch v := w.(type) {
		case *recorder:
			return v
		case interface{ Unwrap() http.ResponseWriter }:
			w = v.Unwrap()
		default:
			return nil
		}
	}
}

// noteOps tells observe how many changes the transaction of w's request
// asked for, for its access line. On a ResponseWriter that observe did
// not make it does nothing.
func noteOps(w http.ResponseWriter, n int) {
	if rec := recorderOf(w); rec != nil {
		rec.ops = n
	}
}

// noteStream tells observe that w's response is a stream, whose duration
// goes to the stream histogram rather than the request latencies: an
// NDJSON export or a long poll's answer is a request. On a ResponseWriter
// that observe did not make it does nothing.
func noteStream(w http.ResponseWriter) {
	if rec := recorderOf(w); rec != nil {
		rec.stream = true
	}
}

// handOver tells observe that the response goes on after the handler
// returns, and returns the function to call once when it ends, with the
// body bytes written after the hand-over. On a ResponseWriter that
// observe did not make it returns nil.
func handOver(w http.ResponseWriter) func(bytes int64) {
	rec := recorderOf(w)
	if rec == nil {
		return nil
	}
	rec.handedOver = true
	e := rec.entry()
	return e.log
}

// recorder is a ResponseWriter that notes the status, whether the
// response is a stream and how many body bytes were written. It passes
// Flush on, and Unwrap lets http.ResponseController reach the
// connection's deadlines. Only the handler's goroutine uses it.
type recorder struct {
	http.ResponseWriter
	status     int   // the final status; 0 until the header is written
	stream     bool  // the response is a /watch stream (noteStream)
	bytes      int64 // body bytes written
	handedOver bool  // the response goes on after the handler (handOver)
	ops        int   // set by noteOps

	a     *api // what observe needs to log the request
	mux   *http.ServeMux
	r     *http.Request
	start time.Time
}

func (rec *recorder) WriteHeader(code int) {
	if rec.status == 0 && code >= 200 { // 1xx are not final
		rec.setStatus(code)
	}
	rec.ResponseWriter.WriteHeader(code)
}

func (rec *recorder) setStatus(code int) {
	rec.status = code
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
