// Package servertest runs kvsse servers for tests and talks to them, as
// net/http/httptest does for handlers: a server in the test's process
// (Start) or the built binary as a child process (StartProc), the HTTP
// API (Call, Send, Put, List...), event streams read in the background
// (Open, Stream), concurrent writers (Writers), and etcd clusters of
// child processes to run servers on (StartEtcd, ForEachBackend; the
// clusters themselves are kv/etcd/etcdtest's).
//
// It imports the server, never the command line or the load tool, so
// that their tests may use it. A package whose tests call Binary or
// SharedEtcd (ForEachBackend does) calls Main from its TestMain.
package servertest

import (
	"bufio"
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"kvsse/kv/etcd/etcdtest"
	"kvsse/sse"
	"kvsse/sse/server"
)

// Server is a kvsse server running in this process (server.Serve in a
// goroutine).
type Server struct {
	URL        string        // http://127.0.0.1:PORT, https:// with -tls-cert
	MetricsURL string        // http://HOST:PORT of -metrics-addr, "" without it
	Dir        string        // the data directory (-data), unused with -memory
	Log        *LockedBuffer // what the server logged so far
	cancel     context.CancelFunc
	done       <-chan error
}

// Start runs a server on 127.0.0.1:0 with a fresh data directory and
// -log-level warn, then args, whose flags win (-data DIR gives it DIR),
// and waits until it serves. It fails the test if the flags are wrong or
// the server does not start. The server stops when the test ends (see
// Stop), and its log is shown if the test failed.
func Start(t testing.TB, args ...string) *Server {
	t.Helper()
	full := append([]string{"-addr", "127.0.0.1:0", "-data", t.TempDir(), "-log-level", "warn"}, args...)
	logs := new(LockedBuffer)
	cfg, err := parseFlags(full, logs)
	if err != nil {
		t.Fatalf("server flags %q: %v", args, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { ShowLog(t, "server log", logs) }) // runs after Stop
	url, out, done, err := runInProcess(func(stdout io.Writer) error {
		return server.Serve(ctx, cfg, stdout, logs)
	})
	s := &Server{Dir: cfg.Data, URL: url, Log: logs, cancel: cancel, done: done}
	if err == nil && cfg.MetricsAddr != "" {
		s.MetricsURL, err = readMetricsLine(out)
	}
	go io.Copy(io.Discard, out)
	if err != nil {
		cancel()
		t.Fatalf("server did not start: %v", err)
	}
	WaitReady(t, s.URL)
	t.Cleanup(func() { s.Stop(t) })
	return s
}

// Stop shuts the server down gracefully and fails the test (Errorf)
// unless server.Serve returns nil within 30 s. It is idempotent.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if s.cancel == nil {
		return
	}
	s.cancel()
	s.cancel = nil
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("server.Serve returned %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("server did not stop")
	}
}

// Serve parses args as the server's flags (server.Config.RegisterFlags)
// and runs server.Serve with them until ctx ends; a flag error, printed
// to stderr, is returned as is. It is what the program does for "kvsse
// serve", without the environment twins of the flags.
func Serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	return server.Serve(ctx, cfg, stdout, stderr)
}

// parseFlags parses args as the server's flags.
func parseFlags(args []string, stderr io.Writer) (*server.Config, error) {
	var cfg server.Config
	fs := flag.NewFlagSet("kvsse", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("arguments after the flags: %q", fs.Args())
	}
	return &cfg, nil
}

// RunInProcess runs run in a goroutine with the write end of a pipe as
// its standard output, reads the banner line a server prints there
// (sse.ReadBanner) and returns its URL and a channel that gets run's
// result. What run prints after the banner is discarded. If run ends or
// prints something else first, err says so; done still gets its result.
func RunInProcess(run func(stdout io.Writer) error) (url string, done <-chan error, err error) {
	url, out, done, err := runInProcess(run)
	go io.Copy(io.Discard, out)
	return url, done, err
}

// runInProcess is RunInProcess leaving what run prints after the banner
// in out, which the caller must read to its end so that run's writes do
// not block.
func runInProcess(run func(stdout io.Writer) error) (url string, out *bufio.Reader, done <-chan error, err error) {
	pr, pw := io.Pipe()
	c := make(chan error, 1)
	go func() {
		err := run(pw)
		pw.CloseWithError(fmt.Errorf("ended: %v", err))
		c <- err
	}()
	out = bufio.NewReader(pr)
	url, err = sse.ReadBanner(out) // reads from out itself: the next line stays there
	return url, out, c, err
}

// readMetricsLine reads the line a server with -metrics-addr prints right
// after its banner and returns the URL it names.
func readMetricsLine(out *bufio.Reader) (string, error) {
	const prefix = "kvsse metrics and pprof on "
	line, err := out.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("no metrics address: %w", err)
	}
	url, ok := strings.CutPrefix(strings.TrimSpace(line), prefix)
	if !ok {
		return "", fmt.Errorf("line %q after the banner, want %s...", line, prefix)
	}
	return url, nil
}

// WaitReady polls url's /healthz until it answers 200, for up to 20 s,
// then fails the test. It does not check the certificate of an https
// URL.
func WaitReady(t testing.TB, url string) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := client.Get(url + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("server at %s not ready: %v", url, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// LockedBuffer is a bytes.Buffer safe for concurrent writers and readers,
// for a server's or a child's output. Its zero value is empty and ready.
type LockedBuffer = etcdtest.LockedBuffer

// ShowLog logs the end of a server's or child's log, named name, if the
// test failed.
func ShowLog(t testing.TB, name string, l *LockedBuffer) {
	t.Helper()
	s := l.String()
	if !t.Failed() || s == "" {
		return
	}
	if len(s) > 8000 {
		s = "..." + s[len(s)-8000:]
	}
	t.Logf("%s:\n%s", name, s)
}

// RequireTool returns the path of the program name, or skips the test
// when it is not on PATH, saying which Debian package pkg has it; with
// the environment variable env set to 1 (as CI does) it fails the test
// instead.
func RequireTool(t testing.TB, name, pkg, env string) string {
	t.Helper()
	return etcdtest.RequireTool(t, name, pkg, env)
}
