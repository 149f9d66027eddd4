// Package bench is "kvsse bench", a load generator that checks what it
// measures, and "kvsse hub", the baselines it compares against. It speaks
// only HTTP to the servers it drives.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

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
// (runBaseline), and both sets of figures are printed side by side.
func Run(ctx context.Context, args []string, server string, stdout, stderr io.Writer) error {
	cfg, err := parseBench(args, strings.TrimSuffix(server, "/"), stdout)
	if err != nil {
		return err
	}
	if err := raiseNoFile(); err != nil {
		fmt.Fprintf(stderr, "kvsse: bench: cannot raise the open file limit: %v\n", err)
	}
	if cfg.baseline {
		return runBaseline(ctx, cfg, stdout, stderr)
	}
	res, err := runOnce(ctx, cfg)
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

// runOnce runs the load of cfg once.
func runOnce(ctx context.Context, cfg *config) (*result, error) {
	b, err := newLoad(cfg)
	if err != nil {
		return nil, err
	}
	return b.run(ctx)
}

// raiseNoFile raises the soft limit on open files to the hard limit, so
// that thousands of streams can be opened.
func raiseNoFile() error {
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

// load is one run of Run. Its fields are set before the writers and
// subscribers start and only read afterwards, except tickets.
type load struct {
	cfg      *config
	keys     []string // the keys written, by number
	keyPaths []string // their paths on a server
	writeHTTP,
	watchHTTP *http.Client
	gate chan struct{} // bounds the streams being opened at once

	start   time.Time    // the first write's scheduled time
	end     time.Time    // no write is sent at or after it; zero with -writes
	tickets atomic.Int64 // writes handed out to the writers
}

func newLoad(cfg *config) (*load, error) {
	b := &load{cfg: cfg, gate: make(chan struct{}, 256)}
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
func (b *load) run(ctx context.Context) (*result, error) {
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
	var srv serverFigures
	if cfg.pid > 0 {
		if srv.RSSBeforeKiB, err = procRSS(cfg.pid); err != nil {
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
		if srv.RSSConnectedKiB, err = procRSS(cfg.pid); err != nil {
			return nil, err
		}
		if cpu0, err = procCPU(cfg.pid); err != nil {
			return nil, err
		}
	}

	b.start = time.Now()
	if cfg.writes == 0 {
		b.end = b.start.Add(cfg.duration)
	}
	writers := make([]writer, cfg.writers)
	var wwg sync.WaitGroup
	for i := range writers {
		writers[i].server = cfg.serverFor(i)
		wwg.Go(func() { b.write(ctx, &writers[i]) })
	}
	wwg.Wait()

	acked := collectAcks(writers, len(b.keys))
	timedOut := b.awaitDelivery(ctx, subs, acked)
	if cfg.pid > 0 {
		cpu1, err := procCPU(cfg.pid)
		if err != nil {
			return nil, err
		}
		if srv.RSSAfterKiB, err = procRSS(cfg.pid); err != nil {
			return nil, err
		}
		srv.CPUSeconds = (cpu1 - cpu0).Seconds()
	}
	stopSubs()
	subWG.Wait()

	res := b.figures(writers, subs, acked)
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
func (b *load) healthy(ctx context.Context) error {
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
