package servertest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The tests of the etcd backend run real etcd clusters of child processes
// on loopback (Debian's etcd-server). Without etcd on PATH they skip,
// unless KVSSE_REQUIRE_ETCD=1.

// Backend is a store that black-box tests run against (ForEachBackend).
type Backend struct {
	// Start runs a server in this process on the backend, as Start
	// does. On etcd each server keeps its keys under a prefix of its own.
	Start func(t testing.TB, args ...string) *Server
	// Dense: every write takes the next revision (embedded). Otherwise
	// revisions only rise (etcd).
	Dense bool
	// TTL is the shortest time to live, in seconds, that the tests give:
	// an etcd lease is whole seconds and at least etcd's minimum.
	TTL int
}

// After reports whether rev may be the revision of the first write after
// revision prev: above it, and right after it where revisions are dense.
func (be Backend) After(prev, rev int64) bool {
	if be.Dense {
		return rev == prev+1
	}
	return rev > prev
}

// StoreRev returns the revision a test must expect as the store's (in a
// sync, a reset, a listing, /healthz) when last is the newest write it
// made, given the revision it got: last, or on etcd the one it got when
// that is above, as kvsse writes a fence key of its own to learn how far
// etcd's watch has come. Any other shows in a cmp.Diff against it.
func (be Backend) StoreRev(last, got int64) int64 {
	if !be.Dense && got > last {
		return got
	}
	return last
}

// ForEachBackend runs f as the subtests "embedded" and "etcd". The etcd
// row shares one etcd cluster with the whole test binary (SharedEtcd); it
// skips when etcd is not installed (fails with KVSSE_REQUIRE_ETCD=1). The
// shared cluster serves one test at a time (no test that runs on it may
// be parallel), so no other test moves its revision (see StoreRev).
func ForEachBackend(t *testing.T, f func(t *testing.T, be Backend)) {
	t.Run("embedded", func(t *testing.T) {
		f(t, Backend{Start: Start, Dense: true, TTL: 1})
	})
	t.Run("etcd", func(t *testing.T) {
		c := SharedEtcd(t)
		start := func(t testing.TB, args ...string) *Server {
			t.Helper()
			return Start(t, append(c.ServerArgs(EtcdPrefix()), args...)...)
		}
		f(t, Backend{Start: start, TTL: 2})
	})
}

// ServerArgs are the flags of a kvsse server on c under prefix.
func (c *Cluster) ServerArgs(prefix string) []string {
	return []string{"-backend", "etcd", "-etcd-endpoints", strings.Join(c.Endpoints(), ","), "-etcd-prefix", prefix}
}

var etcdPrefixes atomic.Int64

// EtcdPrefix returns an -etcd-prefix that no other server of this test
// binary uses.
func EtcdPrefix() string {
	return fmt.Sprintf("/kvsse-test-%d/", etcdPrefixes.Add(1))
}

// RequireEtcd returns the path of etcd, or skips the test (fails it when
// KVSSE_REQUIRE_ETCD=1).
func RequireEtcd(t testing.TB) string {
	t.Helper()
	return RequireTool(t, "etcd", "etcd-server", "KVSSE_REQUIRE_ETCD")
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

// StartEtcd starts a cluster of the given number of members for this
// test, waits until every member is healthy, and stops it and removes its
// data at the end of the test. Its members' logs are shown if the test
// fails.
func StartEtcd(t testing.TB, members int) *Cluster {
	t.Helper()
	c, err := newEtcdCluster(RequireEtcd(t), members)
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

// sharedEtcdState is the one-member cluster of SharedEtcd, started by
// the first test that needs it and stopped by Cleanup.
var sharedEtcdState struct {
	once sync.Once
	c    *Cluster
	err  error
}

// SharedEtcd returns the one-member cluster shared by the tests of this
// test binary, starting it at the first call, or skips the test as
// RequireEtcd does. Its log is shown if the test fails. Cleanup stops it.
func SharedEtcd(t testing.TB) *Cluster {
	t.Helper()
	path := RequireEtcd(t)
	s := &sharedEtcdState
	s.once.Do(func() { s.c, s.err = newEtcdCluster(path, 1) })
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

// stopSharedEtcd stops the shared cluster, if it was started.
func stopSharedEtcd() {
	if c := sharedEtcdState.c; c != nil {
		c.stop()
	}
}

// errEtcdPortTaken is a start that failed because a port picked was
// taken meanwhile: another start with other ports may succeed.
var errEtcdPortTaken = errors.New("etcd: port taken")

var etcdClusters atomic.Int64

// newEtcdCluster starts a cluster of n members and waits until every one
// is healthy. It tries other ports when one it picked was taken.
func newEtcdCluster(path string, n int) (*Cluster, error) {
	var err error
	for range 3 {
		var c *Cluster
		if c, err = tryEtcdCluster(path, n); !errors.Is(err, errEtcdPortTaken) {
			return c, err
		}
	}
	return nil, err
}

func tryEtcdCluster(path string, n int) (*Cluster, error) {
	ports, err := freePorts(2 * n)
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
	token := fmt.Sprintf("kvsse-test-%d-%d-%d", os.Getpid(), etcdClusters.Add(1), time.Now().UnixNano())
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
			return nil, fmt.Errorf("%w: %v", errEtcdPortTaken, err)
		}
		return nil, fmt.Errorf("%v\n%s", err, logs)
	}
	return c, nil
}

// freePorts returns n distinct loopback ports that were free a moment ago.
// FreeAddr returns a loopback address whose port was free a moment ago,
// for a server that must listen on an address known before it starts (a
// restart on the same address, a process whose banner comes late).
func FreeAddr(t testing.TB) string {
	t.Helper()
	ports, err := freePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
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

var etcdHealthClient = &http.Client{Timeout: 2 * time.Second}

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
			resp, err := etcdHealthClient.Get(m.clientURL + "/health")
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
			resp, err := etcdHealthClient.Post(m.clientURL+"/v3/maintenance/status", "application/json", strings.NewReader("{}"))
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
