package cli_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"kvsse/sse"
	"kvsse/sse/server"
	"kvsse/sse/server/servertest"
)

// The tests in this file run the built kvsse binary as a command-line
// client (and, where a process must die, as a server), against servers
// started with servertest.Start or cliStartBin.

// TestMain removes the kvsse binary the tests built.
func TestMain(m *testing.M) { servertest.Main(m) }

// cliTimeout bounds every wait of these tests: one command, one line of
// a watch, one poll. It only bounds failures: it is generous because the
// tests may share a loaded machine.
const cliTimeout = 60 * time.Second

// cliEnv is the environment of the processes the tests start: this
// process's, without any KVSSE_ variable, plus extra ("NAME=value").
func cliEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KVSSE_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// cliResult is what one run of the binary left.
type cliResult struct {
	stdout []byte
	stderr string
	code   int
}

// cliRun runs the binary with args, the environment cliEnv(env...) and
// stdin (nil: empty), and waits for it to exit.
func cliRun(t testing.TB, env []string, stdin []byte, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, servertest.Binary(t), args...)
	cmd.Env = cliEnv(env...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("kvsse %q did not exit within %v; stderr:\n%s", args, cliTimeout, stderr.String())
	}
	var ee *exec.ExitError
	code := 0
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("kvsse %q: %v", args, err)
	}
	return cliResult{stdout: stdout.Bytes(), stderr: stderr.String(), code: code}
}

// cliOK runs the binary like cliRun and fails the test unless it exits 0.
func cliOK(t testing.TB, env []string, stdin []byte, args ...string) []byte {
	t.Helper()
	r := cliRun(t, env, stdin, args...)
	if r.code != 0 {
		t.Fatalf("kvsse %q: exit %d, want 0; stderr:\n%s", args, r.code, r.stderr)
	}
	return r.stdout
}

// cliKeyURL is the URL of key on the server at base.
func cliKeyURL(base, key string) string {
	segs := strings.Split(key, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return base + "/kv/" + strings.Join(segs, "/")
}

var cliHTTP = &http.Client{Timeout: cliTimeout}

// cliDo sends one request and returns its status, revision header and body.
func cliDo(t testing.TB, method, u string, body []byte) (int, int64, []byte) {
	t.Helper()
	resp, b, err := servertest.Do(context.Background(), cliHTTP, method, u, string(body))
	if err != nil {
		t.Fatal(err)
	}
	var rev int64
	if h := resp.Header.Get("Kvsse-Revision"); h != "" {
		if rev, err = strconv.ParseInt(h, 10, 64); err != nil {
			t.Fatalf("%s %s: Kvsse-Revision %q: %v", method, u, h, err)
		}
	}
	return resp.StatusCode, rev, b
}

// cliPut sets key through the HTTP API and returns the new revision.
func cliPut(t testing.TB, base, key string, value []byte) int64 {
	t.Helper()
	status, rev, body := cliDo(t, http.MethodPut, cliKeyURL(base, key), value)
	if status != http.StatusOK && status != http.StatusCreated {
		t.Fatalf("PUT %s: %d %s", key, status, body)
	}
	return rev
}

// cliDelete deletes key through the HTTP API and returns the new revision.
func cliDelete(t testing.TB, base, key string) int64 {
	t.Helper()
	status, rev, body := cliDo(t, http.MethodDelete, cliKeyURL(base, key), nil)
	if status != http.StatusNoContent {
		t.Fatalf("DELETE %s: %d %s", key, status, body)
	}
	return rev
}

// cliServerError is the "error" text of the server's JSON answer to a
// request that fails with status want.
func cliServerError(t testing.TB, method, u string, body []byte, want int) string {
	t.Helper()
	status, _, b := cliDo(t, method, u, body)
	if status != want {
		t.Fatalf("%s %s: status %d, want %d; body %s", method, u, status, want, b)
	}
	var e struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal(b, &e); err != nil || e.Error == "" {
		t.Fatalf("%s %s: no JSON error in %q (%v)", method, u, b, err)
	}
	return e.Error
}

// cliRevisionLine parses put's output: the new revision and a newline.
func cliRevisionLine(t testing.TB, out []byte) int64 {
	t.Helper()
	s, ok := strings.CutSuffix(string(out), "\n")
	rev, err := strconv.ParseInt(s, 10, 64)
	if !ok || err != nil || rev <= 0 {
		t.Fatalf("put printed %q, want a revision and a newline", out)
	}
	return rev
}

// cliStartBin runs the binary as a server with args (which must include
// -addr and -data or -memory, or their env twins in env) and waits until
// it serves. The process is killed when the test ends.
func cliStartBin(t testing.TB, env []string, args ...string) *servertest.Proc {
	t.Helper()
	cmd := exec.Command(servertest.Binary(t), append([]string{"-log-level", "warn"}, args...)...)
	cmd.Env = cliEnv(env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := new(servertest.LockedBuffer)
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &servertest.Proc{Cmd: cmd}
	t.Cleanup(p.Kill)
	url, err := sse.ReadBanner(stdout)
	if err != nil {
		p.Kill()
		t.Fatalf("server %q did not start: %v; stderr:\n%s", args, err, stderr)
	}
	go io.Copy(io.Discard, stdout)
	p.URL = url
	servertest.WaitReady(t, p.URL)
	return p
}

// cliWatch is a running "kvsse watch".
type cliWatch struct {
	cmd    *exec.Cmd
	lines  chan string   // every line of stdout; closed at its end
	exited chan struct{} // closed when the process has exited and was reaped
	err    error         // cmd.Wait's, once exited is closed
	stderr *servertest.LockedBuffer
}

// cliStartWatch starts the binary with args (a watch command) and reads
// its output lines. The process is killed when the test ends, if it
// still runs.
func cliStartWatch(t testing.TB, env []string, args ...string) *cliWatch {
	t.Helper()
	cmd := exec.Command(servertest.Binary(t), args...)
	cmd.Env = cliEnv(env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	w := &cliWatch{cmd: cmd, lines: make(chan string, 1<<12), exited: make(chan struct{}), stderr: new(servertest.LockedBuffer)}
	cmd.Stderr = w.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 4<<20)
		for sc.Scan() {
			w.lines <- sc.Text()
		}
		close(w.lines)
		w.err = cmd.Wait()
		close(w.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-w.exited:
		default:
			cmd.Process.Kill()
			<-w.exited
		}
	})
	return w
}

// next returns the next line the watch printed.
func (w *cliWatch) next(t testing.TB) string {
	t.Helper()
	select {
	case line, ok := <-w.lines:
		if !ok {
			<-w.exited
			t.Fatalf("watch ended (%v) while a line was expected; stderr:\n%s", w.err, w.stderr)
		}
		return line
	case <-time.After(cliTimeout):
		t.Fatalf("no line from watch within %v; stderr:\n%s", cliTimeout, w.stderr)
	}
	panic("unreachable")
}

// interrupt sends SIGINT, checks that the watch exits 0, and returns the
// lines it printed that were not read yet.
func (w *cliWatch) interrupt(t testing.TB) []string {
	t.Helper()
	if err := w.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.exited:
	case <-time.After(cliTimeout):
		t.Fatalf("watch did not end within %v of SIGINT; stderr:\n%s", cliTimeout, w.stderr)
	}
	if w.err != nil {
		t.Errorf("watch ended with %v after SIGINT, want exit status 0; stderr:\n%s", w.err, w.stderr)
	}
	var rest []string
	for line := range w.lines {
		rest = append(rest, line)
	}
	return rest
}

// cliEvent is one NDJSON object that "watch -json" prints.
type cliEvent struct {
	Event        string  `json:"event"`
	Key          string  `json:"key,omitempty"`
	Value        *string `json:"value,omitempty"`
	Encoding     string  `json:"encoding,omitempty"`
	Revision     int64   `json:"revision"`
	PrevRevision int64   `json:"prev_revision,omitempty"`
	PrevValue    *string `json:"prev_value,omitempty"`
	Reason       string  `json:"reason,omitempty"`
}

func cliParseEvent(t testing.TB, line string) cliEvent {
	t.Helper()
	var ev cliEvent
	if err := json.Unmarshal([]byte(line), &ev); err != nil {
		t.Fatalf("watch -json printed %q: %v", line, err)
	}
	return ev
}

// nextEvent returns the next object of a "watch -json", skipping
// heartbeats.
func (w *cliWatch) nextEvent(t testing.TB) cliEvent {
	t.Helper()
	for {
		if ev := cliParseEvent(t, w.next(t)); ev.Event != "heartbeat" {
			return ev
		}
	}
}

// expectEvents reads as many objects (heartbeats aside) as want holds,
// and checks they are want.
func (w *cliWatch) expectEvents(t testing.TB, what string, want []cliEvent) {
	t.Helper()
	var got []cliEvent
	for range want {
		got = append(got, w.nextEvent(t))
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("%s (-want +got):\n%s", what, diff)
	}
}

func cliStr(s string) *string { return &s }

// cliLines splits output into lines, each ended by a newline.
func cliLines(t testing.TB, out []byte) []string {
	t.Helper()
	if len(out) == 0 {
		return nil
	}
	s, ok := strings.CutSuffix(string(out), "\n")
	if !ok {
		t.Errorf("output %q does not end with a newline", out)
	}
	return strings.Split(s, "\n")
}

func TestCLIPutGet(t *testing.T) {
	t.Parallel()
	ts := servertest.Start(t)
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(i*7 + i>>8)
	}
	tests := []struct {
		name  string
		key   string
		arg   *string // the VALUE argument; nil: stdin
		stdin []byte
		want  []byte
	}{
		{name: "argument", key: "put/arg", arg: cliStr("hello world"), want: []byte("hello world")},
		{name: "argument with newline", key: "put/argnl", arg: cliStr("two\nlines\n"), want: []byte("two\nlines\n")},
		{name: "empty argument", key: "put/argempty", arg: cliStr(""), want: []byte{}},
		{name: "stdin text without trailing newline", key: "put/text", stdin: []byte("no newline at the end"), want: []byte("no newline at the end")},
		{name: "stdin every byte value", key: "put/bytes", stdin: all, want: all},
		{name: "stdin NUL and CR LF", key: "put/crlf", stdin: []byte("a\x00b\r\nc\r\n\x00"), want: []byte("a\x00b\r\nc\r\n\x00")},
		{name: "stdin invalid UTF-8", key: "put/latin1", stdin: []byte("caf\xe9\xff\xfe"), want: []byte("caf\xe9\xff\xfe")},
		{name: "stdin empty", key: "put/empty", stdin: nil, want: []byte{}},
		{name: "stdin 1 MiB", key: "put/big", stdin: big, want: big},
		{name: "key needing escapes", key: "put/a b/q?x#y%z/é+&=", arg: cliStr("escaped"), want: []byte("escaped")},
	}
	var last int64
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"-server", ts.URL, "put", tt.key}
			if tt.arg != nil {
				args = append(args, *tt.arg)
			}
			rev := cliRevisionLine(t, cliOK(t, nil, tt.stdin, args...))
			if rev <= last {
				t.Errorf("put printed revision %d, not above the previous put's %d", rev, last)
			}
			last = rev

			got := cliOK(t, nil, nil, "-server", ts.URL, "get", tt.key)
			if !bytes.Equal(got, tt.want) {
				t.Errorf("get printed %d bytes %q, want %d bytes %q", len(got), cut(got), len(tt.want), cut(tt.want))
			}

			status, _, body := cliDo(t, http.MethodGet, cliKeyURL(ts.URL, tt.key), nil)
			if status != http.StatusOK || !bytes.Equal(body, tt.want) {
				t.Errorf("HTTP GET %s: %d, %d bytes %q; want 200, %d bytes %q", tt.key, status, len(body), cut(body), len(tt.want), cut(tt.want))
			}
		})
	}
}

// cut shortens b for a message.
func cut(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}

func TestCLIMissingAndDelete(t *testing.T) {
	t.Parallel()
	ts := servertest.Start(t)
	notFound := cliServerError(t, http.MethodGet, cliKeyURL(ts.URL, "del/missing"), nil, http.StatusNotFound)

	t.Run("get missing", func(t *testing.T) {
		r := cliRun(t, nil, nil, "-server", ts.URL, "get", "del/missing")
		if r.code != 1 || !strings.Contains(r.stderr, notFound) || len(r.stdout) != 0 {
			t.Errorf("get of a missing key: exit %d, stdout %q, stderr %q; want exit 1, no output, stderr with %q", r.code, r.stdout, r.stderr, notFound)
		}
	})
	t.Run("del missing", func(t *testing.T) {
		notFound := cliServerError(t, http.MethodDelete, cliKeyURL(ts.URL, "del/missing"), nil, http.StatusNotFound)
		r := cliRun(t, nil, nil, "-server", ts.URL, "del", "del/missing")
		if r.code != 1 || !strings.Contains(r.stderr, notFound) {
			t.Errorf("del of a missing key: exit %d, stderr %q; want exit 1, stderr with %q", r.code, r.stderr, notFound)
		}
	})
	t.Run("del existing", func(t *testing.T) {
		cliPut(t, ts.URL, "del/k", []byte("v"))
		if out := cliOK(t, nil, nil, "-server", ts.URL, "del", "del/k"); len(out) != 0 {
			t.Errorf("del printed %q, want nothing", out)
		}
		if status, _, _ := cliDo(t, http.MethodGet, cliKeyURL(ts.URL, "del/k"), nil); status != http.StatusNotFound {
			t.Errorf("HTTP GET after del: %d, want 404", status)
		}
		if r := cliRun(t, nil, nil, "-server", ts.URL, "get", "del/k"); r.code != 1 {
			t.Errorf("get after del: exit %d, want 1; stderr %q", r.code, r.stderr)
		}
		if r := cliRun(t, nil, nil, "-server", ts.URL, "del", "del/k"); r.code != 1 {
			t.Errorf("second del: exit %d, want 1; stderr %q", r.code, r.stderr)
		}
	})
	t.Run("invalid key", func(t *testing.T) {
		text := cliServerError(t, http.MethodGet, ts.URL+"/kv/del/a/../b", nil, http.StatusBadRequest)
		r := cliRun(t, nil, nil, "-server", ts.URL, "get", "del/a/../b")
		if r.code != 2 || !strings.Contains(r.stderr, text) {
			t.Errorf("get of an invalid key: exit %d, stderr %q; want exit 2, stderr with %q", r.code, r.stderr, text)
		}
	})
	t.Run("server unreachable", func(t *testing.T) {
		r := cliRun(t, nil, nil, "-server", "http://"+servertest.FreeAddr(t), "get", "del/k")
		if r.code != 2 || r.stderr == "" {
			t.Errorf("get from a server that is not there: exit %d, stderr %q; want exit 2 and an error", r.code, r.stderr)
		}
	})
}

func TestCLILs(t *testing.T) {
	t.Parallel()
	ts := servertest.Start(t, "-sync", "none")
	keys := []string{"ls/B", "ls/b", "ls/é", "ls/a-", "ls/a0", "lsx", "other", "ls/sp ace"}
	for i := range 1100 {
		keys = append(keys, fmt.Sprintf("ls/a/%04d", i))
	}
	work := make(chan string)
	errc := make(chan error, len(keys))
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range work {
				req, _ := http.NewRequest(http.MethodPut, cliKeyURL(ts.URL, k), strings.NewReader("v"))
				resp, err := cliHTTP.Do(req)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusCreated {
						err = fmt.Errorf("PUT %s: %s", k, resp.Status)
					}
				}
				if err != nil {
					errc <- err
				}
			}
		}()
	}
	for _, k := range keys {
		work <- k
	}
	close(work)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	sort.Strings(keys) // byte order

	withPrefix := func(p string) []string {
		var out []string
		for _, k := range keys {
			if strings.HasPrefix(k, p) {
				out = append(out, k)
			}
		}
		return out
	}
	tests := []struct {
		name   string
		prefix *string
		want   []string
	}{
		{name: "all", want: keys},
		{name: "empty prefix", prefix: cliStr(""), want: keys},
		{name: "prefix over pages", prefix: cliStr("ls/a/"), want: withPrefix("ls/a/")},
		{name: "prefix not at a slash", prefix: cliStr("ls/a"), want: withPrefix("ls/a")},
		{name: "prefix of 100", prefix: cliStr("ls/a/10"), want: withPrefix("ls/a/10")},
		{name: "prefix is a whole key", prefix: cliStr("ls/b"), want: []string{"ls/b"}},
		{name: "multibyte prefix", prefix: cliStr("ls/é"), want: []string{"ls/é"}},
		{name: "prefix without slash", prefix: cliStr("ls"), want: withPrefix("ls")},
		{name: "no match", prefix: cliStr("nothing"), want: nil},
	}
	if n := len(withPrefix("ls/a/")); n != 1100 {
		t.Fatalf("test setup: %d keys under ls/a/", n)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"-server", ts.URL, "ls"}
			if tt.prefix != nil {
				args = append(args, *tt.prefix)
			}
			got := cliLines(t, cliOK(t, nil, nil, args...))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ls %q (-want +got):\n%s", args[3:], diff)
			}
		})
	}
}

func TestCLITTL(t *testing.T) {
	t.Parallel()
	ts := servertest.Start(t)
	tests := []struct {
		name string
		key  string
		args []string
	}{
		{name: "duration before the command", key: "ttl/a", args: []string{"-ttl", "1s", "put", "ttl/a", "v"}},
		{name: "seconds after the key", key: "ttl/b", args: []string{"put", "ttl/b", "-ttl", "1", "v"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			key := tt.key
			start := time.Now()
			cliRevisionLine(t, cliOK(t, nil, nil, append([]string{"-server", ts.URL}, tt.args...)...))
			status, _, body := cliDo(t, http.MethodGet, cliKeyURL(ts.URL, key), nil)
			// On a slow machine the second may be over already.
			if (status != http.StatusOK || string(body) != "v") && (status != http.StatusNotFound || time.Since(start) < time.Second) {
				t.Fatalf("GET %s right after the put: %d %q, want 200 \"v\"", key, status, body)
			}
			deadline := time.Now().Add(cliTimeout)
			for {
				status, _, _ := cliDo(t, http.MethodGet, cliKeyURL(ts.URL, key), nil)
				if status == http.StatusNotFound {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s still there (%d) %v after a put with ttl 1s", key, status, cliTimeout)
				}
				time.Sleep(20 * time.Millisecond) // poll interval
			}
			if r := cliRun(t, nil, nil, "-server", ts.URL, "get", key); r.code != 1 {
				t.Errorf("get of an expired key: exit %d, want 1; stderr %q", r.code, r.stderr)
			}
		})
	}
	t.Run("bad ttl", func(t *testing.T) {
		t.Parallel()
		text := cliServerError(t, http.MethodPut, cliKeyURL(ts.URL, "ttl/bad")+"?ttl=soon", []byte("v"), http.StatusBadRequest)
		r := cliRun(t, nil, nil, "-server", ts.URL, "put", "-ttl", "soon", "ttl/bad", "v")
		if r.code != 2 || !strings.Contains(r.stderr, text) {
			t.Errorf("put -ttl soon: exit %d, stderr %q; want 2 and %q", r.code, r.stderr, text)
		}
	})
}

func TestCLIIfRev(t *testing.T) {
	t.Parallel()
	ts := servertest.Start(t)
	srv := []string{"-server", ts.URL}
	rev1 := cliPut(t, ts.URL, "cas/k", []byte("v1"))

	// A wrong revision fails with the server's precondition error.
	for _, args := range [][]string{
		{"put", "-if-rev", strconv.FormatInt(rev1+100, 10), "cas/k", "bad"},
		{"-if-rev", strconv.FormatInt(rev1+100, 10), "del", "cas/k"},
		{"put", "-if-rev", strconv.FormatInt(rev1, 10), "cas/missing", "bad"},
	} {
		r := cliRun(t, nil, nil, append(srv, args...)...)
		if r.code != 2 || !strings.Contains(strings.ToLower(r.stderr), "precondition") || len(r.stdout) != 0 {
			t.Errorf("kvsse %q: exit %d, stdout %q, stderr %q; want exit 2, no output, stderr mentioning the precondition", args, r.code, r.stdout, r.stderr)
		}
	}
	if got := cliOK(t, nil, nil, append(srv, "get", "cas/k")...); string(got) != "v1" {
		t.Fatalf("after failed compare-and-sets, get = %q, want v1", got)
	}

	// The right revision succeeds.
	rev2 := cliRevisionLine(t, cliOK(t, nil, nil, append(srv, "put", "cas/k", "v2", "-if-rev", strconv.FormatInt(rev1, 10))...))
	if rev2 <= rev1 {
		t.Errorf("compare-and-set printed revision %d, not above %d", rev2, rev1)
	}
	if got := cliOK(t, nil, nil, append(srv, "get", "cas/k")...); string(got) != "v2" {
		t.Errorf("after the compare-and-set, get = %q, want v2", got)
	}
	// The old revision no longer holds.
	if r := cliRun(t, nil, nil, append(srv, "put", "-if-rev", strconv.FormatInt(rev1, 10), "cas/k", "v3")...); r.code != 2 {
		t.Errorf("second compare-and-set with the old revision: exit %d, want 2", r.code)
	}
	cliOK(t, nil, nil, append(srv, "-if-rev", strconv.FormatInt(rev2, 10), "del", "cas/k")...)
	if r := cliRun(t, nil, nil, append(srv, "get", "cas/k")...); r.code != 1 {
		t.Errorf("get after a conditional del: exit %d, want 1", r.code)
	}
}

func TestCLIFlagPlacement(t *testing.T) {
	t.Parallel()
	ts := servertest.Start(t)
	cliPut(t, ts.URL, "f/k", []byte("value"))
	dead := "http://" + servertest.FreeAddr(t)

	t.Run("get", func(t *testing.T) {
		tests := []struct {
			name string
			env  []string
			args []string
		}{
			{name: "flag before the command", args: []string{"-server", ts.URL, "get", "f/k"}},
			{name: "flag after the key", args: []string{"get", "f/k", "-server", ts.URL}},
			{name: "flag between command and key", args: []string{"get", "-server", ts.URL, "f/k"}},
			{name: "flag=value", args: []string{"get", "f/k", "-server=" + ts.URL}},
			{name: "double dash flag", args: []string{"--server", ts.URL, "get", "f/k"}},
			{name: "trailing slash", args: []string{"-server", ts.URL + "/", "get", "f/k"}},
			{name: "KVSSE_URL", env: []string{"KVSSE_URL=" + ts.URL}, args: []string{"get", "f/k"}},
			{name: "-server wins over KVSSE_URL", env: []string{"KVSSE_URL=" + dead}, args: []string{"get", "f/k", "-server", ts.URL}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				if got := cliOK(t, tt.env, nil, tt.args...); string(got) != "value" {
					t.Errorf("kvsse %q printed %q, want %q", tt.args, got, "value")
				}
			})
		}
	})

	t.Run("KVSSE_URL unreachable", func(t *testing.T) {
		r := cliRun(t, []string{"KVSSE_URL=" + dead}, nil, "get", "f/k")
		if r.code != 2 || !strings.Contains(r.stderr, strings.TrimPrefix(dead, "http://")) {
			t.Errorf("get with KVSSE_URL=%s: exit %d, stderr %q; want exit 2 and an error naming the address", dead, r.code, r.stderr)
		}
	})

	t.Run("double dash", func(t *testing.T) {
		tests := []struct {
			name       string
			args       []string
			key, value string
		}{
			{name: "value starting with a dash", args: []string{"-server", ts.URL, "put", "--", "f/dash", "-v"}, key: "f/dash", value: "-v"},
			{name: "value that is a flag", args: []string{"put", "f/flag", "-server", ts.URL, "--", "-ttl"}, key: "f/flag", value: "-ttl"},
			{name: "key and value starting with a dash", args: []string{"put", "-server", ts.URL, "--", "-k", "--"}, key: "-k", value: "--"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				cliRevisionLine(t, cliOK(t, nil, nil, tt.args...))
				if got := cliOK(t, nil, nil, "-server", ts.URL, "get", "--", tt.key); string(got) != tt.value {
					t.Errorf("after kvsse %q, get -- %s printed %q, want %q", tt.args, tt.key, got, tt.value)
				}
			})
		}
	})
}

func TestCLIUsage(t *testing.T) {
	t.Parallel()
	// No server: usage errors must not need one.
	env := []string{"KVSSE_URL=http://" + servertest.FreeAddr(t)}
	tests := []struct {
		name string
		args []string
		want []string // in stderr: the error's line, then the pointer to the help
	}{
		{name: "unknown command", args: []string{"frob", "k"}, want: []string{`unknown command "frob"`, "Run 'kvsse help' for usage."}},
		{name: "get without key", args: []string{"get"}, want: []string{"usage: kvsse get KEY", "Run 'kvsse help get' for usage."}},
		{name: "get with two keys", args: []string{"get", "a", "b"}, want: []string{"usage: kvsse get KEY", "Run 'kvsse help get' for usage."}},
		{name: "put without key", args: []string{"put"}, want: []string{"usage: kvsse put KEY", "Run 'kvsse help put' for usage."}},
		{name: "put with three arguments", args: []string{"put", "k", "v", "w"}, want: []string{"usage: kvsse put KEY [VALUE]", "help put"}},
		{name: "del without key", args: []string{"del"}, want: []string{"usage: kvsse del KEY", "help del"}},
		{name: "ls with two prefixes", args: []string{"ls", "a", "b"}, want: []string{"usage: kvsse ls [PREFIX]", "help ls"}},
		{name: "watch without pattern", args: []string{"watch"}, want: []string{"usage: kvsse watch PATTERN", "help watch"}},
		{name: "unknown flag", args: []string{"-nope", "get", "k"}, want: []string{"-nope", "Run 'kvsse help' for usage."}},
		{name: "unknown flag after the command", args: []string{"get", "-nope", "k"}, want: []string{"-nope", "Run 'kvsse help get' for usage."}},
		{name: "flag without value", args: []string{"get", "k", "-server"}, want: []string{"-server", "help get"}},
		{name: "bad -if-rev", args: []string{"-if-rev", "x", "del", "k"}, want: []string{"-if-rev", "for usage"}},
		{name: "serve with an argument", args: []string{"-memory", "-addr", "127.0.0.1:0", "serve", "extra"}, want: []string{"extra", "help serve"}},
		{name: "bad server flag", args: []string{"-memory", "-sync", "maybe"}, want: []string{"-sync must be always or none", "Run 'kvsse help serve' for usage."}},
		{name: "help of no command", args: []string{"help", "frob"}, want: []string{"frob", "for usage"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := cliRun(t, env, nil, tt.args...)
			if r.code != 2 || len(r.stdout) != 0 {
				t.Errorf("kvsse %q: exit %d, stdout %q; want exit 2, no output; stderr:\n%s", tt.args, r.code, r.stdout, r.stderr)
			}
			// Two lines: the error, and where the help is; never the whole help.
			if lines := strings.Split(strings.TrimRight(r.stderr, "\n"), "\n"); len(lines) != 2 {
				t.Errorf("kvsse %q: stderr has %d lines, want 2 (the error, the pointer to the help):\n%s", tt.args, len(lines), r.stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("kvsse %q: stderr does not say %q:\n%s", tt.args, w, r.stderr)
				}
			}
		})
	}
}

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// TestCLIHelpGolden holds the help texts to the golden files in testdata
// (go test -run TestCLIHelpGolden -update rewrites them): the program's
// (-h, -help and help alike), one command's (help COMMAND and COMMAND -h
// alike), and a bad flag's two lines. Help goes to stdout with exit 0.
func TestCLIHelpGolden(t *testing.T) {
	t.Parallel()
	tests := []struct {
		golden string
		args   [][]string // each must print the same
		code   int
		stderr bool // the golden text is stderr's, not stdout's
	}{
		{golden: "help.golden", args: [][]string{{"-h"}, {"-help"}, {"help"}}},
		{golden: "help-watch.golden", args: [][]string{{"help", "watch"}, {"watch", "-h"}, {"-server", "http://x", "watch", "-help"}}},
		{golden: "help-serve.golden", args: [][]string{{"help", "serve"}, {"serve", "-h"}}},
		{golden: "help-bench.golden", args: [][]string{{"help", "bench"}, {"bench", "-h"}}},
		{golden: "help-restore.golden", args: [][]string{{"help", "restore"}, {"restore", "-h"}}},
		{golden: "help-import.golden", args: [][]string{{"help", "import"}, {"import", "-h"}}},
		{golden: "bad-flag.golden", args: [][]string{{"-nope"}}, code: 2, stderr: true},
	}
	for _, tt := range tests {
		t.Run(tt.golden, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join("testdata", tt.golden)
			for i, args := range tt.args {
				r := cliRun(t, nil, nil, args...)
				got := string(r.stdout)
				other := r.stderr
				if tt.stderr {
					got, other = other, got
				}
				if r.code != tt.code || other != "" {
					t.Errorf("kvsse %q: exit %d, other stream %q; want exit %d and nothing there", args, r.code, other, tt.code)
				}
				if *update && i == 0 {
					if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
						t.Fatal(err)
					}
				}
				want, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(string(want), got); diff != "" {
					t.Errorf("kvsse %q (-%s +got):\n%s", args, path, diff)
				}
			}
		})
	}
}

func TestCLIHelp(t *testing.T) {
	t.Parallel()
	r := cliRun(t, nil, nil, "-h")
	help := string(r.stdout)
	// entry is a flag's entry: from its line to the next flag's.
	entry := func(name string) string {
		start := regexp.MustCompile(`(?m)^  -` + regexp.QuoteMeta(name) + `( |$)`).FindStringIndex(help)
		if start == nil {
			return ""
		}
		e := help[start[0]:]
		if end := regexp.MustCompile(`\n  -[a-z]`).FindStringIndex(e); end != nil {
			e = e[:end[0]]
		}
		return e
	}
	tests := []struct {
		flag, env, def string // def: the default the contract names, if any
	}{
		{"addr", "KVSSE_ADDR", "127.0.0.1:8080"},
		{"data", "KVSSE_DATA", "./kvsse-data"},
		{"memory", "KVSSE_MEMORY", ""},
		{"sync", "KVSSE_SYNC", ""},
		{"max-value", "KVSSE_MAX_VALUE", "1048576"},
		{"history", "KVSSE_HISTORY", ""},
		{"sub-buffer", "KVSSE_SUB_BUFFER", ""},
		{"heartbeat", "KVSSE_HEARTBEAT", "15s"},
		{"compact-bytes", "KVSSE_COMPACT_BYTES", ""},
		{"max-subscribers", "KVSSE_MAX_SUBSCRIBERS", "10000"},
		{"shutdown-timeout", "KVSSE_SHUTDOWN_TIMEOUT", "10s"},
		{"log-format", "KVSSE_LOG_FORMAT", ""},
		{"log-level", "KVSSE_LOG_LEVEL", ""},
		{"server", "KVSSE_URL", "http://127.0.0.1:8080"},
	}
	for _, tt := range tests {
		t.Run(tt.flag, func(t *testing.T) {
			e := entry(tt.flag)
			if !strings.Contains(e, "env "+tt.env) || tt.def != "" && !strings.Contains(e, "default "+tt.def) {
				t.Errorf("-h's entry of -%s does not give env %s and default %q:\n%s", tt.flag, tt.env, tt.def, e)
			}
		})
	}
	t.Run("defaults as values", func(t *testing.T) {
		if e := entry("since"); !strings.Contains(e, "(default -1)") {
			t.Errorf("-since's default is not shown as the value -1:\n%s", e)
		}
		if e := entry("memory"); strings.Contains(e, "default") {
			t.Errorf("a boolean's default is shown:\n%s", e)
		}
	})
	t.Run("every server flag in a topic", func(t *testing.T) {
		for _, f := range regexp.MustCompile(`(?m)^  -([a-z-]+)`).FindAllStringSubmatch(help, -1) {
			if n := strings.Count(help, "\n  -"+f[1]+"\n") + strings.Count(help, "\n  -"+f[1]+" "); n != 1 {
				t.Errorf("-%s is listed %d times, want once", f[1], n)
			}
		}
		fs := flag.NewFlagSet("", flag.ContinueOnError)
		new(server.Config).RegisterFlags(fs)
		fs.VisitAll(func(f *flag.Flag) {
			if entry(f.Name) == "" {
				t.Errorf("-h does not list the server flag -%s", f.Name)
			}
		})
	})
	t.Run("sync=none risk", func(t *testing.T) {
		lower := strings.ToLower(entry("sync"))
		if !strings.Contains(lower, "none") || !regexp.MustCompile(`crash|lost|lose|machine|power`).MatchString(lower) {
			t.Errorf("-h's -sync entry does not say what -sync=none risks:\n%s", entry("sync"))
		}
	})
}

func TestCLIServerFlagFromEnv(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		args     []string
		fits     int // a value of this many bytes is stored
		tooLarge int // and one of this many gets 413
	}{
		{name: "env only", fits: 10, tooLarge: 11},
		{name: "flag wins", args: []string{"-max-value", "20"}, fits: 20, tooLarge: 21},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			// The address and data directory come from their env twins too.
			env := []string{"KVSSE_MAX_VALUE=10", "KVSSE_ADDR=127.0.0.1:0", "KVSSE_DATA=" + dir}
			p := cliStartBin(t, env, tt.args...)

			status, _, body := cliDo(t, http.MethodPut, cliKeyURL(p.URL, "env/fits"), bytes.Repeat([]byte("x"), tt.fits))
			if status != http.StatusCreated {
				t.Errorf("PUT of %d bytes: %d %s, want 201", tt.fits, status, body)
			}
			big := bytes.Repeat([]byte("x"), tt.tooLarge)
			status, _, body = cliDo(t, http.MethodPut, cliKeyURL(p.URL, "env/big"), big)
			if status != http.StatusRequestEntityTooLarge {
				t.Errorf("PUT of %d bytes: %d %s, want 413", tt.tooLarge, status, body)
			}
			text := cliServerError(t, http.MethodPut, cliKeyURL(p.URL, "env/big"), big, http.StatusRequestEntityTooLarge)
			r := cliRun(t, nil, big, "-server", p.URL, "put", "env/big")
			if r.code != 2 || !strings.Contains(r.stderr, text) {
				t.Errorf("kvsse put of %d bytes: exit %d, stderr %q; want 2 and %q", tt.tooLarge, r.code, r.stderr, text)
			}
			if ents, err := os.ReadDir(dir); err != nil || len(ents) == 0 {
				t.Errorf("KVSSE_DATA=%s: nothing written there (%v)", dir, err)
			}
		})
	}

	t.Run("bad env value", func(t *testing.T) {
		t.Parallel()
		r := cliRun(t, []string{"KVSSE_MAX_VALUE=lots"}, nil, "-memory", "-addr", "127.0.0.1:0")
		if r.code != 2 || !strings.Contains(r.stderr, "KVSSE_MAX_VALUE") {
			t.Errorf("server with KVSSE_MAX_VALUE=lots: exit %d, stderr %q; want 2 and an error naming KVSSE_MAX_VALUE", r.code, r.stderr)
		}
	})
}

func TestCLIWatch(t *testing.T) {
	t.Parallel()
	ts := servertest.Start(t)
	since := cliPut(t, ts.URL, "config/old", []byte("before the watch"))
	w := cliStartWatch(t, nil, "-server", ts.URL, "watch", "-since", strconv.FormatInt(since, 10), "config/**")

	var want []string
	put := func(key, value, printed string) {
		rev := cliPut(t, ts.URL, key, []byte(value))
		if printed != "" {
			want = append(want, fmt.Sprintf("%d put %s %s", rev, key, printed))
		}
	}
	put("config/a", "on", "on")
	put("other/x", "no", "") // does not match
	put("config", "no", "")  // config/** needs one more segment
	put("config/b/c", "two\nlines", `"two\nlines"`)
	put("config/sp", "hello world ✓", "hello world ✓")
	put("config/tab", "a\tb", `"a\tb"`)
	put("config/cr", "x\r", `"x\r"`)
	put("config/ls", "a\u2028b", `"a\u2028b"`)
	put("config/a", "off", "off")
	want = append(want, fmt.Sprintf("%d delete config/a", cliDelete(t, ts.URL, "config/a")))

	var got []string
	for range want {
		got = append(got, w.next(t))
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("watch output (-want +got):\n%s", diff)
	}

	// An expiry says so.
	rev, err := servertest.Write(http.MethodPut, cliKeyURL(ts.URL, "config/short")+"?ttl=1s", []byte("soon gone"))
	if err != nil {
		t.Fatal(err)
	}
	if line, want := w.next(t), fmt.Sprintf("%d put config/short soon gone", rev); line != want {
		t.Errorf("watch printed %q, want %q", line, want)
	}
	if line := w.next(t); !regexp.MustCompile(`^[0-9]+ delete config/short expired$`).MatchString(line) {
		t.Errorf("watch printed %q for the expiry, want \"<revision> delete config/short expired\"", line)
	}
	if rest := w.interrupt(t); len(rest) != 0 {
		t.Errorf("watch printed more: %q", rest)
	}
}

func TestCLIWatchJSON(t *testing.T) {
	t.Parallel()
	ts := servertest.Start(t)
	pre := cliPut(t, ts.URL, "config/pre", []byte("x"))
	w := cliStartWatch(t, nil, "watch", "-json", "config/**", "jobs/*", "-server", ts.URL)
	if diff := cmp.Diff(cliEvent{Event: "sync", Revision: pre}, w.nextEvent(t)); diff != "" {
		t.Fatalf("first object of watch -json (-want +got):\n%s", diff)
	}

	r1 := cliPut(t, ts.URL, "config/x", []byte("1"))
	r2 := cliPut(t, ts.URL, "config/x", []byte("2\n"))
	cliPut(t, ts.URL, "jobs/a/b", []byte("no")) // jobs/* is one segment
	r3 := cliPut(t, ts.URL, "jobs/j", []byte{0xff, 0x00, 0x01})
	r4 := cliDelete(t, ts.URL, "config/x")
	want := []cliEvent{
		{Event: "put", Key: "config/x", Value: cliStr("1"), Revision: r1},
		{Event: "put", Key: "config/x", Value: cliStr("2\n"), Revision: r2, PrevRevision: r1},
		{Event: "put", Key: "jobs/j", Value: cliStr("/wAB"), Encoding: "base64", Revision: r3},
		{Event: "delete", Key: "config/x", Revision: r4, Reason: "deleted"},
	}
	var got []cliEvent
	for range want {
		ev := w.nextEvent(t)
		if ev.Event == "delete" {
			ev.PrevRevision = 0 // the contract does not say
		}
		got = append(got, ev)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("watch -json (-want +got):\n%s", diff)
	}
	w.interrupt(t)
}

func TestCLIWatchSnapshot(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		json bool
	}{
		{name: "text"},
		{name: "json", json: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ts := servertest.Start(t)
			ra := cliPut(t, ts.URL, "config/a", []byte("1"))
			rb := cliPut(t, ts.URL, "config/b/c", []byte("x y"))
			cliPut(t, ts.URL, "other/z", []byte("no"))
			cliPut(t, ts.URL, "config/gone", []byte("no"))
			rev := cliDelete(t, ts.URL, "config/gone")

			args := []string{"-server", ts.URL, "-snapshot", "watch", "config/**"}
			if tt.json {
				args = append(args, "-json")
			}
			w := cliStartWatch(t, nil, args...)
			if tt.json {
				want := []cliEvent{
					{Event: "put", Key: "config/a", Value: cliStr("1"), Revision: ra},
					{Event: "put", Key: "config/b/c", Value: cliStr("x y"), Revision: rb},
					{Event: "sync", Revision: rev},
				}
				w.expectEvents(t, "watch -snapshot -json, catch-up", want)
				rc := cliPut(t, ts.URL, "config/c", []byte("3"))
				if diff := cmp.Diff(cliEvent{Event: "put", Key: "config/c", Value: cliStr("3"), Revision: rc}, w.nextEvent(t)); diff != "" {
					t.Errorf("watch -snapshot -json, live (-want +got):\n%s", diff)
				}
			} else {
				// The snapshot lines come after the subscription was made,
				// so a put made once they are read is a live change.
				want := []string{fmt.Sprintf("%d put config/a 1", ra), fmt.Sprintf("%d put config/b/c x y", rb)}
				got := []string{w.next(t), w.next(t)}
				rc := cliPut(t, ts.URL, "config/c", []byte("3"))
				rd := cliDelete(t, ts.URL, "config/a")
				want = append(want, fmt.Sprintf("%d put config/c 3", rc), fmt.Sprintf("%d delete config/a", rd))
				got = append(got, w.next(t), w.next(t))
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("watch -snapshot (-want +got):\n%s", diff)
				}
			}
			w.interrupt(t)
		})
	}
}

// TestCLIWatchReconnect kills the server under a watch, keeps it down
// while the watch tries to reconnect, and restarts it on the same port and
// data: the watch must resume by itself and print every change once.
func TestCLIWatchReconnect(t *testing.T) {
	t.Parallel()
	addr, dir := servertest.FreeAddr(t), t.TempDir()
	srv := cliStartBin(t, nil, "-addr", addr, "-data", dir)
	w := cliStartWatch(t, nil, "-server", srv.URL, "watch", "-json", "config/**")
	sync0 := w.nextEvent(t)
	if sync0.Event != "sync" {
		t.Fatalf("first object of watch -json: %+v, want a sync", sync0)
	}

	var want, got []string
	line := func(ev cliEvent) string {
		s := fmt.Sprintf("%d %s %s", ev.Revision, ev.Event, ev.Key)
		if ev.Value != nil {
			s += " " + *ev.Value
		}
		return s
	}
	for i := range 5 {
		key, value := fmt.Sprintf("config/k%d", i), fmt.Sprintf("v%d", i)
		want = append(want, line(cliEvent{Event: "put", Key: key, Value: &value, Revision: cliPut(t, srv.URL, key, []byte(value))}))
	}
	syncs := 1
	for len(got) < len(want) {
		switch ev := w.nextEvent(t); ev.Event {
		case "put", "delete":
			got = append(got, line(ev))
		default:
			t.Fatalf("watch -json printed %+v before the restart", ev)
		}
	}

	srv.Kill() // SIGKILL
	// While the server is down, something that is not it answers on its
	// port (as a proxy without a backend would) and closes each connection:
	// the watch must keep trying.
	down, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan struct{}, 16)
	go func() {
		for {
			c, err := down.Accept()
			if err != nil {
				return
			}
			c.Close()
			select {
			case accepted <- struct{}{}:
			default:
			}
		}
	}()
	for i := range 2 {
		select {
		case <-accepted:
		case <-w.exited:
			down.Close()
			t.Fatalf("watch exited (%v) while the server was down, after %d reconnection attempts, instead of retrying; stderr:\n%s", w.err, i, w.stderr)
		case <-time.After(cliTimeout):
			down.Close()
			t.Fatalf("watch made %d reconnection attempts in %v, want 2; stderr:\n%s", i, cliTimeout, w.stderr)
		}
	}
	down.Close()

	srv = cliStartBin(t, nil, "-addr", addr, "-data", dir)
	for i := 5; i < 10; i++ {
		key, value := fmt.Sprintf("config/k%d", i), fmt.Sprintf("v%d", i)
		want = append(want, line(cliEvent{Event: "put", Key: key, Value: &value, Revision: cliPut(t, srv.URL, key, []byte(value))}))
	}
	cliPut(t, srv.URL, "other/k", []byte("no"))
	want = append(want, line(cliEvent{Event: "delete", Key: "config/k0", Revision: cliDelete(t, srv.URL, "config/k0")}))

	for len(got) < len(want) || syncs < 2 {
		switch ev := w.nextEvent(t); ev.Event {
		case "put", "delete":
			got = append(got, line(ev))
		case "sync":
			syncs++
		default:
			t.Errorf("watch -json printed %+v", ev)
		}
	}
	for _, l := range w.interrupt(t) {
		if ev := cliParseEvent(t, l); ev.Event == "put" || ev.Event == "delete" {
			got = append(got, line(ev))
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("changes printed across the restart (-want +got):\n%s", diff)
	}
}

func TestCLIWatchReset(t *testing.T) {
	t.Parallel()
	ts := servertest.Start(t, "-history", "2")
	first := cliPut(t, ts.URL, "config/a", []byte("1"))
	var rb int64
	for i := range 4 {
		rb = cliPut(t, ts.URL, "config/b", []byte(strconv.Itoa(i)))
	}
	rc := cliPut(t, ts.URL, "config/c", []byte("c"))
	snapshot := []cliEvent{
		{Event: "put", Key: "config/a", Value: cliStr("1"), Revision: first},
		{Event: "put", Key: "config/b", Value: cliStr("3"), Revision: rb},
		{Event: "put", Key: "config/c", Value: cliStr("c"), Revision: rc},
	}
	for _, poll := range []bool{false, true} {
		args := []string{"-server", ts.URL, "-json", "-since", strconv.FormatInt(first-1, 10), "watch", "config/**"}
		want := append(append([]cliEvent{{Event: "reset", Revision: rc, Reason: "history"}}, snapshot...), cliEvent{Event: "sync", Revision: rc})
		if poll {
			// A long poll's reset is an answer's field: it is said on
			// stderr, and the snapshot printed as puts.
			args, want = append(args, "-poll"), snapshot
		}
		w := cliStartWatch(t, nil, args...)
		w.expectEvents(t, fmt.Sprintf("watch -json -since past the history, -poll %v", poll), want)
		w.interrupt(t)
		if !strings.Contains(w.stderr.String(), "history reset at revision") {
			t.Errorf("watch -poll %v did not say the history was reset; stderr:\n%s", poll, w.stderr)
		}
	}
}

// TestCLIWatchTransaction runs watch against a fake server whose first
// stream is cut in the middle of a revision (a transaction's changes):
// watch prints nothing of that revision (-json: prints what came), resumes
// from before it, and prints it once, whole, when the next stream sends
// it again.
func TestCLIWatchTransaction(t *testing.T) {
	t.Parallel()
	first := []string{
		`{"event":"sync","revision":10}`,
		`{"event":"put","key":"k/x","value":"1","revision":11,"last":true}`,
		`{"event":"put","key":"k/a","value":"A","revision":12}`,
		`{"event":"put","key":"k/b","value":"B","revision":12}`,
		// cut here
	}
	second := []string{
		`{"event":"put","key":"k/a","value":"A","revision":12}`,
		`{"event":"put","key":"k/b","value":"B","revision":12}`,
		`{"event":"delete","key":"k/c","revision":12,"reason":"deleted","last":true}`,
		`{"event":"sync","revision":12}`,
		`{"event":"put","key":"k/d","value":"D","revision":13}`,
		`{"event":"put","key":"k/e","value":"E","revision":13,"last":true}`,
	}
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{
			name: "text",
			want: []string{"11 put k/x 1", "12 put k/a A", "12 put k/b B", "12 delete k/c", "13 put k/d D", "13 put k/e E"},
		},
		{
			name: "json",
			args: []string{"-json"},
			want: append(append([]string(nil), first...), second...),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var (
				mu  sync.Mutex // guards ids
				ids []string   // the Last-Event-ID of each stream
			)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/watch" {
					http.NotFound(w, r)
					return
				}
				mu.Lock()
				ids = append(ids, r.Header.Get("Last-Event-ID"))
				n := len(ids)
				mu.Unlock()
				w.Header().Set("Content-Type", "application/x-ndjson")
				lines := second
				if n == 1 {
					lines = first
				}
				for _, l := range lines {
					fmt.Fprintln(w, l)
				}
				if n == 1 {
					return // the stream ends in the middle of revision 12
				}
				http.NewResponseController(w).Flush()
				<-r.Context().Done()
			}))
			defer srv.Close()
			w := cliStartWatch(t, nil, append([]string{"-server", srv.URL, "watch", "k/**"}, tt.args...)...)
			var got []string
			for range tt.want {
				got = append(got, w.next(t))
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("watch printed (-want +got):\n%s", diff)
			}
			if rest := w.interrupt(t); len(rest) != 0 {
				t.Errorf("watch printed more: %q", rest)
			}
			mu.Lock()
			defer mu.Unlock()
			if diff := cmp.Diff([]string{"", "11"}, ids); diff != "" {
				t.Errorf("Last-Event-ID of each stream (-want +got):\n%s", diff)
			}
		})
	}
}

// TestCLIToken: against a server with -auth, the client sends -token or
// KVSSE_TOKEN as a Bearer token, and without one it reports the server's
// 401.
func TestCLIToken(t *testing.T) {
	file := servertest.AuthFile(t, "", `{"tokens":[{"name":"ops","token":"s3cret","read":["**"],"write":["app/**"]}]}`)
	ts := servertest.Start(t, "-auth", file)
	srv := "-server=" + ts.URL

	r := cliRun(t, nil, nil, srv, "put", "app/x", "1")
	if r.code != 2 || !strings.Contains(r.stderr, "401") {
		t.Fatalf("put without a token: exit %d, stderr %q; want 2 and the 401", r.code, r.stderr)
	}
	cliOK(t, nil, nil, srv, "-token", "s3cret", "put", "app/x", "1")
	if got := cliOK(t, []string{"KVSSE_TOKEN=s3cret"}, nil, srv, "get", "app/x"); string(got) != "1" {
		t.Fatalf("get with KVSSE_TOKEN: %q", got)
	}
	r = cliRun(t, []string{"KVSSE_TOKEN=s3cret"}, nil, srv, "put", "other/x", "1")
	if r.code != 2 || !strings.Contains(r.stderr, "403") {
		t.Fatalf("put outside the token's patterns: exit %d, stderr %q; want 2 and the 403", r.code, r.stderr)
	}
}

// TestCLINoServer: a command against a server that is not there says
// which server it tried and how to point it elsewhere.
func TestCLINoServer(t *testing.T) {
	t.Parallel()
	u := "http://" + servertest.FreeAddr(t)
	for _, env := range [][]string{{"KVSSE_URL=" + u}, nil} {
		args := []string{"get", "k"}
		want := u
		if env == nil {
			args = append([]string{"-server", u}, args...)
		}
		r := cliRun(t, env, nil, args...)
		if r.code != 2 {
			t.Errorf("kvsse %q: exit %d, want 2", args, r.code)
		}
		for _, w := range []string{want, "-server", "KVSSE_URL"} {
			if !strings.Contains(r.stderr, w) {
				t.Errorf("kvsse %q: stderr does not say %q:\n%s", args, w, r.stderr)
			}
		}
	}
}

// TestCLITxn: kvsse txn sends a transaction from a file or stdin and
// prints its revision; a failed condition exits 1 with the keys and their
// revisions on stderr, and changes nothing.
func TestCLITxn(t *testing.T) {
	t.Parallel()
	ts := servertest.Start(t)
	ra := cliPut(t, ts.URL, "t/a", []byte("1"))
	file := filepath.Join(t.TempDir(), "txn.json")
	body := fmt.Sprintf(`{"if": [{"key": "t/a", "revision": %d}], "then": [{"put": "t/a", "value": "2"}, {"put": "t/b", "value": "3"}]}`, ra)
	if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	r := cliRun(t, nil, nil, "-server", ts.URL, "txn", file)
	rev, err := strconv.ParseInt(strings.TrimSpace(string(r.stdout)), 10, 64)
	if r.code != 0 || err != nil || rev <= ra {
		t.Fatalf("txn FILE: exit %d, stdout %q, stderr %q; want 0 and a revision after %d", r.code, r.stdout, r.stderr, ra)
	}
	if got := servertest.List(t, ts.URL, "t/"); got["t/a"].Revision != rev || got["t/b"].Revision != rev {
		t.Errorf("keys after the txn: %+v, want both at %d", got, rev)
	}

	// From stdin, with a condition that no longer holds.
	r = cliRun(t, nil, []byte(body), "-server", ts.URL, "txn")
	if r.code != 1 || len(r.stdout) != 0 || !strings.Contains(r.stderr, "t/a") || !strings.Contains(r.stderr, strconv.FormatInt(rev, 10)) {
		t.Errorf("txn with a stale condition: exit %d, stdout %q, stderr %q; want 1 naming t/a at %d", r.code, r.stdout, r.stderr, rev)
	}
	if got := servertest.List(t, ts.URL, "t/"); got["t/a"].Revision != rev {
		t.Errorf("a failed txn changed t/a: %+v", got)
	}

	r = cliRun(t, nil, []byte(`{"then": [`), "-server", ts.URL, "txn")
	if r.code != 2 || !strings.Contains(r.stderr, "400") {
		t.Errorf("txn with a bad body: exit %d, stderr %q; want 2 and the server's 400", r.code, r.stderr)
	}
}

// TestCLIDelPrefix: kvsse del -prefix deletes every key starting with the
// prefix as one write and prints its revision.
func TestCLIDelPrefix(t *testing.T) {
	t.Parallel()
	ts := servertest.Start(t)
	cliPut(t, ts.URL, "job/1", []byte("x"))
	cliPut(t, ts.URL, "job/2/y", []byte("x"))
	last := cliPut(t, ts.URL, "jobs", []byte("stays"))
	r := cliRun(t, nil, nil, "-server", ts.URL, "del", "-prefix", "job/")
	rev, err := strconv.ParseInt(strings.TrimSpace(string(r.stdout)), 10, 64)
	if r.code != 0 || err != nil || rev != last+1 {
		t.Fatalf("del -prefix job/: exit %d, stdout %q, stderr %q; want 0 and revision %d", r.code, r.stdout, r.stderr, last+1)
	}
	if got := servertest.List(t, ts.URL, "job"); len(got) != 1 || got["jobs"].Value != "stays" {
		t.Errorf("keys after del -prefix: %v", got)
	}
	if r := cliRun(t, nil, nil, "-server", ts.URL, "del", "-prefix", "job/", "extra"); r.code != 2 {
		t.Errorf("del -prefix with a key too: exit %d, want 2", r.code)
	}
}

// cliTxnPuts writes keys[i] = values[i] (with the content type ctype and,
// when ttl is not "", that time to live) with POST /txn, 100 keys a
// transaction.
func cliTxnPuts(t testing.TB, base string, keys, values []string, ctype, ttl string) {
	t.Helper()
	for start := 0; start < len(keys); start += 100 {
		var ops []map[string]string
		for i := start; i < min(start+100, len(keys)); i++ {
			op := map[string]string{"put": keys[i], "value": values[i], "content_type": ctype}
			if ttl != "" {
				op["ttl"] = ttl
			}
			ops = append(ops, op)
		}
		body, _ := json.Marshal(map[string]any{"then": ops})
		if status, _, b := cliDo(t, http.MethodPost, base+"/txn", body); status != http.StatusOK {
			t.Fatalf("POST /txn: %d %s", status, b)
		}
	}
}

// cliExportLine is a line of kvsse export.
type cliExportLine struct {
	Key         string `json:"key"`
	Value       string `json:"value"`
	Encoding    string `json:"encoding"`
	ContentType string `json:"content_type"`
	Expires     string `json:"expires"`
}

// cliExport runs kvsse export against base and decodes its lines.
func cliExport(t testing.TB, base string) ([]byte, []cliExportLine) {
	t.Helper()
	out := cliOK(t, nil, nil, "-server", base, "export")
	var lines []cliExportLine
	for _, l := range cliLines(t, out) {
		var e cliExportLine
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("export line %q: %v", l, err)
		}
		lines = append(lines, e)
	}
	return out, lines
}

// TestCLIExportImport: export, then import into an empty store, gives the
// same keys, bytes (binary ones too), content types and expiry times, on
// both backends; a key already expired is skipped; the import's
// transactions shrink when the server finds them too large (etcd's own
// --max-txn-ops, or -max-txn-ops here).
func TestCLIExportImport(t *testing.T) {
	servertest.ForEachBackend(t, func(t *testing.T, be servertest.Backend) {
		src := be.Start(t)
		var keys, values []string
		for i := range 1200 {
			keys, values = append(keys, fmt.Sprintf("ex/%04d", i)), append(values, fmt.Sprintf("value %d\n", i))
		}
		cliTxnPuts(t, src.URL, keys, values, "text/plain; charset=utf-8", "")
		cliTxnPuts(t, src.URL, []string{"ttl/a", "ttl/b"}, []string{"x", "y"}, "", "1h")
		cliPut(t, src.URL, "bin", []byte{0, 0xff, 0xfe, '\n'})
		out, want := cliExport(t, src.URL)
		if len(want) != 1203 {
			t.Fatalf("export printed %d keys, want 1203", len(want))
		}
		file := filepath.Join(t.TempDir(), "export.ndjson")
		stale := `{"key":"old","value":"gone","revision":1,"content_type":"text/plain","expires":"2001-01-01T00:00:00Z"}` + "\n"
		if err := os.WriteFile(file, append(out, stale...), 0o644); err != nil {
			t.Fatal(err)
		}

		dst := be.Start(t, "-max-txn-ops", "300")
		r := cliOK(t, nil, nil, "-server", dst.URL, "import", file)
		if !strings.HasPrefix(string(r), "imported 1203 keys, skipped 1 (expired)") {
			t.Errorf("import printed %q", r)
		}
		_, got := cliExport(t, dst.URL)
		if len(got) != len(want) {
			t.Fatalf("after the import: %d keys, want %d", len(got), len(want))
		}
		for i := range want {
			w, g := want[i], got[i]
			we, _ := time.Parse(time.RFC3339Nano, w.Expires)
			ge, _ := time.Parse(time.RFC3339Nano, g.Expires)
			if d := ge.Sub(we); (w.Expires == "") != (g.Expires == "") || d < 0 || d > 5*time.Second {
				t.Errorf("%s expires %q, was %q", w.Key, g.Expires, w.Expires)
			}
			w.Expires, g.Expires = "", ""
			if w != g {
				t.Errorf("imported %+v, exported %+v", g, w)
			}
		}
		if v := cliOK(t, nil, nil, "-server", dst.URL, "get", "bin"); !bytes.Equal(v, []byte{0, 0xff, 0xfe, '\n'}) {
			t.Errorf("get bin = %q", v)
		}

		// An import of the same lines from stdin, one key a transaction.
		dst2 := be.Start(t)
		if r := cliOK(t, nil, out[:bytes.IndexByte(out, '\n')+1], "-server", dst2.URL, "-batch", "1", "import"); !strings.HasPrefix(string(r), "imported 1 keys") {
			t.Errorf("import from stdin printed %q", r)
		}
	})
}

// TestCLIBackupRestoreCheck: kvsse backup saves the store, restore makes
// a data directory of it that a server starts on at the backup's
// revision, check reads it; a flipped byte in the backup or in a log
// segment is caught (exit 1, nothing written), as is a directory that
// is not empty.
func TestCLIBackupRestoreCheck(t *testing.T) {
	t.Parallel()
	src := cliStartBin(t, nil, "-addr", "127.0.0.1:0", "-data", t.TempDir())
	cliPut(t, src.URL, "a", []byte{0, 1, 0xff})
	last := cliPut(t, src.URL, "b/c", []byte("v"))
	tmp := t.TempDir()
	file := filepath.Join(tmp, "store.backup")
	if rev := cliRevisionLine(t, cliOK(t, nil, nil, "-server", src.URL, "backup", file)); rev != last {
		t.Fatalf("backup printed revision %d, want %d", rev, last)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(tmp, "restored")
	if out := cliOK(t, nil, nil, "restore", file, "-data", dir); !strings.Contains(string(out), fmt.Sprintf("2 keys at revision %d", last)) {
		t.Errorf("restore printed %q", out)
	}
	if out := cliOK(t, nil, nil, "check", "-data", dir); !strings.HasPrefix(string(out), fmt.Sprintf("revision %d\nkeys 2\nbytes 4\nfiles 1\n", last)) {
		t.Errorf("check printed %q", out)
	}
	r := cliRun(t, nil, nil, "restore", file, "-data", dir)
	if r.code != 1 || !strings.Contains(r.stderr, "not empty") {
		t.Errorf("restore into a full directory: exit %d, stderr %q; want 1", r.code, r.stderr)
	}
	bad := filepath.Join(tmp, "bad.backup")
	data[len(data)/2] ^= 1
	if err := os.WriteFile(bad, data, 0o644); err != nil {
		t.Fatal(err)
	}
	r = cliRun(t, nil, nil, "restore", bad, "-data", filepath.Join(tmp, "never"))
	if _, err := os.Stat(filepath.Join(tmp, "never")); r.code != 1 || !strings.Contains(r.stderr, "offset") || err == nil {
		t.Errorf("restore of a damaged file: exit %d, stderr %q, dir made: %v; want exit 1 naming the offset, nothing made", r.code, r.stderr, err == nil)
	}

	p := cliStartBin(t, nil, "-addr", "127.0.0.1:0", "-data", dir)
	if got := cliPut(t, p.URL, "next", []byte("x")); got != last+1 {
		t.Errorf("the restored server's first write took %d, want %d", got, last+1)
	}
	if v := cliOK(t, nil, nil, "-server", p.URL, "get", "a"); !bytes.Equal(v, []byte{0, 1, 0xff}) {
		t.Errorf("restored a = %q", v)
	}
	p.Kill()
	segs, _ := filepath.Glob(filepath.Join(dir, "wal-*.log"))
	if len(segs) != 1 {
		t.Fatalf("segments %v", segs)
	}
	seg, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	seg[len(seg)/2] ^= 1
	if err := os.WriteFile(segs[0], seg, 0o644); err != nil {
		t.Fatal(err)
	}
	r = cliRun(t, nil, nil, "check", "-data", dir)
	if r.code != 1 || !strings.Contains(r.stderr, filepath.Base(segs[0])) || !strings.Contains(r.stderr, "offset") {
		t.Errorf("check of a damaged segment: exit %d, stderr %q; want 1 naming the file and the offset", r.code, r.stderr)
	}
}

// TestCLIBackupKill9 kills the server with SIGKILL in the middle of a
// backup: kvsse backup leaves no file (nor a temporary one), and the
// stream received up to the kill is refused by restore, which writes
// nothing. The server then starts again with every key.
func TestCLIBackupKill9(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	p := cliStartBin(t, nil, "-addr", "127.0.0.1:0", "-data", data)
	var keys, values []string
	big := strings.Repeat("x", 64<<10)
	for i := range 1500 { // about 100 MB of backup
		keys, values = append(keys, fmt.Sprintf("big/%04d", i)), append(values, big)
	}
	cliTxnPuts(t, p.URL, keys, values, "", "")

	// The raw stream, cut by the kill.
	resp, err := http.Get(p.URL + "/backup")
	if err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 1<<20)
	if _, err := io.ReadFull(resp.Body, head); err != nil {
		t.Fatal(err)
	}
	p.Kill()
	rest, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Fatalf("the stream ended cleanly after the kill (%d more bytes)", len(rest))
	}
	tmp := t.TempDir()
	cut := filepath.Join(tmp, "cut.backup")
	if err := os.WriteFile(cut, append(head, rest...), 0o644); err != nil {
		t.Fatal(err)
	}
	r := cliRun(t, nil, nil, "restore", cut, "-data", filepath.Join(tmp, "never"))
	if _, err := os.Stat(filepath.Join(tmp, "never")); r.code != 1 || err == nil {
		t.Errorf("restore of a cut backup: exit %d (%s), dir made: %v; want 1 and nothing", r.code, r.stderr, err == nil)
	}

	// kvsse backup, killed the same way once its temporary file grows.
	p = cliStartBin(t, nil, "-addr", "127.0.0.1:0", "-data", data)
	out := filepath.Join(tmp, "out", "store.backup")
	if err := os.Mkdir(filepath.Dir(out), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(servertest.Binary(t), "-server", p.URL, "backup", out)
	cmd.Env = cliEnv()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(cliTimeout)
	for killed := false; !killed; {
		tmps, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".store.backup.tmp-*"))
		if len(tmps) == 1 {
			if st, err := os.Stat(tmps[0]); err == nil && st.Size() > 1<<20 {
				p.Kill()
				killed = true
			}
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("no temporary file grew past 1 MiB: %v", tmps)
		}
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Errorf("backup killed half way: %v (%s), want exit 2", err, stderr.String())
	}
	if ents, _ := os.ReadDir(filepath.Dir(out)); len(ents) != 0 {
		t.Errorf("backup killed half way left %v", ents)
	}
	p = cliStartBin(t, nil, "-addr", "127.0.0.1:0", "-data", data)
	if got := servertest.List(t, p.URL, "big/"); len(got) != len(keys) {
		t.Errorf("after the kills the server holds %d keys, want %d", len(got), len(keys))
	}
}

// TestCLIWatchEventsPrev runs "watch -events" and "watch -prev -json",
// on a stream and with long polls: only the kind of change asked for is
// printed, with the previous value when asked; a bad -events is the
// server's 400, and -prev without -json a usage error, both exit 2.
func TestCLIWatchEventsPrev(t *testing.T) {
	t.Parallel()
	ts := servertest.Start(t)
	since := cliPut(t, ts.URL, "config/pre", []byte("x"))
	r1 := cliPut(t, ts.URL, "config/a", []byte("1"))
	r2 := cliPut(t, ts.URL, "config/a", []byte("2"))
	r3 := cliDelete(t, ts.URL, "config/a")
	r4 := cliPut(t, ts.URL, "config/b", []byte("x"))
	r5 := cliDelete(t, ts.URL, "config/b")
	for _, mode := range []string{"stream", "poll"} {
		args := []string{"-server", ts.URL, "watch", "-since", strconv.FormatInt(since, 10), "config/**"}
		if mode == "poll" {
			args = append(args, "-poll")
		}
		t.Run(mode+"/events delete", func(t *testing.T) {
			w := cliStartWatch(t, nil, append(args, "-events", "delete")...)
			want := []string{fmt.Sprintf("%d delete config/a", r3), fmt.Sprintf("%d delete config/b", r5)}
			got := []string{w.next(t), w.next(t)}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("watch -events delete (-want +got):\n%s", diff)
			}
			w.interrupt(t)
		})
		t.Run(mode+"/events put prev json", func(t *testing.T) {
			w := cliStartWatch(t, nil, append(args, "-events", "put", "-prev", "-json")...)
			want := []cliEvent{
				{Event: "put", Key: "config/a", Value: cliStr("1"), Revision: r1},
				{Event: "put", Key: "config/a", Value: cliStr("2"), Revision: r2, PrevRevision: r1, PrevValue: cliStr("1")},
				{Event: "put", Key: "config/b", Value: cliStr("x"), Revision: r4},
			}
			var got []cliEvent
			for len(got) < len(want) {
				if ev := w.nextEvent(t); ev.Event != "sync" {
					got = append(got, ev)
				}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("watch -events put -prev -json (-want +got):\n%s", diff)
			}
			w.interrupt(t)
		})
	}
	for _, tc := range []struct {
		name   string
		args   []string
		stderr string
	}{
		{"bad events", []string{"-events", "both"}, "400 Bad Request: events must be put or delete"},
		{"prev without json", []string{"-prev"}, "-prev needs -json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := cliRun(t, nil, nil, append([]string{"-server", ts.URL, "watch", "config/**"}, tc.args...)...)
			if r.code != 2 || !strings.Contains(r.stderr, tc.stderr) {
				t.Errorf("watch %q: exit %d, stderr %q; want exit 2 and %q", tc.args, r.code, r.stderr, tc.stderr)
			}
		})
	}
}

// TestCLIWatchCoalesce floods keys that "watch -coalesce" follows while
// its output is not read, so that it stops reading its stream: the server
// merges what waits instead of cutting the stream off, the watch never
// reconnects, prints fewer lines than there were writes, and the state its
// lines build equals the listing.
func TestCLIWatchCoalesce(t *testing.T) {
	t.Parallel()
	ts := servertest.Start(t, "-sub-buffer", "64", "-sync", "none", "-write-rate", "0")
	w := cliStartWatch(t, nil, "-server", ts.URL, "watch", "-coalesce", "-since", "0", "flood/**")
	start := cliPut(t, ts.URL, "flood/start", []byte("1"))
	if line, want := w.next(t), fmt.Sprintf("%d put flood/start 1", start); line != want {
		t.Fatalf("watch printed %q, want %q", line, want)
	}
	// From here on nothing reads the lines until the flood is over: the
	// test holds 4,096 of them, then the pipe and the watch's stream fill.
	const writers, each = 4, 5000
	if err := servertest.Flood(ts.URL, "flood/", 20, writers, each); err != nil {
		t.Fatal(err)
	}
	end := cliPut(t, ts.URL, "flood/end", []byte("1"))

	state := map[string]string{"flood/start": "1"}
	lines := 0
	for {
		f := strings.SplitN(w.next(t), " ", 4)
		lines++
		switch {
		case len(f) == 4 && f[1] == "put":
			state[f[2]] = f[3]
		case len(f) == 3 && f[1] == "delete":
			delete(state, f[2])
		default:
			t.Fatalf("watch printed %q", f)
		}
		if f[0] == strconv.FormatInt(end, 10) {
			break
		}
	}
	servertest.CheckCoalesced(t, ts.URL, "flood/", state, lines, writers*each)
	w.interrupt(t)
	if strings.Contains(w.stderr.String(), "reconnecting") {
		t.Errorf("the watch reconnected:\n%s", w.stderr)
	}
}

// TestCLIWatchPoll runs "watch -poll" (long polls instead of a stream)
// against the binary: the same lines as watch, a transaction whole,
// nothing twice across a server restart; -snapshot -json prints the keys
// as puts (a reset: TestCLIWatchReset).
func TestCLIWatchPoll(t *testing.T) {
	t.Parallel()
	t.Run("text", func(t *testing.T) {
		t.Parallel()
		addr, dir := servertest.FreeAddr(t), t.TempDir()
		srv := cliStartBin(t, nil, "-addr", addr, "-data", dir)
		since := cliPut(t, srv.URL, "config/old", []byte("before"))
		w := cliStartWatch(t, nil, "-server", srv.URL, "watch", "-poll", "-since", strconv.FormatInt(since, 10), "config/**")
		var want []string
		want = append(want, fmt.Sprintf("%d put config/a on", cliPut(t, srv.URL, "config/a", []byte("on"))))
		cliPut(t, srv.URL, "other/x", []byte("no"))
		code, rev, b := cliDo(t, http.MethodPost, srv.URL+"/txn", []byte(`{"then": [{"put": "config/t1", "value": "1"}, {"put": "other/t", "value": "no"}, {"put": "config/t2", "value": "two words"}]}`))
		if code != http.StatusOK {
			t.Fatalf("POST /txn: %d %s", code, b)
		}
		want = append(want, fmt.Sprintf("%d put config/t1 1", rev), fmt.Sprintf("%d put config/t2 two words", rev))
		want = append(want, fmt.Sprintf("%d delete config/a", cliDelete(t, srv.URL, "config/a")))
		var got []string
		for range want {
			got = append(got, w.next(t))
		}

		srv.Kill() // SIGKILL: the poll under way fails, the next ones resume
		srv = cliStartBin(t, nil, "-addr", addr, "-data", dir)
		want = append(want, fmt.Sprintf("%d put config/b 2", cliPut(t, srv.URL, "config/b", []byte("2"))))
		got = append(got, w.next(t))
		got = append(got, w.interrupt(t)...)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("watch -poll (-want +got):\n%s", diff)
		}
	})
	t.Run("snapshot json", func(t *testing.T) {
		t.Parallel()
		ts := servertest.Start(t)
		ra := cliPut(t, ts.URL, "config/a", []byte("1"))
		cliPut(t, ts.URL, "other/z", []byte("no"))
		w := cliStartWatch(t, nil, "-server", ts.URL, "-snapshot", "-json", "-poll", "watch", "config/**")
		w.expectEvents(t, "watch -poll -snapshot -json", []cliEvent{{Event: "put", Key: "config/a", Value: cliStr("1"), Revision: ra}})
		rb := cliPut(t, ts.URL, "config/b", []byte("2"))
		w.expectEvents(t, "watch -poll -json, a change", []cliEvent{{Event: "put", Key: "config/b", Value: cliStr("2"), Revision: rb}})
		w.interrupt(t)
	})

}
