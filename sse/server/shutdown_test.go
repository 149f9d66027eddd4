package server_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"kvsse/kv/wal"
	"kvsse/sse"
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

// startLoading starts the binary on dir and returns once it listens,
// without waiting for it to be ready.
func startLoading(t *testing.T, dir string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(servertest.Binary(t), "-addr", "127.0.0.1:0", "-data", dir, "-log-level", "warn")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	url, err := sse.ReadBanner(stdout)
	if err != nil {
		t.Fatalf("no listening line: %v", err)
	}
	return cmd, url
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
