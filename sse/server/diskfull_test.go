//go:build linux

package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"kvsse/sse/server/servertest"
)

// TestDiskFullHTTP fills the disk under a server through its API: writes
// it cannot log get 503 "the log failed: no space left on device" (no
// file path: that stays in the server's log), the server goes on and
// takes writes again once there is room, and after a restart it holds
// every acknowledged write and none of the refused ones.
func TestDiskFullHTTP(t *testing.T) {
	mnt := t.TempDir()
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=2m"); err != nil {
		t.Skipf("mounting a 2 MiB tmpfs failed (%v): this test needs root or CAP_SYS_ADMIN", err)
	}
	t.Cleanup(func() { syscall.Unmount(mnt, syscall.MNT_DETACH) })
	filler := filepath.Join(mnt, "filler")
	if err := os.WriteFile(filler, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(mnt, "data")
	args := []string{"-data", dir, "-write-rate", "0"}
	ts := servertest.Start(t, args...)

	value := strings.Repeat("v", 1500)
	var mu sync.Mutex
	acked, refused := map[string]bool{}, map[string]bool{}
	var refusal string
	var errs []error // the writers' failures, reported by the test's goroutine
	var wg sync.WaitGroup
	for w := range 20 {
		wg.Go(func() {
			for i := 0; ; i++ {
				key := fmt.Sprintf("w%d/%d", w, i)
				resp, b, err := servertest.Do(context.Background(), http.DefaultClient, "PUT", ts.URL+"/kv/"+key, value)
				mu.Lock()
				switch {
				case err != nil:
					errs = append(errs, err)
				case resp.StatusCode == http.StatusCreated:
					acked[key] = true
				case resp.StatusCode == http.StatusServiceUnavailable:
					refused[key] = true
					refusal = string(b)
				default:
					errs = append(errs, fmt.Errorf("PUT %s: %d %s", key, resp.StatusCode, b))
				}
				done := len(refused) >= 20 || len(errs) > 0
				mu.Unlock()
				if done {
					return
				}
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("writers failed: %v", errs)
	}
	var e struct{ Error, Code string }
	if err := json.Unmarshal([]byte(refusal), &e); err != nil || e.Code != "unavailable" || !strings.Contains(e.Error, "the log failed: no space left on device") {
		t.Errorf("a refused write's answer %s, want 503 unavailable saying the log failed: no space left on device", refusal)
	}
	if strings.Contains(refusal, mnt) || strings.Contains(refusal, "wal-") {
		t.Errorf("a refused write's answer names the server's files: %s", refusal)
	}

	// Room again: the same server takes writes.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if resp, b := servertest.Send(t, "PUT", ts.URL+"/kv/after/room", strings.NewReader("ok")); resp.StatusCode != http.StatusCreated {
		t.Fatalf("a write once there is room again: %d %s, want 201", resp.StatusCode, b)
	}
	acked["after/room"] = true
	ts.Stop(t)

	ts = servertest.Start(t, args...)
	for key := range acked {
		if resp, _ := servertest.Send(t, "GET", ts.URL+"/kv/"+key, nil); resp.StatusCode != http.StatusOK {
			t.Errorf("acknowledged %s: %d after the restart, want 200", key, resp.StatusCode)
		}
	}
	for key := range refused {
		if resp, _ := servertest.Send(t, "GET", ts.URL+"/kv/"+key, nil); resp.StatusCode != http.StatusNotFound {
			t.Errorf("refused %s: %d after the restart, want 404", key, resp.StatusCode)
		}
	}
	t.Logf("%d writes acknowledged, %d refused", len(acked), len(refused))
}
