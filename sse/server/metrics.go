package server

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"kvsse/sse"
)

// metrics is the server's registry of counters, gauges and histograms,
// written by hand in the Prometheus text format 0.0.4. One is built by
// serve for each run and handed to the api; nothing is process-global.
// All its methods are safe for concurrent use. On the hot path a request
// costs one mutex-guarded map update; streams cost atomic adds.
type metrics struct {
	mu        sync.Mutex // guards requests, durations and streams; held only for map and slice updates
	requests  map[routeCode]uint64
	durations map[string]*histogram // by route; streams are in streams
	streams   *histogram            // how long streams stayed open

	txns        atomic.Int64 // transactions committed (DELETE /kv?prefix= among them)
	txnChanges  atomic.Int64 // their changes
	subscribers atomic.Int64 // open streams and long polls
	eventsSent  atomic.Int64 // changes written to streams
	ends        [len(streamEnds) + 1]atomic.Int64

	store atomic.Pointer[store] // nil until the store is loaded
}

type routeCode struct {
	route string
	code  int
}

// streamEnds are the reasons sse.Stream gives, the values of the "why"
// label; any other reason is counted as "other".
var streamEnds = [...]string{sse.EndClient, sse.EndLag, sse.EndShutdown, sse.EndClosed, sse.EndWrite, sse.EndAuth, sse.EndAnswered}

// Buckets, in seconds, of the request and stream duration histograms.
var (
	requestBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
	streamBuckets  = []float64{1, 10, 60, 300, 1800, 3600, 6 * 3600, 24 * 3600}
)

func newMetrics() *metrics {
	return &metrics{
		requests:  make(map[routeCode]uint64),
		durations: make(map[string]*histogram),
		streams:   newHistogram(streamBuckets),
	}
}

// setStore makes the store's gauges and counters part of every scrape
// from now on.
func (m *metrics) setStore(s store) { m.store.Store(&s) }

// request records a finished request: its ServeMux pattern, status and
// duration. A stream's duration goes to the stream histogram, so that
// long streams do not swamp the request latencies.
func (m *metrics) request(route string, code int, d time.Duration, stream bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.requests[routeCode{route, code}]++
	if stream {
		m.streams.observe(d.Seconds())
		return
	}
	h := m.durations[route]
	if h == nil {
		h = newHistogram(requestBuckets)
		m.durations[route] = h
	}
	h.observe(d.Seconds())
}

// txn counts a transaction committed with its changes; one that changed
// nothing is not counted.
func (m *metrics) txn(changes int) {
	if changes == 0 {
		return
	}
	m.txns.Add(1)
	m.txnChanges.Add(int64(changes))
}

// streamOpened and streamEnded bracket every stream and long poll, with
// the reason sse.Stream gave for its end.
func (m *metrics) streamOpened() { m.subscribers.Add(1) }

func (m *metrics) streamEnded(why string) {
	m.subscribers.Add(-1)
	i := slices.Index(streamEnds[:], why)
	if i < 0 {
		i = len(streamEnds)
	}
	m.ends[i].Add(1)
}

// ServeHTTP answers a scrape. The body is built in memory, then written:
// the registry's lock is never held while the client reads.
func (m *metrics) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var e expo
	m.writeHTTP(&e)
	e.family("kvsse_subscribers", "gauge", "Streams and long polls open now.")
	e.sample("kvsse_subscribers", "", float64(m.subscribers.Load()))
	e.family("kvsse_events_sent_total", "counter", "Changes written to streams, replayed and live (snapshot items and control events not counted).")
	e.sample("kvsse_events_sent_total", "", float64(m.eventsSent.Load()))
	e.family("kvsse_transactions_total", "counter", "Transactions that changed something (POST /txn, DELETE /kv?prefix=).")
	e.sample("kvsse_transactions_total", "", float64(m.txns.Load()))
	e.family("kvsse_transaction_changes_total", "counter", "The changes those transactions made.")
	e.sample("kvsse_transaction_changes_total", "", float64(m.txnChanges.Load()))
	e.family("kvsse_stream_ends_total", "counter", `Streams ended, by why: "lag" is a subscriber disconnected because its buffer (-sub-buffer) filled.`)
	for i := range m.ends {
		why := "other"
		if i < len(streamEnds) {
			why = streamEnds[i]
		}
		e.sample("kvsse_stream_ends_total", label("why", why), float64(m.ends[i].Load()))
	}
	if p := m.store.Load(); p != nil {
		writeStore(&e, *p)
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(e.b)))
	w.Write(e.b)
}

// writeHTTP writes the request families, sorted so that scrapes compare.
func (m *metrics) writeHTTP(e *expo) {
	m.mu.Lock()
	defer m.mu.Unlock()
	keys := make([]routeCode, 0, len(m.requests))
	for k := range m.requests {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b routeCode) int {
		return cmp.Or(strings.Compare(a.route, b.route), cmp.Compare(a.code, b.code))
	})
	e.family("kvsse_http_requests_total", "counter", "HTTP requests, by route (the ServeMux pattern) and status code.")
	for _, k := range keys {
		e.sample("kvsse_http_requests_total", label("route", k.route)+","+label("code", strconv.Itoa(k.code)), float64(m.requests[k]))
	}
	routes := make([]string, 0, len(m.durations))
	for r := range m.durations {
		routes = append(routes, r)
	}
	slices.Sort(routes)
	e.family("kvsse_http_request_duration_seconds", "histogram", "Time to answer HTTP requests, by route; streams are not included.")
	for _, r := range routes {
		m.durations[r].write(e, "kvsse_http_request_duration_seconds", label("route", r))
	}
	e.family("kvsse_stream_duration_seconds", "histogram", "How long streams stayed open.")
	m.streams.write(e, "kvsse_stream_duration_seconds", "")
}

// writeStore writes the store's families.
func writeStore(e *expo, s store) {
	st := s.Stats()
	for _, f := range []struct {
		name, typ, help string
		v               float64
	}{
		{"kvsse_revision", "gauge", "The store's current revision.", float64(s.Revision())},
		{"kvsse_keys", "gauge", "Keys held (an expired key counts until its delete commits).", float64(st.Keys.Load())},
		{"kvsse_value_bytes", "gauge", "Sum of the lengths of the values held.", float64(st.ValueBytes.Load())},
		{"kvsse_writes_total", "counter", "Committed changes: puts, deletes and expiries.", float64(st.Writes.Load())},
		{"kvsse_write_batches_total", "counter", "Group commits: batches of writes logged together.", float64(st.Batches.Load())},
		{"kvsse_log_fsyncs_total", "counter", "fsyncs of the write-ahead log.", float64(st.Fsyncs.Load())},
		{"kvsse_log_fsync_seconds_total", "counter", "Time spent in fsyncs of the write-ahead log.", float64(st.FsyncNanos.Load()) / 1e9},
		{"kvsse_log_bytes", "gauge", "Bytes in the active log segment.", float64(st.LogBytes.Load())},
		{"kvsse_compactions_total", "counter", "Snapshots written to compact the log.", float64(st.Compactions.Load())},
	} {
		e.family(f.name, f.typ, f.help)
		e.sample(f.name, "", f.v)
	}
}

// histogram counts observations in buckets. Its owner guards it.
type histogram struct {
	bounds []float64 // upper bounds, increasing; +Inf is implied
	counts []uint64  // per bucket, not cumulative; the last is +Inf
	sum    float64
}

func newHistogram(bounds []float64) *histogram {
	return &histogram{bounds: bounds, counts: make([]uint64, len(bounds)+1)}
}

func (h *histogram) observe(v float64) {
	i, _ := slices.BinarySearch(h.bounds, v) // the first bound >= v
	h.counts[i]++
	h.sum += v
}

// write writes the cumulative buckets, _sum and _count of the histogram;
// labels, if any, come before le.
func (h *histogram) write(e *expo, name, labels string) {
	sep := ""
	if labels != "" {
		sep = ","
	}
	var n uint64
	for i, c := range h.counts {
		n += c
		le := math.Inf(1)
		if i < len(h.bounds) {
			le = h.bounds[i]
		}
		e.sample(name+"_bucket", labels+sep+label("le", formatFloat(le)), float64(n))
	}
	e.sample(name+"_sum", labels, h.sum)
	e.sample(name+"_count", labels, float64(n))
}

// expo builds a text exposition.
type expo struct{ b []byte }

// family writes the HELP and TYPE lines that must precede a family's
// samples.
func (e *expo) family(name, typ, help string) {
	e.b = fmt.Appendf(e.b, "# HELP %s %s\n# TYPE %s %s\n", name, helpEscaper.Replace(help), name, typ)
}

// sample writes one sample; labels is "" or `a="x",b="y"` built by label.
func (e *expo) sample(name, labels string, v float64) {
	e.b = append(e.b, name...)
	if labels != "" {
		e.b = append(append(append(e.b, '{'), labels...), '}')
	}
	e.b = append(append(e.b, ' '), formatFloat(v)...)
	e.b = append(e.b, '\n')
}

// label is name="value" with the value escaped as the format asks:
// backslash, double quote and line feed.
func label(name, value string) string {
	return name + `="` + labelEscaper.Replace(value) + `"`
}

var (
	labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
)

func formatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// serveMetrics starts, in g, the -metrics-addr listener: /metrics and the
// net/http/pprof handlers, registered on a mux of its own. It serves until
// ctx ends, and returns its address; with an empty -metrics-addr it
// starts nothing and returns nil.
func serveMetrics(ctx context.Context, g *errgroup.Group, cfg *Config, m *metrics, logger *slog.Logger) (net.Addr, error) {
	if cfg.MetricsAddr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", cfg.MetricsAddr)
	if err != nil {
		return nil, fmt.Errorf("listen -metrics-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m)
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	// A scrape or profile still running after the grace is cut off.
	g.Go(func() error { return sse.Serve(ctx, srv, ln, cfg.ShutdownTimeout, nil) })
	return ln.Addr(), nil
}
