// Package etcdtest runs etcd clusters of child processes on loopback for
// tests (Debian's etcd-server), as net/http/httptest runs servers. It
// sits below sse so that the etcd store's own tests (kv/etcd) and the
// server's (through sse/server/servertest, which builds on it) start
// their clusters with the same code; it imports nothing of kvsse.
//
// Without etcd on PATH a test that asks for a cluster skips, unless
// KVSSE_REQUIRE_ETCD=1 (as CI sets it): then it fails.
package etcdtest

import (
	"bytes"
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
	"sync/atomic"
	"testing"
	"time"
)

// Require returns the path of etcd, or skips the test (fails it when
// KVSSE_REQUIRE_ETCD=1).
func Require(t testing.TB) string {
	t.Helper()
	return RequireTool(t, "etcd", "etcd-server", "KVSSE_REQUIRE_ETCD")
}

// RequireTool returns the path of the program name, or skips the test
// when it is not on PATH, saying which Debian package pkg has it; with
// the environment variable env set to 1 (as CI does) it fails the test
// instead.
func RequireTool(t testing.TB, name, pkg, env string) string {
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

// Cluster is an etcd cluster of child processes on loopback, each member
// with a data directory of its own. Only the test goroutine calls its
// methods.
type Cluster struct {
	path    string // of the etcd binary
	root    string // holds the members' data directories
	members []*member
}

// member is one member of a Cluster.
type member struct {
	name      string
	clientURL string
	args      []string
	log       *LockedBuffer // output of every run
	cmd       *exec.Cmd     // nil while it is down
	exited    chan struct{} // closed when cmd is reaped
}

// Start starts a cluster of the given number of members for this test,
// with args added to every member's flags, waits until every member is
// healthy, and stops it and removes its data at the end of the test. Its
// members' logs are shown if the test fails.
func Start(t testing.TB, members int, args ...string) *Cluster {
	t.Helper()
	c, err := newCluster(Require(t), members, args)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("etcd logs:\n%s", c.logs())
		}
		c.stop()
	})
	return c
}

// shared is the one-member cluster of Shared, started by the first test
// that needs it and stopped by StopShared.
var shared struct {
	once sync.Once
	c    *Cluster
	err  error
}

// Shared returns the one-member cluster shared by the tests of this test
// binary, starting it at the first call, or skips the test as Require
// does. Its log is shown if the test fails. A test binary whose tests
// call it calls StopShared when they are done (from its TestMain).
func Shared(t testing.TB) *Cluster {
	t.Helper()
	path := Require(t)
	s := &shared
	s.once.Do(func() { s.c, s.err = newCluster(path, 1, nil) })
	if s.err != nil {
		t.Fatal(s.err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log of the shared etcd cluster:\n%s", s.c.logs())
		}
	})
	return s.c
}

// StopShared stops the shared cluster, if it was started.
func StopShared() {
	if c := shared.c; c != nil {
		c.stop()
	}
}

// errPortTaken is a start that failed because a port picked was taken
// meanwhile: another start with other ports may succeed.
var errPortTaken = errors.New("etcd: port taken")

var clusters atomic.Int64

// newCluster starts a cluster of n members, with args added to their
// flags, and waits until every one is healthy. It tries other ports when
// one it picked was taken.
func newCluster(path string, n int, args []string) (*Cluster, error) {
	var err error
	for range 3 {
		var c *Cluster
		if c, err = tryCluster(path, n, args); !errors.Is(err, errPortTaken) {
			return c, err
		}
	}
	return nil, err
}

func tryCluster(path string, n int, args []string) (*Cluster, error) {
	ports, err := FreePorts(2 * n)
	if err != nil {
		return nil, err
	}
	// tmpfs when there is one: etcd fsyncs every write. A member killed
	// with SIGKILL loses nothing either way.
	root, err := os.MkdirTemp("/dev/shm", "kvsse-etcd-")
	if err != nil {
		if root, err = os.MkdirTemp("", "kvsse-etcd-"); err != nil {
			return nil, err
		}
	}
	c := &Cluster{path: path, root: root}
	var peers []string
	for i := range n {
		peers = append(peers, fmt.Sprintf("m%d=http://127.0.0.1:%d", i, ports[2*i+1]))
	}
	token := fmt.Sprintf("kvsse-test-%d-%d-%d", os.Getpid(), clusters.Add(1), time.Now().UnixNano())
	for i := range n {
		client := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i])
		peer := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1])
		m := &member{name: fmt.Sprintf("m%d", i), clientURL: client, log: new(LockedBuffer)}
		m.args = []string{
			"--name", m.name,
			"--data-dir", filepath.Join(root, m.name),
			"--listen-client-urls", client, "--advertise-client-urls", client,
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", strings.Join(peers, ","),
			"--initial-cluster-state", "new",
			"--initial-cluster-token", token,
			// A lost leader is replaced within about a second.
			"--heartbeat-interval", "50", "--election-timeout", "500",
			// Quiet watches hear how far etcd has come every second
			// (the default is ten minutes).
			"--experimental-watch-progress-notify-interval", "1s",
			"--logger", "zap", "--log-outputs", "stderr",
		}
		m.args = append(m.args, args...)
		c.members = append(c.members, m)
	}
	for _, m := range c.members {
		if err := m.start(path); err != nil {
			c.stop()
			return nil, err
		}
	}
	if err := c.waitHealthy(30 * time.Second); err != nil {
		logs := c.logs()
		c.stop()
		if strings.Contains(logs, "address already in use") {
			return nil, fmt.Errorf("%w: %v", errPortTaken, err)
		}
		return nil, fmt.Errorf("%v\n%s", err, logs)
	}
	return c, nil
}

// FreePorts returns n distinct loopback ports that were free a moment ago.
func FreePorts(n int) ([]int, error) {
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

func (m *member) start(path string) error {
	cmd := exec.Command(path, m.args...)
	cmd.Stdout, cmd.Stderr = m.log, m.log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("etcd %s: %v", m.name, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	m.cmd, m.exited = cmd, exited
	return nil
}

// Endpoints are the client URLs of the members.
func (c *Cluster) Endpoints() []string {
	var urls []string
	for _, m := range c.members {
		urls = append(urls, m.clientURL)
	}
	return urls
}

// Kill ends member i with SIGKILL and reaps it. It does nothing to a
// member that is down.
func (c *Cluster) Kill(i int) {
	m := c.members[i]
	if m.cmd == nil {
		return
	}
	m.cmd.Process.Kill()
	<-m.exited
	m.cmd = nil
	fmt.Fprintf(m.log, "---- %s killed by the test ----\n", m.name)
}

// Restart starts member i again on its data directory and ports; it does
// not wait for it (see WaitHealthy).
func (c *Cluster) Restart(t testing.TB, i int) {
	t.Helper()
	m := c.members[i]
	if m.cmd != nil {
		t.Fatalf("etcd %s is running", m.name)
	}
	fmt.Fprintf(m.log, "---- %s restarted by the test ----\n", m.name)
	if err := m.start(c.path); err != nil {
		t.Fatal(err)
	}
}

// WaitHealthy waits until every member answers /health with true.
func (c *Cluster) WaitHealthy(t testing.TB) {
	t.Helper()
	if err := c.waitHealthy(30 * time.Second); err != nil {
		t.Fatal(err)
	}
}

var healthClient = &http.Client{Timeout: 2 * time.Second}

func (c *Cluster) waitHealthy(wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		var sick []string
		for _, m := range c.members {
			if m.cmd == nil {
				return fmt.Errorf("etcd %s is down", m.name)
			}
			select {
			case <-m.exited:
				return fmt.Errorf("etcd %s exited", m.name)
			default:
			}
			var h struct{ Health string }
			resp, err := healthClient.Get(m.clientURL + "/health")
			if err == nil {
				err = json.NewDecoder(resp.Body).Decode(&h)
				resp.Body.Close()
			}
			if err != nil || h.Health != "true" {
				sick = append(sick, fmt.Sprintf("%s: %q %v", m.name, h.Health, err))
			}
		}
		if len(sick) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd not healthy after %v: %s", wait, strings.Join(sick, "; "))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Leader returns the index of the member that leads the cluster.
func (c *Cluster) Leader(t testing.TB) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for i, m := range c.members {
			if m.cmd == nil {
				continue
			}
			var st struct {
				Header struct {
					MemberID string `json:"member_id"`
				} `json:"header"`
				Leader string `json:"leader"`
			}
			resp, err := healthClient.Post(m.clientURL+"/v3/maintenance/status", "application/json", strings.NewReader("{}"))
			if err != nil {
				continue
			}
			err = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if err == nil && st.Leader != "" && st.Leader == st.Header.MemberID {
				return i
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no etcd member says it leads")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logs is the end of every member's log.
func (c *Cluster) logs() string {
	var b strings.Builder
	for _, m := range c.members {
		s := m.log.String()
		if len(s) > 6000 {
			s = "..." + s[len(s)-6000:]
		}
		fmt.Fprintf(&b, "---- etcd %s (%s) ----\n%s\n", m.name, m.clientURL, s)
	}
	return b.String()
}

// stop kills every member and removes the data directories.
func (c *Cluster) stop() {
	for i := range c.members {
		c.Kill(i)
	}
	os.RemoveAll(c.root)
}

// LockedBuffer is a bytes.Buffer safe for concurrent writers and readers,
// for a server's or a child's output. Its zero value is empty and ready.
type LockedBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns what was written so far.
func (l *LockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
