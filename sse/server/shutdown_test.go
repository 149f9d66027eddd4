package server_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"kvsse/kv/wal"
	"kvsse/sse/server/servertest"
)

// bigDataDir writes a data directory holding a snapshot of n keys, whose
// loading takes long enough to watch the server while it starts.
func bigDataDir(t *testing.T, n int) string {
	t.Helper()
	dir := t.TempDir()
	err := wal.WriteSnapshot(dir, int64(n), func(add func(*wal.Record) error) error {
		for i := range n {
			r := wal.Record{Op: wal.OpPut, Rev: int64(i + 1), Key: fmt.Appendf(nil, "k/%07d", i),
				ContentType: []byte("text/plain"), Value: []byte("v")}
			if err := add(&r); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// startLoading starts the binary on dir and returns once it accepts
// connections, without waiting for it to be ready: it prints its banner
// only once its data is loaded, so the test picks the port itself.
func startLoading(t *testing.T, dir string) (*exec.Cmd, string) {
	t.Helper()
	addr := servertest.FreeAddr(t)
	cmd := exec.Command(servertest.Binary(t), "-addr", addr, "-data", dir, "-log-level", "warn")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(servertest.Timeout)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return cmd, "http://" + addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server does not accept connections on %s: %v", addr, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestLockedDataDirNoBanner: a server that cannot open its data directory
// (another one holds it) exits 2 with the reason and never prints its
// banner, so a script waiting for that line does not go ahead.
func TestLockedDataDirNoBanner(t *testing.T) {
	dir := t.TempDir()
	servertest.StartProc(t, "-data", dir)
	cmd := exec.Command(servertest.Binary(t), "-addr", "127.0.0.1:0", "-data", dir)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("second server on a locked directory: %v, want exit status 2; stderr:\n%s", err, stderr.String())
	}
	if stdout.Len() != 0 {
		t.Errorf("stdout %q, want nothing (no banner)", stdout.String())
	}
	if !strings.Contains(stderr.String(), "in use by another kvsse process") {
		t.Errorf("stderr does not say the directory is in use:\n%s", stderr.String())
	}
}

// waitExit waits up to d for cmd to end and returns its wait error.
func waitExit(t *testing.T, cmd *exec.Cmd, d time.Duration) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatalf("process did not exit within %v", d)
		return nil
	}
}

// TestStartingThenSIGTERM: while the server loads its data, every request
// (/healthz included) gets 503 "starting"; a SIGTERM then lets it finish
// loading and exit 0.
func TestStartingThenSIGTERM(t *testing.T) {
	dir := bigDataDir(t, 500_000)
	cmd, url := startLoading(t, dir)
	for _, path := range []string{"/healthz", "/kv/k/0000001"} {
		resp, err := http.Get(url + path)
		if err != nil {
			t.Fatal(err)
		}
		var e struct{ Code string }
		json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != 503 || e.Code != "starting" {
			t.Fatalf("GET %s while loading: %d %q, want 503 starting", path, resp.StatusCode, e.Code)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := waitExit(t, cmd, 60*time.Second); err != nil {
		t.Fatalf("after SIGTERM: %v, want exit 0", err)
	}
}

// TestSecondSignalExitsAtOnce: a second signal during a shutdown that is
// still under way ends the process at once.
func TestSecondSignalExitsAtOnce(t *testing.T) {
	dir := bigDataDir(t, 500_000)
	cmd, _ := startLoading(t, dir)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// The first signal is taken; from then on the next one kills. Repeat
	// it until the process is gone.
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case err := <-done:
			var ee *exec.ExitError
			if !errors.As(err, &ee) || !ee.Sys().(syscall.WaitStatus).Signaled() {
				t.Fatalf("process ended with %v; want it killed by the second signal while it was still loading", err)
			}
			return
		case <-tick.C:
			cmd.Process.Signal(syscall.SIGTERM)
		case <-deadline:
			t.Fatal("process still running 10 s after repeated signals")
		}
	}
}
