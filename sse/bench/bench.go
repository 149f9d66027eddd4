// Package bench is "kvsse bench", a load generator that checks what it
// measures, and "kvsse hub", the baselines it compares against. It speaks
// only HTTP to the servers it drives.
package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/bits"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"kvsse/kv"
	"kvsse/sse"
	"kvsse/sse/bench/hub"
)

// benchConfig holds the flags of "kvsse bench".
type benchConfig struct {
	server      string
	writers     int
	rate        float64
	duration    time.Duration
	writes      int64
	valueSize   int
	keys        int
	prefix      string
	subscribers int
	pattern     string
	format      string
	pid         int
	json        bool
	syncTimeout time.Duration
	baseline    bool
	baselineExe string
}

// benchTimeDigits is the length of a send time (UnixNano in decimal, until
// the year 2286), which starts every value the bench writes.
const benchTimeDigits = 19

// UsageError is a command line of "kvsse bench" that is wrong.
type UsageError struct{ msg string }

func (e *UsageError) Error() string { return "bench: " + e.msg }

// flags defines the flags of "kvsse bench" on a new flag set, bound to
// cfg; server is the default of -server.
func flags(cfg *benchConfig, server string) *flag.FlagSet {
	fs := flag.NewFlagSet("kvsse bench", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned, help printed by PrintUsage
	fs.Usage = func() {}
	fs.StringVar(&cfg.server, "server", server, "the server's URL; several, comma-separated, spread the writers and the\nsubscribers over them in turn (nodes in front of one etcd cluster)")
	fs.IntVar(&cfg.writers, "writers", 8, "concurrent writers, each with its own keep-alive connection")
	fs.Float64Var(&cfg.rate, "rate", 0, "writes per second, all writers together; 0: as fast as the server answers")
	fs.DurationVar(&cfg.duration, "duration", 10*time.Second, "how long to write, unless -writes is given")
	fs.Int64Var(&cfg.writes, "writes", 0, "stop after this many writes (instead of after -duration)")
	fs.IntVar(&cfg.valueSize, "value-size", 64, "bytes of each value; at least 19, since a value starts with its send time")
	fs.IntVar(&cfg.keys, "keys", 1000, "write the keys PREFIX/0 to PREFIX/(keys-1), in turn")
	fs.StringVar(&cfg.prefix, "prefix", "bench", "the first segment(s) of the keys written")
	fs.IntVar(&cfg.subscribers, "subscribers", 0, "streams opened, and live, before the first write")
	fs.StringVar(&cfg.pattern, "pattern", "", "each subscriber's pattern (default PREFIX/**); a %d in it stands for\nthe subscriber's number modulo -keys: PREFIX/%d gives each subscriber one key")
	fs.StringVar(&cfg.format, "format", "sse", "stream format: sse or ndjson")
	fs.IntVar(&cfg.pid, "pid", 0, "the server's process id: report its CPU time and memory (Linux /proc)")
	fs.BoolVar(&cfg.json, "json", false, "also print the figures as one JSON object, on the last line")
	fs.DurationVar(&cfg.syncTimeout, "sync-timeout", 10*time.Second, "how long to wait for the subscribers to be live, and, after the\nlast write, for them to receive every change")
	fs.BoolVar(&cfg.baseline, "baseline", false, "first run the same load against a plain Go SSE hub (\"kvsse hub\", started\nas a child process on 127.0.0.1:0), then against -server, and print both\nside by side with the ratios kvsse / baseline; the hub's CPU and memory are\nalways measured, the server's with -pid. Patterns: **, PREFIX/** or a key")
	fs.StringVar(&cfg.baselineExe, "baseline-exe", "", "the kvsse binary that runs the -baseline hub (default: this one)")
	return fs
}

// PrintUsage writes the help of "kvsse bench" to w.
func PrintUsage(w io.Writer) {
	fmt.Fprint(w, `Usage: kvsse bench [flags]

Drives a running server with writers and subscribers, checks that each
subscriber receives every acknowledged change of its pattern exactly once
and in order, and prints throughput and latency. Exit status 0 when every
check passes, 2 otherwise.

`)
	fs := flags(new(benchConfig), "http://127.0.0.1:8080")
	fs.SetOutput(w)
	fs.PrintDefaults()
}

// parseBench parses the arguments of "kvsse bench"; server is the URL to
// use when -server is not given among them. -h prints the help to stdout
// and returns flag.ErrHelp; a bad command line is a *UsageError.
func parseBench(args []string, server string, stdout io.Writer) (*benchConfig, error) {
	cfg := new(benchConfig)
	fs := flags(cfg, server)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			PrintUsage(stdout)
			return nil, err
		}
		return nil, &UsageError{msg: err.Error()}
	}
	if cfg.pattern == "" {
		cfg.pattern = cfg.prefix + "/**"
	}
	var problem string
	switch {
	case fs.NArg() > 0:
		problem = fmt.Sprintf("unexpected arguments %q", fs.Args())
	case cfg.writers < 1:
		problem = "-writers must be at least 1"
	case cfg.rate < 0:
		problem = "-rate must not be negative"
	case cfg.writes < 0:
		problem = "-writes must not be negative"
	case cfg.writes == 0 && cfg.duration <= 0:
		problem = "-duration must be positive"
	case cfg.valueSize < benchTimeDigits:
		problem = fmt.Sprintf("-value-size must be at least %d (a value starts with its send time)", benchTimeDigits)
	case cfg.keys < 1:
		problem = "-keys must be at least 1"
	case cfg.subscribers < 0:
		problem = "-subscribers must not be negative"
	case cfg.format != "sse" && cfg.format != "ndjson":
		problem = "-format must be sse or ndjson"
	case cfg.pid < 0:
		problem = "-pid must not be negative"
	case cfg.syncTimeout <= 0:
		problem = "-sync-timeout must be positive"
	case cfg.baseline && cfg.format != "sse":
		problem = "-baseline streams SSE only: leave out -format ndjson"
	case kv.ValidateKey(cfg.prefix+"/0") != nil:
		problem = fmt.Sprintf("-prefix: %v", kv.ValidateKey(cfg.prefix+"/0"))
	}
	if _, err := kv.ParsePattern(strings.ReplaceAll(cfg.pattern, "%d", "0")); problem == "" && err != nil {
		problem = fmt.Sprintf("-pattern: %v", err)
	}
	for _, srv := range cfg.servers() {
		if u, err := url.Parse(srv); problem == "" && (err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "") {
			problem = fmt.Sprintf("-server %q is not an http(s) URL", srv)
		}
	}
	if problem != "" {
		return nil, &UsageError{msg: problem}
	}
	return cfg, nil
}

// Run runs "kvsse bench", the load generator: it drives a running
// server with writers and subscribers, checks that every subscriber
// received every acknowledged change of its pattern exactly once and in
// order, and reports throughput, latency and, given the server's pid, its
// CPU time and memory. It prints the figures even when a check fails, and
// then returns an error naming the failed checks (exit status 2).
//
// A run has four phases. First the subscribers open their streams and
// each waits for its sync event, so that all are live. Then the writers
// PUT the keys PREFIX/0 to PREFIX/(K-1) in turn, each value starting with
// its send time (UnixNano in decimal), and record the revision of every
// acknowledgement. Then the bench waits, up to -sync-timeout, until each
// subscriber has seen the last acknowledged revision matching its
// pattern. Last, every acknowledged revision matching a subscriber's
// pattern is looked up among the revisions that subscriber received. A
// subscriber that the server drops (for lagging) resumes with
// Last-Event-ID, and the checks hold across its connections.
//
// A subscriber is cheap per event, since it shares the CPUs with the
// server: it reads the stream's frames with sse.Reader (no allocation per
// event), reads the clock once per read rather than once per event,
// marks revisions in a bitset and counts latencies in a fixed-bucket
// histogram. Latency is measured with one clock, so the bench and the
// server must run on the same machine for it to mean anything.
//
// With -baseline, the same load first runs against a plain Go SSE hub
// (benchBaseline), and both sets of figures are printed side by side.
func Run(ctx context.Context, args []string, server string, stdout, stderr io.Writer) error {
	cfg, err := parseBench(args, strings.TrimSuffix(server, "/"), stdout)
	if err != nil {
		return err
	}
	if err := benchRaiseNoFile(); err != nil {
		fmt.Fprintf(stderr, "kvsse: bench: cannot raise the open file limit: %v\n", err)
	}
	if cfg.baseline {
		return benchBaseline(ctx, cfg, stdout, stderr)
	}
	res, err := benchOnce(ctx, cfg)
	if err != nil {
		return err
	}
	if err := res.print(stdout, cfg.json); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return fmt.Errorf("bench: interrupted: %w", ctx.Err())
	}
	if len(res.Failures) > 0 {
		return fmt.Errorf("bench: %s", strings.Join(res.Failures, "; "))
	}
	return nil
}

// benchOnce runs the load of cfg once.
func benchOnce(ctx context.Context, cfg *benchConfig) (*benchResult, error) {
	b, err := newBench(cfg)
	if err != nil {
		return nil, err
	}
	return b.run(ctx)
}

// benchRaiseNoFile raises the soft limit on open files to the hard limit, so
// that thousands of streams can be opened.
func benchRaiseNoFile() error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= lim.Max {
		return nil
	}
	lim.Cur = lim.Max
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
}

// bench is one run of Run. Its fields are set before the writers and
// subscribers start and only read afterwards, except tickets.
type bench struct {
	cfg      *benchConfig
	keys     []string // the keys written, by number
	keyPaths []string // their paths on a server
	writeHTTP,
	watchHTTP *http.Client
	gate chan struct{} // bounds the streams being opened at once

	start   time.Time    // the first write's scheduled time
	end     time.Time    // no write is sent at or after it; zero with -writes
	tickets atomic.Int64 // writes handed out to the writers
}

// servers are the URLs of -server.
func (cfg *benchConfig) servers() []string {
	var out []string
	for srv := range strings.SplitSeq(cfg.server, ",") {
		out = append(out, strings.TrimSuffix(strings.TrimSpace(srv), "/"))
	}
	return out
}

// serverFor is the server of writer or subscriber number i.
func (cfg *benchConfig) serverFor(i int) string {
	srvs := cfg.servers()
	return srvs[i%len(srvs)]
}

func newBench(cfg *benchConfig) (*bench, error) {
	b := &bench{cfg: cfg, gate: make(chan struct{}, 256)}
	var prefix strings.Builder
	for seg := range strings.SplitSeq(cfg.prefix, "/") {
		prefix.WriteString(url.PathEscape(seg) + "/")
	}
	for k := range cfg.keys {
		b.keys = append(b.keys, cfg.prefix+"/"+strconv.Itoa(k))
		b.keyPaths = append(b.keyPaths, "/kv/"+prefix.String()+strconv.Itoa(k))
	}
	base, ok := http.DefaultTransport.(*http.Transport)
	if !ok {
		return nil, errors.New("bench: http.DefaultTransport is not an *http.Transport")
	}
	wt := base.Clone()
	wt.MaxIdleConns = cfg.writers
	wt.MaxIdleConnsPerHost = cfg.writers
	wt.DisableCompression = true
	st := base.Clone()
	st.DisableCompression = true
	st.ReadBufferSize = 16 << 10
	b.writeHTTP = &http.Client{Transport: wt}
	b.watchHTTP = &http.Client{Transport: st}
	return b, nil
}

// run does the whole bench and returns its figures. It returns an error
// only when the bench could not run: bad pattern, a subscriber that could
// not get its stream, an unreadable /proc. Every goroutine it starts has
// ended when it returns.
func (b *bench) run(ctx context.Context) (*benchResult, error) {
	cfg := b.cfg
	defer b.writeHTTP.CloseIdleConnections()
	defer b.watchHTTP.CloseIdleConnections()
	subs, err := b.newSubscribers()
	if err != nil {
		return nil, err
	}
	if err := b.healthy(ctx); err != nil {
		return nil, err
	}
	var srv benchServer
	if cfg.pid > 0 {
		if srv.RSSBeforeKiB, err = benchProcRSS(cfg.pid); err != nil {
			return nil, err
		}
	}

	subCtx, stopSubs := context.WithCancel(ctx)
	var subWG sync.WaitGroup
	defer subWG.Wait()
	defer stopSubs()
	ready := make(chan error, len(subs))
	for _, s := range subs {
		subWG.Go(func() { s.run(subCtx, b, ready) })
	}
	timeout := time.NewTimer(cfg.syncTimeout)
	defer timeout.Stop()
	for n := range subs {
		select {
		case err := <-ready:
			if err != nil {
				return nil, err
			}
		case <-timeout.C:
			return nil, fmt.Errorf("bench: %d of %d subscribers not live after %v (-sync-timeout)", len(subs)-n, len(subs), cfg.syncTimeout)
		case <-ctx.Done():
			return nil, fmt.Errorf("bench: interrupted: %w", ctx.Err())
		}
	}

	var cpu0 time.Duration
	if cfg.pid > 0 {
		if srv.RSSConnectedKiB, err = benchProcRSS(cfg.pid); err != nil {
			return nil, err
		}
		if cpu0, err = benchProcCPU(cfg.pid); err != nil {
			return nil, err
		}
	}

	b.start = time.Now()
	if cfg.writes == 0 {
		b.end = b.start.Add(cfg.duration)
	}
	writers := make([]benchWriter, cfg.writers)
	var wwg sync.WaitGroup
	for i := range writers {
		writers[i].server = cfg.serverFor(i)
		wwg.Go(func() { b.write(ctx, &writers[i]) })
	}
	wwg.Wait()

	acked := collectBenchAcks(writers, len(b.keys))
	timedOut := b.awaitDelivery(ctx, subs, acked)
	if cfg.pid > 0 {
		cpu1, err := benchProcCPU(cfg.pid)
		if err != nil {
			return nil, err
		}
		if srv.RSSAfterKiB, err = benchProcRSS(cfg.pid); err != nil {
			return nil, err
		}
		srv.CPUSeconds = (cpu1 - cpu0).Seconds()
	}
	stopSubs()
	subWG.Wait()

	res := b.result(writers, subs, acked)
	if timedOut {
		res.Failures = append(res.Failures, fmt.Sprintf("not every change arrived within %v after the last write (-sync-timeout)", cfg.syncTimeout))
	}
	if cfg.pid > 0 {
		srv.derive(res)
		res.Server = &srv
	}
	return res, nil
}

// healthy checks that the server answers /healthz with 200, so that a
// bench against no server fails at once rather than after -duration of
// errors.
func (b *bench) healthy(ctx context.Context) error {
	for _, srv := range b.cfg.servers() {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv+"/healthz", nil)
		if err != nil {
			return fmt.Errorf("bench: %v", err)
		}
		resp, err := b.writeHTTP.Do(req)
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("bench: GET %s/healthz: %s", srv, resp.Status)
		}
	}
	return nil
}

// benchWriter is what one writer saw. Only its writer touches it until the
// writers have all ended.
type benchWriter struct {
	server   string // the URL it writes to
	acked    []benchAck
	errors   int64
	firstErr error
	lat      benchHist // PUT round trips
	lastAck  time.Time
}

// benchAck is an acknowledged write: its revision and the number of its key.
type benchAck struct {
	rev int64
	key int32
}

// write sends PUTs until the run's writes are all handed out, its time is
// up, or ctx ends. With -rate, write number n (from 0, across all writers)
// is sent at start + n/rate, or at once when the writers are behind; no
// write starts after the end of -duration either way. After a failed
// write, the writer waits (10 ms, doubling up to 1 s) so that a server
// that is gone or restarting is not hammered.
func (b *bench) write(ctx context.Context, ws *benchWriter) {
	var backoff time.Duration
	for ctx.Err() == nil {
		n := b.tickets.Add(1) - 1
		if b.cfg.writes > 0 && n >= b.cfg.writes {
			return
		}
		at := time.Now().Add(backoff)
		if b.cfg.rate > 0 {
			if due := b.start.Add(time.Duration(float64(n) * float64(time.Second) / b.cfg.rate)); due.After(at) {
				at = due
			}
		}
		if !b.end.IsZero() && (!at.Before(b.end) || !time.Now().Before(b.end)) {
			return // its time is up, or the writers fell behind -rate until the end
		}
		if !benchSleepUntil(ctx, at) {
			return
		}
		if b.put(ctx, ws, int(n%int64(len(b.keys)))) {
			backoff = 0
		} else {
			backoff = min(max(2*backoff, 10*time.Millisecond), time.Second)
		}
	}
}

// benchSleepUntil waits until t, and reports false if ctx ended first.
func benchSleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}

// put writes key number k once, records the outcome in ws and reports
// whether the write was acknowledged.
func (b *bench) put(ctx context.Context, ws *benchWriter, k int) bool {
	value := make([]byte, b.cfg.valueSize) // the transport may read it after Do returns
	sent := time.Now()
	n := len(strconv.AppendInt(value[:0], sent.UnixNano(), 10))
	for i := n; i < len(value); i++ {
		value[i] = 'x'
	}
	fail := func(err error) {
		if ctx.Err() != nil {
			return // interrupted: not the server's failure
		}
		if ws.errors == 0 {
			ws.firstErr = err
		}
		ws.errors++
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, ws.server+b.keyPaths[k], bytes.NewReader(value))
	if err != nil {
		fail(err)
		return false
	}
	resp, err := b.writeHTTP.Do(req)
	if err != nil {
		fail(err)
		return false
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		fail(fmt.Errorf("PUT %s: %s: %s", b.keys[k], resp.Status, bytes.TrimSpace(msg)))
		return false
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		fail(fmt.Errorf("PUT %s: %w", b.keys[k], err))
		return false
	}
	rev, err := strconv.ParseInt(resp.Header.Get("Kvsse-Revision"), 10, 64)
	if err != nil || rev <= 0 {
		fail(fmt.Errorf("PUT %s: %s without a valid Kvsse-Revision (%q)", b.keys[k], resp.Status, resp.Header.Get("Kvsse-Revision")))
		return false
	}
	ws.lastAck = time.Now()
	ws.lat.record(int64(ws.lastAck.Sub(sent)))
	ws.acked = append(ws.acked, benchAck{rev: rev, key: int32(k)})
	return true
}

// benchAcks are the acknowledged revisions of a run, by key.
type benchAcks struct {
	byKey  [][]int64 // the revisions of each key, in no order
	maxRev []int64   // the highest revision of each key, 0 when none
}

func collectBenchAcks(writers []benchWriter, keys int) *benchAcks {
	a := &benchAcks{byKey: make([][]int64, keys), maxRev: make([]int64, keys)}
	for i := range writers {
		for _, w := range writers[i].acked {
			a.byKey[w.key] = append(a.byKey[w.key], w.rev)
			a.maxRev[w.key] = max(a.maxRev[w.key], w.rev)
		}
	}
	return a
}

// awaitDelivery waits until every subscriber has seen the highest
// acknowledged revision matching its pattern, and reports whether it gave
// up after -sync-timeout instead.
func (b *bench) awaitDelivery(ctx context.Context, subs []*benchSub, a *benchAcks) bool {
	targets := make([]int64, len(subs))
	for i, s := range subs {
		for _, k := range s.keys {
			targets[i] = max(targets[i], a.maxRev[k])
		}
	}
	deadline := time.Now().Add(b.cfg.syncTimeout)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for i := 0; i < len(subs); {
		if subs[i].last.Load() >= targets[i] {
			i++
			continue
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return ctx.Err() == nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
	}
	return false
}

// newSubscribers builds the subscribers, each with its pattern and the
// numbers of the keys that the pattern matches.
func (b *bench) newSubscribers() ([]*benchSub, error) {
	cfg := b.cfg
	matching := map[string][]int{} // the keys matched by each distinct pattern
	subs := make([]*benchSub, cfg.subscribers)
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
		subs[i] = &benchSub{
			n:       i,
			pattern: text,
			keys:    keys,
			url:     cfg.serverFor(i) + "/watch?" + q.Encode(),
			ndjson:  cfg.format == "ndjson",
		}
	}
	return subs, nil
}

// benchSub is a subscriber: one stream of the bench and what it received. Its fields
// belong to its goroutine (run) until that ends, except last.
type benchSub struct {
	n       int
	pattern string
	keys    []int // numbers of the keys its pattern matches
	url     string
	ndjson  bool
	ready   func(error) // reports the first sync or the first failure; nil after

	// last is the highest id received: of a change, a sync or a
	// heartbeat. It is where the stream resumes; the run reads it to see
	// whether the subscriber has caught up.
	last atomic.Int64

	synced     bool     // the first sync arrived
	base       int64    // the revision of the first sync
	seen       []uint64 // bit i: revision base+1+i was received
	events     int64    // changes received (ids above the first sync)
	dups       int64    // changes received again
	outOfOrder int64    // changes received after a higher id
	resets     int64
	reconnects int64
	lastErr    error // why the last connection ended
	lastEvent  time.Time
	lat        benchHist // end-to-end latency of changes that carry a send time

	// The state of the current connection.
	live    bool // its sync arrived
	inReset bool // a reset arrived and its snapshot is being sent
}

type benchKind uint8

const (
	benchOther benchKind = iota
	benchPut
	benchDelete
	benchSync
	benchReset
	benchHeartbeat
)

func benchKindOf(name []byte) benchKind {
	switch {
	case string(name) == "put":
		return benchPut
	case string(name) == "delete":
		return benchDelete
	case string(name) == "sync":
		return benchSync
	case string(name) == "reset":
		return benchReset
	case string(name) == "heartbeat":
		return benchHeartbeat
	}
	return benchOther
}

// run follows the stream until ctx ends, reconnecting with Last-Event-ID
// whenever it ends. It sends to ready once: nil when the first sync
// arrives, or why the first connection failed before it (and then
// returns).
func (s *benchSub) run(ctx context.Context, b *bench, ready chan<- error) {
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
		body, err := s.connect(ctx, b)
		if err == nil {
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
		if !benchSleepUntil(ctx, time.Now().Add(backoff)) {
			return
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// connect opens the stream, resuming after the last id once synced.
func (s *benchSub) connect(ctx context.Context, b *bench) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
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

// benchMaxLine bounds a line of the stream (a value of 1 MiB escaped as JSON
// may take 6 MiB).
const benchMaxLine = 16 << 20

// read handles the events of body until it ends. It reads the clock once
// a read of body, as the arrival time of every event in it, rather than
// once an event.
func (s *benchSub) read(body io.Reader) error {
	rb := &readMark{r: body}
	var rd *sse.Reader
	if s.ndjson {
		rd = sse.NewNDJSONReader(rb, benchMaxLine)
	} else {
		rd = sse.NewReaderSize(rb, benchMaxLine)
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

// frame handles one event of the stream: in SSE the id is the event's,
// in NDJSON its "revision" field.
func (s *benchSub) frame(f sse.Frame, now time.Time) error {
	if !f.HasData { // a heartbeat: no event fires, the id moves
		if id, ok := benchParseRev(f.ID); ok {
			s.advance(id)
		}
		return nil
	}
	kind := benchKindOf(f.Event)
	if s.ndjson {
		rev, hasRev := benchJSONInt(f.Data, `"revision":`)
		return s.event(kind, rev, hasRev, benchSentTime(f.Data), now)
	}
	id, hasID := benchParseRev(f.ID)
	return s.event(kind, id, hasID, benchSentTime(f.Data), now)
}

// event handles a dispatched event of either format. id is its SSE id,
// or its NDJSON revision.
func (s *benchSub) event(kind benchKind, id int64, hasID bool, sent int64, now time.Time) error {
	switch kind {
	case benchSync:
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
	case benchReset:
		s.resets++
		s.inReset = true
	case benchHeartbeat:
		if hasID {
			s.advance(id)
		}
	case benchPut, benchDelete:
		if !s.synced || !hasID || s.inReset {
			return nil // a snapshot item: a key's state, not a change
		}
		s.change(id, sent, now)
	}
	return nil
}

// advance moves the resume point to id, if it is higher.
func (s *benchSub) advance(id int64) {
	if id > s.last.Load() {
		s.last.Store(id)
	}
}

// benchMaxTracked bounds the bitset of received revisions (256 MiB).
const benchMaxTracked = 1 << 31

// change records a received change: its order, whether it came before,
// its latency.
func (s *benchSub) change(rev, sent int64, now time.Time) {
	s.events++
	s.lastEvent = now
	if sent > 0 {
		s.lat.record(now.UnixNano() - sent)
	}
	last := s.last.Load()
	switch i := rev - s.base - 1; {
	case i < 0:
		s.outOfOrder++ // older than the first sync
	case i >= benchMaxTracked:
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
func (s *benchSub) has(rev int64) bool {
	i := rev - s.base - 1
	if i < 0 || i >= benchMaxTracked || int(i>>6) >= len(s.seen) {
		return false
	}
	return s.seen[i>>6]&(1<<(i&63)) != 0
}

// benchParseRev parses a revision: decimal digits only.
func benchParseRev(b []byte) (int64, bool) {
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

// benchJSONInt returns the number after key (such as `"revision":`) in a JSON
// object. Inside a JSON string every quote is escaped, so the first
// occurrence of key is the field's.
func benchJSONInt(obj []byte, key string) (int64, bool) {
	i := bytes.Index(obj, []byte(key))
	if i < 0 {
		return 0, false
	}
	rest := obj[i+len(key):]
	n := 0
	for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
		n++
	}
	return benchParseRev(rest[:n])
}

// benchSentTime returns the send time at the start of the value in an event's
// JSON data, or 0 when the value does not start with one.
func benchSentTime(data []byte) int64 {
	const key = `"value":"`
	i := bytes.Index(data, []byte(key))
	if i < 0 || len(data) < i+len(key)+benchTimeDigits {
		return 0
	}
	var n int64
	for _, c := range data[i+len(key) : i+len(key)+benchTimeDigits] {
		if c < '0' || c > '9' {
			return 0
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

// Histogram buckets: exact below 2·benchHistSub ns, then benchHistSub
// buckets for each power of two, up to 2^benchHistMaxBits ns (18 min).
const (
	benchHistSubBits = 6
	benchHistSub     = 1 << benchHistSubBits
	benchHistMaxBits = 40
	benchHistBuckets = (benchHistMaxBits - benchHistSubBits + 1) * benchHistSub
)

// benchHist is a log-linear histogram of durations in nanoseconds. A quantile
// read at its bucket's middle is within 1/128 (0.8 %) of the truth; the
// maximum is exact. It takes 18 KiB once it holds a value. It is not safe
// for concurrent use: each goroutine keeps its own, merged at the end.
type benchHist struct {
	counts []uint64
	n      int64
	max    int64
}

func benchHistBucket(v int64) int {
	if v < 2*benchHistSub {
		return int(v)
	}
	e := bits.Len64(uint64(v)) - benchHistSubBits - 1
	return e*benchHistSub + int(v>>e)
}

// benchHistMid is the middle of bucket i.
func benchHistMid(i int) int64 {
	if i < 2*benchHistSub {
		return int64(i)
	}
	e := i/benchHistSub - 1
	lo := int64(i%benchHistSub+benchHistSub) << e
	return lo + (int64(1)<<e)/2
}

func (h *benchHist) record(v int64) {
	if h.counts == nil {
		h.counts = make([]uint64, benchHistBuckets)
	}
	v = max(v, 0)
	h.max = max(h.max, v)
	h.n++
	h.counts[benchHistBucket(min(v, 1<<benchHistMaxBits-1))]++
}

func (h *benchHist) merge(o *benchHist) {
	if o.n == 0 {
		return
	}
	if h.counts == nil {
		h.counts = make([]uint64, benchHistBuckets)
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// quantile returns the value below which a fraction q of the values lie
// (0 when empty).
func (h *benchHist) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := max(uint64(q*float64(h.n)+0.5), 1)
	var seen uint64
	for i, c := range h.counts {
		if seen += c; seen >= rank {
			return time.Duration(min(benchHistMid(i), h.max))
		}
	}
	return time.Duration(h.max)
}

// benchProcCPU returns the user and system CPU time of process pid, from
// /proc/PID/stat, whose clock ticks are 1/100 s on Linux (USER_HZ).
func benchProcCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("bench: -pid: %w", err)
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("bench: -pid: /proc/%d/stat: too few fields", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("bench: -pid: /proc/%d/stat: %w", pid, err)
	}
	return time.Duration(utime+stime) * (time.Second / 100), nil
}

// benchProcRSS returns the resident set size of process pid in KiB, from
// /proc/PID/status.
func benchProcRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("bench: -pid: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("bench: -pid: /proc/%d/status has no VmRSS", pid)
}

// benchResult is what "kvsse bench" prints. Durations are in milliseconds.
type benchResult struct {
	Writers      int     `json:"writers"`
	Subscribers  int     `json:"subscribers"`
	Format       string  `json:"format"`
	Pattern      string  `json:"pattern"`
	Seconds      float64 `json:"seconds"` // from the first write to the last acknowledgement
	Writes       int64   `json:"writes"`  // acknowledged
	WritesPerSec float64 `json:"writes_per_sec"`
	WriteErrors  int64   `json:"write_errors"`
	PutP50       float64 `json:"put_p50_ms"`
	PutP99       float64 `json:"put_p99_ms"`
	PutMax       float64 `json:"put_max_ms"`
	Events       int64   `json:"events"`          // changes delivered, all subscribers together
	Expected     int64   `json:"events_expected"` // acknowledged changes matching each one's pattern
	EventsPerSec float64 `json:"events_per_sec"`  // from the first write to the last event
	LatencyP50   float64 `json:"latency_p50_ms"`
	LatencyP90   float64 `json:"latency_p90_ms"`
	LatencyP99   float64 `json:"latency_p99_ms"`
	LatencyMax   float64 `json:"latency_max_ms"`
	Gaps         int64   `json:"gaps"`
	Duplicates   int64   `json:"duplicates"`
	OutOfOrder   int64   `json:"out_of_order"`
	Unexpected   int64   `json:"unexpected"` // changes neither acknowledged nor matching
	Reconnects   int64   `json:"reconnects"`
	Resets       int64   `json:"resets"`

	Server   *benchServer `json:"server,omitempty"`
	Failures []string     `json:"failures,omitempty"`
}

// benchServer are the server's CPU time (from the first write until
// every change was delivered) and resident memory: before the subscribers
// connected, once they all were, and at the end.
type benchServer struct {
	CPUSeconds          float64 `json:"cpu_seconds"`
	CPUPerEventMicros   float64 `json:"cpu_us_per_event,omitempty"`
	CPUPerWriteMicros   float64 `json:"cpu_us_per_write,omitempty"`
	RSSBeforeKiB        int64   `json:"rss_before_kib"`
	RSSConnectedKiB     int64   `json:"rss_connected_kib"`
	RSSAfterKiB         int64   `json:"rss_after_kib"`
	RSSPerSubscriberKiB float64 `json:"rss_per_subscriber_kib,omitempty"`
}

func (f *benchServer) derive(r *benchResult) {
	if r.Events > 0 {
		f.CPUPerEventMicros = f.CPUSeconds * 1e6 / float64(r.Events)
	}
	if r.Writes > 0 {
		f.CPUPerWriteMicros = f.CPUSeconds * 1e6 / float64(r.Writes)
	}
	if r.Subscribers > 0 {
		f.RSSPerSubscriberKiB = float64(f.RSSConnectedKiB-f.RSSBeforeKiB) / float64(r.Subscribers)
	}
}

func benchMS(d time.Duration) float64 { return float64(d) / 1e6 }

// result gathers the figures and checks each subscriber against the
// acknowledged writes.
func (b *bench) result(writers []benchWriter, subs []*benchSub, a *benchAcks) *benchResult {
	cfg := b.cfg
	r := &benchResult{Writers: cfg.writers, Subscribers: cfg.subscribers, Format: cfg.format, Pattern: cfg.pattern}
	var put benchHist
	var firstErr error
	lastAck := b.start
	for i := range writers {
		w := &writers[i]
		r.Writes += int64(len(w.acked))
		r.WriteErrors += w.errors
		if firstErr == nil {
			firstErr = w.firstErr
		}
		put.merge(&w.lat)
		if w.lastAck.After(lastAck) {
			lastAck = w.lastAck
		}
	}
	if d := lastAck.Sub(b.start).Seconds(); d > 0 {
		r.Seconds = d
		r.WritesPerSec = float64(r.Writes) / d
	}
	r.PutP50, r.PutP99, r.PutMax = benchMS(put.quantile(0.5)), benchMS(put.quantile(0.99)), benchMS(time.Duration(put.max))
	switch {
	case r.WriteErrors > 0:
		r.Failures = append(r.Failures, fmt.Sprintf("%d of %d writes failed, the first: %v", r.WriteErrors, r.Writes+r.WriteErrors, firstErr))
	case r.Writes == 0:
		r.Failures = append(r.Failures, "no write was made")
	}

	var lat benchHist
	lastEvent := b.start
	var bad []string
	for _, s := range subs {
		var expected, matched, gaps int64
		lowest := int64(-1)
		for _, k := range s.keys {
			for _, rev := range a.byKey[k] {
				expected++
				if s.has(rev) {
					matched++
				} else if gaps++; lowest < 0 || rev < lowest {
					lowest = rev
				}
			}
		}
		unexpected := s.events - s.dups - matched
		r.Events += s.events
		r.Expected += expected
		r.Gaps += gaps
		r.Duplicates += s.dups
		r.OutOfOrder += s.outOfOrder
		r.Unexpected += unexpected
		r.Reconnects += s.reconnects
		r.Resets += s.resets
		lat.merge(&s.lat)
		if s.lastEvent.After(lastEvent) {
			lastEvent = s.lastEvent
		}

		var why []string
		if gaps > 0 {
			why = append(why, fmt.Sprintf("missed %d of %d changes (a gap), the lowest at revision %d", gaps, expected, lowest))
		}
		if s.dups > 0 {
			why = append(why, fmt.Sprintf("%d duplicate changes", s.dups))
		}
		if s.outOfOrder > 0 {
			why = append(why, fmt.Sprintf("%d changes out of order", s.outOfOrder))
		}
		if unexpected > 0 && r.WriteErrors == 0 {
			why = append(why, fmt.Sprintf("%d changes that no write made or its pattern does not match", unexpected))
		}
		if len(why) > 0 {
			if s.lastErr != nil {
				why = append(why, fmt.Sprintf("%d reconnects, the last after: %v", s.reconnects, s.lastErr))
			}
			bad = append(bad, fmt.Sprintf("subscriber %d (%s): %s", s.n, s.pattern, strings.Join(why, ", ")))
		}
	}
	if d := lastEvent.Sub(b.start).Seconds(); d > 0 {
		r.EventsPerSec = float64(r.Events) / d
	}
	r.LatencyP50, r.LatencyP90, r.LatencyP99 = benchMS(lat.quantile(0.5)), benchMS(lat.quantile(0.9)), benchMS(lat.quantile(0.99))
	r.LatencyMax = benchMS(time.Duration(lat.max))
	const shown = 3
	if len(bad) > shown {
		bad = append(bad[:shown], fmt.Sprintf("and %d more subscribers", len(bad)-shown))
	}
	r.Failures = append(r.Failures, bad...)
	return r
}

// print writes the figures one a line, then, with asJSON, as one JSON
// object on the last line.
func (r *benchResult) print(w io.Writer, asJSON bool) error {
	var b bytes.Buffer
	line := func(name, format string, a ...any) {
		fmt.Fprintf(&b, "%-26s "+format+"\n", append([]any{name}, a...)...)
	}
	line("writers", "%d", r.Writers)
	if r.Subscribers > 0 {
		line("subscribers", "%d (%s, %s)", r.Subscribers, r.Format, r.Pattern)
	} else {
		line("subscribers", "0")
	}
	line("seconds", "%.3f", r.Seconds)
	line("writes", "%d", r.Writes)
	line("writes/s", "%.1f", r.WritesPerSec)
	line("write errors", "%d", r.WriteErrors)
	line("put latency p50", "%.3f ms", r.PutP50)
	line("put latency p99", "%.3f ms", r.PutP99)
	line("put latency max", "%.3f ms", r.PutMax)
	if r.Subscribers > 0 {
		line("events delivered", "%d", r.Events)
		line("events expected", "%d", r.Expected)
		line("events/s", "%.1f", r.EventsPerSec)
		line("latency p50", "%.3f ms", r.LatencyP50)
		line("latency p90", "%.3f ms", r.LatencyP90)
		line("latency p99", "%.3f ms", r.LatencyP99)
		line("latency max", "%.3f ms", r.LatencyMax)
		line("gaps", "%d", r.Gaps)
		line("duplicates", "%d", r.Duplicates)
		line("out of order", "%d", r.OutOfOrder)
		line("unexpected", "%d", r.Unexpected)
		line("reconnects", "%d", r.Reconnects)
		line("resets", "%d", r.Resets)
	}
	if s := r.Server; s != nil {
		line("server cpu", "%.2f s", s.CPUSeconds)
		if r.Events > 0 {
			line("server cpu per event", "%.2f µs", s.CPUPerEventMicros)
		}
		if r.Writes > 0 {
			line("server cpu per write", "%.1f µs", s.CPUPerWriteMicros)
		}
		line("server rss before", "%d KiB", s.RSSBeforeKiB)
		line("server rss connected", "%d KiB", s.RSSConnectedKiB)
		line("server rss after", "%d KiB", s.RSSAfterKiB)
		if r.Subscribers > 0 {
			line("server rss per subscriber", "%.1f KiB", s.RSSPerSubscriberKiB)
		}
	}
	if len(r.Failures) == 0 {
		line("checks", "ok")
	} else {
		line("checks", "FAILED")
	}
	return benchWriteReport(w, &b, asJSON, r)
}

// benchWriteReport writes the text report in b and, with asJSON, v as one
// JSON line after it.
func benchWriteReport(w io.Writer, b *bytes.Buffer, asJSON bool, v any) error {
	if asJSON {
		j, err := json.Marshal(v)
		if err != nil {
			return err
		}
		b.Write(j)
		b.WriteByte('\n')
	}
	_, err := w.Write(b.Bytes())
	return err
}

// benchBaseline runs "kvsse bench -baseline": the load of cfg against a
// plain Go SSE hub ("kvsse hub", a child process, measured through its
// pid), then against cfg.server, and prints the two side by side. The hub
// is stopped before the second run, so that it takes no CPU from it.
func benchBaseline(ctx context.Context, cfg *benchConfig, stdout, stderr io.Writer) error {
	h, err := startBenchHub(ctx, cfg.baselineExe, stderr)
	if err != nil {
		return err
	}
	defer h.stop()
	hcfg := *cfg
	hcfg.server, hcfg.pid = h.url, h.pid
	base, err := benchOnce(ctx, &hcfg)
	h.stop()
	if err != nil {
		return fmt.Errorf("baseline hub at %s: %w", h.url, err)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("bench: interrupted: %w", ctx.Err())
	}
	ours, err := benchOnce(ctx, cfg)
	if err != nil {
		return err
	}
	if err := printBaseline(stdout, base, ours, cfg.json); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return fmt.Errorf("bench: interrupted: %w", ctx.Err())
	}
	var failed []string
	if len(base.Failures) > 0 {
		failed = append(failed, "baseline: "+strings.Join(base.Failures, "; "))
	}
	if len(ours.Failures) > 0 {
		failed = append(failed, "kvsse: "+strings.Join(ours.Failures, "; "))
	}
	if len(failed) > 0 {
		return fmt.Errorf("bench: %s", strings.Join(failed, "; "))
	}
	return nil
}

// benchHub is a "kvsse hub" child process.
type benchHub struct {
	url    string
	pid    int
	cmd    *exec.Cmd
	cancel context.CancelFunc
	once   sync.Once
}

// startBenchHub starts exe (this executable when empty) as "hub -addr
// 127.0.0.1:0" and reads the address it prints. The caller must call stop.
func startBenchHub(ctx context.Context, exe string, stderr io.Writer) (*benchHub, error) {
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("bench: -baseline: %w", err)
		}
	}
	hctx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(hctx, exe, "hub", "-addr", "127.0.0.1:0")
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second // then SIGKILL
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		cancel()
		return nil, fmt.Errorf("bench: -baseline: %w", err)
	}
	h := &benchHub{pid: cmd.Process.Pid, cmd: cmd, cancel: cancel}
	first := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		first <- line
	}()
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	var line string
	select {
	case line = <-first:
	case <-timer.C:
		h.stop() // closes out: the reader returns
		line = <-first
	}
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), sse.Banner)
	if !ok {
		h.stop()
		return nil, fmt.Errorf("bench: -baseline: %s hub printed no address (%q)", exe, line)
	}
	h.url = addr
	return h, nil
}

// stop ends the hub with SIGTERM (SIGKILL 5 s later) and reaps it. It is
// idempotent.
func (h *benchHub) stop() {
	h.once.Do(func() {
		h.cancel()
		h.cmd.Wait() // the error is the cancellation's
	})
}

// benchRatio is ours / base, or "-" when there is no ratio.
func benchRatio(base, ours float64) string {
	if base <= 0 || ours < 0 {
		return "-"
	}
	return strconv.FormatFloat(ours/base, 'f', 2, 64)
}

// printBaseline writes the figures of the baseline run and of the kvsse
// run as one table, a row a figure, with the ratio kvsse / baseline; then,
// with asJSON, both and the ratios as one JSON object on the last line.
func printBaseline(w io.Writer, base, ours *benchResult, asJSON bool) error {
	var b bytes.Buffer
	ratios := map[string]float64{}
	row := func(name, bv, ov, ratio string) {
		fmt.Fprintf(&b, "%-26s %14s %14s %7s\n", name, bv, ov, ratio)
	}
	// num is a row with a ratio, named in the JSON by field.
	num := func(name, field, unit string, prec int, bv, ov float64) {
		f := func(v float64) string {
			return strings.TrimSpace(strconv.FormatFloat(v, 'f', prec, 64) + " " + unit)
		}
		row(name, f(bv), f(ov), benchRatio(bv, ov))
		if bv > 0 {
			ratios[field] = ov / bv
		}
	}
	count := func(name string, bv, ov int64) {
		row(name, strconv.FormatInt(bv, 10), strconv.FormatInt(ov, 10), "")
	}
	pattern := ""
	if base.Subscribers > 0 {
		pattern = fmt.Sprintf(" (%s, %s)", base.Format, base.Pattern)
	}
	fmt.Fprintf(&b, "%d writers, %d subscribers%s; baseline: a plain Go SSE hub (kvsse hub); ratio: kvsse / baseline\n\n", base.Writers, base.Subscribers, pattern)
	row("", "baseline", "kvsse", "ratio")
	count("writes", base.Writes, ours.Writes)
	num("writes/s", "writes_per_sec", "", 1, base.WritesPerSec, ours.WritesPerSec)
	num("put latency p50", "put_p50_ms", "ms", 3, base.PutP50, ours.PutP50)
	num("put latency p99", "put_p99_ms", "ms", 3, base.PutP99, ours.PutP99)
	if base.Subscribers > 0 {
		count("events delivered", base.Events, ours.Events)
		num("events/s", "events_per_sec", "", 1, base.EventsPerSec, ours.EventsPerSec)
		num("latency p50", "latency_p50_ms", "ms", 3, base.LatencyP50, ours.LatencyP50)
		num("latency p99", "latency_p99_ms", "ms", 3, base.LatencyP99, ours.LatencyP99)
		count("reconnects", base.Reconnects, ours.Reconnects)
	}
	if bs, ks := base.Server, ours.Server; bs != nil && ks != nil {
		num("server cpu", "cpu_seconds", "s", 2, bs.CPUSeconds, ks.CPUSeconds)
		if base.Subscribers > 0 {
			num("server cpu per event", "cpu_us_per_event", "µs", 2, bs.CPUPerEventMicros, ks.CPUPerEventMicros)
		}
		num("server cpu per write", "cpu_us_per_write", "µs", 1, bs.CPUPerWriteMicros, ks.CPUPerWriteMicros)
		if base.Subscribers > 0 {
			num("server rss per subscriber", "rss_per_subscriber_kib", "KiB", 1, bs.RSSPerSubscriberKiB, ks.RSSPerSubscriberKiB)
		}
		num("server rss after", "rss_after_kib", "KiB", 0, float64(bs.RSSAfterKiB), float64(ks.RSSAfterKiB))
	}
	checks := func(r *benchResult) string {
		if len(r.Failures) > 0 {
			return "FAILED"
		}
		return "ok"
	}
	row("checks", checks(base), checks(ours), "")
	return benchWriteReport(w, &b, asJSON, struct {
		Baseline *benchResult       `json:"baseline"`
		Kvsse    *benchResult       `json:"kvsse"`
		Ratios   map[string]float64 `json:"ratios"`
	}{base, ours, ratios})
}

// RunHub runs "kvsse hub", the baseline that "bench -baseline" starts: a
// plain Go SSE hub (package hub) serving the routes the bench uses, or,
// with -bare, the bare GET/PUT handler that wrk compares against. It
// prints "kvsse listening on http://ADDR" as the server does, and serves
// until ctx ends.
func RunHub(ctx context.Context, args []string, addr string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("kvsse hub", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&addr, "addr", addr, "address to listen on")
	bare := fs.Bool("bare", false, "serve the bare GET/PUT handler (64 fixed bytes; PUT reads the body) instead of the hub")
	logPath := fs.String("log", "", "with -bare: append each PUT's body to this file and answer once it is synced,\nwith the bodies that arrive during one sync sharing the next (group commit)")
	fs.Usage = func() {}
	usage := func() {
		fs.SetOutput(stdout)
		fmt.Fprint(stdout, "Usage: kvsse hub [-addr ADDR] [-bare [-log FILE]]\n\nServes the baselines of \"kvsse bench -baseline\" and of wrk: nothing is kept,\nbut for the bodies of -bare -log.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage()
			return err
		}
		return &UsageError{msg: "hub: " + err.Error()}
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("hub: unexpected arguments %q", fs.Args())
	}
	if *logPath != "" && !*bare {
		return fmt.Errorf("hub: -log needs -bare")
	}
	if err := benchRaiseNoFile(); err != nil {
		fmt.Fprintf(stderr, "kvsse: hub: cannot raise the open file limit: %v\n", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("hub: listen: %w", err)
	}
	h := hub.New()
	handler := h.Handler()
	switch {
	case *logPath != "":
		f, err := os.OpenFile(*logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			ln.Close()
			return fmt.Errorf("hub: -log: %w", err)
		}
		defer f.Close()
		synced := hub.NewSynced(f)
		defer synced.Close() // after Shutdown: no PUT is waiting then
		handler = synced.Handler()
	case *bare:
		handler = hub.Bare()
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	sse.Announce(stdout, "http://"+ln.Addr().String())
	return sse.Serve(ctx, srv, ln, 5*time.Second, h.Close) // Close ends the streams, which Shutdown would wait for
}
