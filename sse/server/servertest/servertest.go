package servertest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// testServer is a kvsse server running in this process through run.
type testServer struct {
	URL    string
	Dir    string
	cancel context.CancelFunc
	done   <-chan error
}

// startServer runs the server on 127.0.0.1:0 with a fresh data directory
// (or the one given with -data in args) and waits until it serves.
func startServer(t testing.TB, args ...string) *testServer {
	t.Helper()
	dir := t.TempDir()
	full := []string{"-addr", "127.0.0.1:0", "-data", dir, "-log-level", "warn"}
	for i, a := range args {
		if a == "-data" && i+1 < len(args) {
			dir = args[i+1]
		}
	}
	full = append(full, args...)
	ctx, cancel := context.WithCancel(context.Background())
	logs := new(lockedBuffer)
	t.Cleanup(func() { showLog(t, "server log", logs) }) // runs after stop
	url, done, err := runInProcess(ctx, full, func(string) string { return "" }, logs)
	if err != nil {
		cancel()
		t.Fatalf("server did not start: %v", err)
	}
	ts := &testServer{Dir: dir, URL: url, cancel: cancel, done: done}
	waitReady(t, ts.URL)
	t.Cleanup(func() { ts.stop(t) })
	return ts
}

// runInProcess starts run(ctx, args, ...) in a goroutine with stderr as
// its standard error, and returns the URL from its "kvsse listening on"
// line and the channel that gets run's result.
func runInProcess(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) (string, <-chan error, error) {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := run(ctx, args, getenv, strings.NewReader(""), pw, stderr)
		pw.CloseWithError(fmt.Errorf("run ended: %v", err))
		done <- err
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		return "", done, err
	}
	go io.Copy(io.Discard, pr)
	url, ok := strings.CutPrefix(strings.TrimSpace(line), "kvsse listening on ")
	if !ok {
		return "", done, fmt.Errorf("first line %q, want kvsse listening on ...", line)
	}
	return url, done, nil
}

// waitReady polls /healthz until it answers 200. It does not check the
// certificate of an https URL.
func waitReady(t testing.TB, url string) {
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

// stop shuts the server down gracefully and checks that run returned nil.
// It is idempotent.
func (ts *testServer) stop(t testing.TB) {
	t.Helper()
	if ts.cancel == nil {
		return
	}
	ts.cancel()
	ts.cancel = nil
	select {
	case err := <-ts.done:
		if err != nil {
			t.Errorf("run returned %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("server did not stop")
	}
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// kvsseBinary builds the kvsse binary once per test run and returns its
// path.
func kvsseBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kvsse-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "kvsse")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	stopSharedEtcd()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// proc is a kvsse binary running as a child process.
type proc struct {
	URL string
	cmd *exec.Cmd
}

// startProc runs the built binary as a server on 127.0.0.1:0 with the
// given extra args and waits until it serves.
func startProc(t testing.TB, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(kvsseBinary(t), append([]string{"-addr", "127.0.0.1:0", "-log-level", "warn"}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := new(lockedBuffer)
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("server did not start: %v; stderr:\n%s", err, stderr.String())
	}
	p := &proc{URL: strings.TrimSpace(strings.TrimPrefix(line, "kvsse listening on ")), cmd: cmd}
	t.Cleanup(func() {
		p.kill()
		showLog(t, "log of "+p.URL, stderr)
	})
	waitReady(t, p.URL)
	return p
}

// kill ends the process with SIGKILL and reaps it.
func (p *proc) kill() {
	if p.cmd.ProcessState == nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	}
}

// lockedBuffer is a bytes.Buffer safe for concurrent writers and readers,
// for a child's output.
type lockedBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// showLog logs the end of a child's or server's log when the test failed.
func showLog(t testing.TB, name string, l *lockedBuffer) {
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

// send sends one request with header pairs (name, value, ...) and returns
// the response with its body read and closed.
func send(t testing.TB, method, url string, body io.Reader, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// requireTool returns the path of the program name, or skips the test
// when it is not on PATH, saying which Debian package has it; with env
// set to 1 (as CI does) it fails the test instead.
func requireTool(t testing.TB, name, pkg, env string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv(env) == "1" {
			t.Fatalf("%s=1 but %s is not on PATH (%v): apt-get install -y %s", env, name, err, pkg)
		}
		t.Skipf("%s is not on PATH: apt-get install -y %s (%s=1 fails instead)", name, pkg, env)
	}
	return path
}
