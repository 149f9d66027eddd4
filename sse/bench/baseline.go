package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"kvsse/sse"
	"kvsse/sse/bench/hub"
)

// runBaseline runs "kvsse bench -baseline": the load of cfg against a
// plain Go SSE hub ("kvsse hub", a child process, measured through its
// pid), then against cfg.server, and prints the two side by side. The hub
// is stopped before the second run, so that it takes no CPU from it.
func runBaseline(ctx context.Context, cfg *config, stdout, stderr io.Writer) error {
	h, err := startHub(ctx, cfg.baselineExe, stderr)
	if err != nil {
		return err
	}
	defer h.stop()
	hcfg := *cfg
	hcfg.server, hcfg.pid = h.url, h.pid
	base, err := runOnce(ctx, &hcfg)
	h.stop()
	if err != nil {
		return fmt.Errorf("baseline hub at %s: %w", h.url, err)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("bench: interrupted: %w", ctx.Err())
	}
	ours, err := runOnce(ctx, cfg)
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

// hubProc is a "kvsse hub" child process.
type hubProc struct {
	url    string
	pid    int
	cmd    *exec.Cmd
	cancel context.CancelFunc
	once   sync.Once
}

// startHub starts exe (this executable when empty) as "hub -addr
// 127.0.0.1:0" and reads the address it prints. The caller must call stop.
func startHub(ctx context.Context, exe string, stderr io.Writer) (*hubProc, error) {
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
	h := &hubProc{pid: cmd.Process.Pid, cmd: cmd, cancel: cancel}
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
func (h *hubProc) stop() {
	h.once.Do(func() {
		h.cancel()
		h.cmd.Wait() // the error is the cancellation's
	})
}

// ratio is ours / base, or "-" when there is no ratio.
func ratio(base, ours float64) string {
	if base <= 0 || ours < 0 {
		return "-"
	}
	return strconv.FormatFloat(ours/base, 'f', 2, 64)
}

// printBaseline writes the figures of the baseline run and of the kvsse
// run as one table, a row a figure, with the ratio kvsse / baseline; then,
// with asJSON, both and the ratios as one JSON object on the last line.
func printBaseline(w io.Writer, base, ours *result, asJSON bool) error {
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
		row(name, f(bv), f(ov), ratio(bv, ov))
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
	checks := func(r *result) string {
		if len(r.Failures) > 0 {
			return "FAILED"
		}
		return "ok"
	}
	row("checks", checks(base), checks(ours), "")
	return writeReport(w, &b, asJSON, struct {
		Baseline *result            `json:"baseline"`
		Kvsse    *result            `json:"kvsse"`
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
	if err := raiseNoFile(); err != nil {
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
