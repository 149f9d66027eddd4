package etcd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"kvsse/kv"
)

// The tests of the store run a real one-member etcd of their own, a child
// process on loopback (Debian's etcd-server). Without etcd on PATH they
// skip, unless KVSSE_REQUIRE_ETCD=1, as CI sets it.

// startEtcd starts a one-member etcd for t, with args added to its flags,
// waits until it is healthy and returns its client URL. It stops the
// member and removes its data at the end of the test, and shows its log
// when the test failed.
func startEtcd(t *testing.T, args ...string) string {
	t.Helper()
	path, err := exec.LookPath("etcd")
	if err != nil {
		if os.Getenv("KVSSE_REQUIRE_ETCD") == "1" {
			t.Fatalf("KVSSE_REQUIRE_ETCD=1 but etcd is not on PATH (%v): apt-get install -y etcd-server", err)
		}
		t.Skipf("etcd is not on PATH: apt-get install -y etcd-server (KVSSE_REQUIRE_ETCD=1 fails instead)")
	}
	for range 3 {
		url, log, err := runEtcd(t, path, args)
		if err == nil {
			return url
		}
		if !strings.Contains(log.String(), "address already in use") {
			t.Fatalf("%v\n%s", err, log)
		}
	}
	t.Fatal("etcd: no free ports after 3 tries")
	return ""
}

// runEtcd runs etcd on ports that were free a moment ago, and waits until
// it is healthy.
func runEtcd(t *testing.T, path string, args []string) (url string, log *lockedBuffer, err error) {
	ports, err := freePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	// tmpfs when there is one: etcd fsyncs every write.
	dir, err := os.MkdirTemp("/dev/shm", "kvsse-etcd-")
	if err != nil {
		dir = t.TempDir()
	}
	client := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	cmd := exec.Command(path, append([]string{
		"--name", "m0", "--data-dir", filepath.Join(dir, "m0"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "m0=" + peer,
		// Quiet watches hear how far etcd has come every second.
		"--experimental-watch-progress-notify-interval", "1s",
		"--logger", "zap", "--log-outputs", "stderr",
	}, args...)...)
	log = new(lockedBuffer)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	stop := func() {
		cmd.Process.Kill()
		<-exited
		os.RemoveAll(dir)
	}
	if err := waitHealthy(client, exited); err != nil {
		stop()
		return "", log, err
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			s := log.String()
			if len(s) > 8000 {
				s = "..." + s[len(s)-8000:]
			}
			t.Logf("etcd log:\n%s", s)
		}
	})
	return client, log, nil
}

// waitHealthy polls etcd's /health until it says true, for 30 s at most.
func waitHealthy(url string, exited <-chan struct{}) error {
	hc := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-exited:
			return errors.New("etcd exited")
		default:
		}
		var h struct{ Health string }
		resp, err := hc.Get(url + "/health")
		if err == nil {
			err = json.NewDecoder(resp.Body).Decode(&h)
			resp.Body.Close()
		}
		if err == nil && h.Health == "true" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd not healthy after 30 s: %q %v", h.Health, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer ln.Close() // held until all are picked: distinct
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// lockedBuffer is a bytes.Buffer for a child process's output.
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

// openStore opens a store on the etcd at url, closed at the end of the
// test. opts.Endpoints is set to url.
func openStore(t *testing.T, url string, opts Options) *Store {
	t.Helper()
	opts.Endpoints = []string{url}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// etcdRaw calls etcd at url directly, as another client would.
func etcdRaw(t *testing.T, url, path string, req, resp any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := newClient([]string{url}).call(ctx, path, req, resp); err != nil {
		t.Fatal(err)
	}
}

// etcdRevision is etcd's revision now.
func etcdRevision(t *testing.T, s *Store) int64 {
	t.Helper()
	rev, err := s.currentRevision(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

// put puts key=value through the store and returns its revision.
func put(t *testing.T, s *Store, key, value string) int64 {
	t.Helper()
	r, err := s.Put(context.Background(), key, []byte(value), kv.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return r.Revision
}

// putExpired writes key straight to etcd as kvsse would, with an expiry
// that has passed, as if etcd's lease had not deleted it yet; with lease
// (not 0) attached. It returns the key's revision.
func putExpired(t *testing.T, url string, s *Store, key string, lease int64) int64 {
	t.Helper()
	var r putResponse
	v := encodeValue([]byte("old"), "text/plain", time.Now().Add(-time.Minute).UnixNano())
	etcdRaw(t, url, "/v3/kv/put", putRequest{Key: s.etcdKey(key), Value: v, Lease: lease}, &r)
	return r.Header.Revision
}

// contents is what the store holds under prefix: value by key.
func contents(t *testing.T, s *Store, prefix string) map[string]string {
	t.Helper()
	page, err := s.List(context.Background(), prefix, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string]string)
	for _, e := range page.Items {
		m[e.Key] = string(e.Value)
	}
	return m
}
