package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// The etcd backend's tests run real etcd clusters of child processes on
// loopback (Debian's etcd-server). Without etcd on PATH they skip, unless
// KVSSE_REQUIRE_ETCD=1. The black-box tests of the KV API and the event
// stream run on both backends through forEachBackend; the tests below run
// several kvsse binaries on one cluster and kill members and nodes.

// testBackend is a store the black-box tests run against.
type testBackend struct {
	// start runs a server in this process on the backend, as startServer
	// does. On etcd each server keeps its keys under a prefix of its own.
	start func(t testing.TB, args ...string) *testServer
	// dense: every write takes the next revision (embedded). Otherwise
	// revisions only rise (etcd).
	dense bool
	// ttl is the shortest time to live, in seconds, that the tests give:
	// an etcd lease is whole seconds and at least etcd's minimum.
	ttl int
}

// after reports whether rev may be the revision of the first write after
// revision prev: above it, and right after it where revisions are dense.
func (be testBackend) after(prev, rev int64) bool {
	if be.dense {
		return rev == prev+1
	}
	return rev > prev
}

// storeRev returns the revision a test must expect as the store's (in a
// sync, a reset, a listing, /healthz) when last is the newest write it
// made, given the revision it got: last, or on etcd the one it got when
// that is above, as kvsse writes a fence key of its own to learn how far
// etcd's watch has come. Any other shows in a cmp.Diff against it.
func (be testBackend) storeRev(last, got int64) int64 {
	if !be.dense && got > last {
		return got
	}
	return last
}

// forEachBackend runs f as the subtests "embedded" and "etcd". The etcd
// row shares one etcd cluster with the whole test binary; it skips when
// etcd is not installed (fails with KVSSE_REQUIRE_ETCD=1). The shared
// cluster serves one test at a time (none of these is parallel), so no
// other test moves its revision (see storeRev).
func forEachBackend(t *testing.T, f func(t *testing.T, be testBackend)) {
	t.Run("embedded", func(t *testing.T) {
		f(t, testBackend{start: startServer, dense: true, ttl: 1})
	})
	t.Run("etcd", func(t *testing.T) {
		c := sharedEtcd(t)
		start := func(t testing.TB, args ...string) *testServer {
			t.Helper()
			return startServer(t, append(c.serverArgs(etcdTestPrefix()), args...)...)
		}
		f(t, testBackend{start: start, ttl: 2})
	})
}

// serverArgs are the flags of a kvsse server on c under prefix.
func (c *etcdCluster) serverArgs(prefix string) []string {
	return []string{"-backend", "etcd", "-etcd-endpoints", strings.Join(c.Endpoints(), ","), "-etcd-prefix", prefix}
}

var etcdPrefixes atomic.Int64

// etcdTestPrefix is an -etcd-prefix no other server of this test binary
// uses.
func etcdTestPrefix() string {
	return fmt.Sprintf("/kvsse-test-%d/", etcdPrefixes.Add(1))
}

// requireEtcd returns the path of etcd, or skips the test (fails it when
// KVSSE_REQUIRE_ETCD=1).
func requireEtcd(t testing.TB) string {
	t.Helper()
	return requireTool(t, "etcd", "etcd-server", "KVSSE_REQUIRE_ETCD")
}

// etcdCluster is an etcd cluster of child processes on loopback, each
// member with a data directory of its own. Only the test goroutine calls
// its methods.
type etcdCluster struct {
	path    string // of the etcd binary
	root    string // holds the members' data directories
	members []*etcdMember
}

// etcdMember is one member of an etcdCluster.
type etcdMember struct {
	name      string
	clientURL string
	args      []string
	log       *lockedBuffer // output of every run
	cmd       *exec.Cmd     // nil while it is down
	exited    chan struct{} // closed when cmd is reaped
}

// startEtcd starts a cluster of the given number of members for this
// test, waits until every member is healthy, and stops it and removes its
// data at the end of the test. Its members' logs are shown if the test
// fails.
func startEtcd(t testing.TB, members int) *etcdCluster {
	t.Helper()
	c, err := newEtcdCluster(requireEtcd(t), members)
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

// sharedEtcdState is the one-member cluster of forEachBackend and of the
// multi-node tests that kill no member, started by the first test that
// needs it and stopped by TestMain.
var sharedEtcdState struct {
	once sync.Once
	c    *etcdCluster
	err  error
}

// sharedEtcd returns the cluster shared by the tests, starting it at the
// first call. Its log is shown if the test fails.
func sharedEtcd(t testing.TB) *etcdCluster {
	t.Helper()
	path := requireEtcd(t)
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
func newEtcdCluster(path string, n int) (*etcdCluster, error) {
	var err error
	for range 3 {
		var c *etcdCluster
		if c, err = tryEtcdCluster(path, n); !errors.Is(err, errEtcdPortTaken) {
			return c, err
		}
	}
	return nil, err
}

func tryEtcdCluster(path string, n int) (*etcdCluster, error) {
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
	c := &etcdCluster{path: path, root: root}
	var peers []string
	for i := range n {
		peers = append(peers, fmt.Sprintf("m%d=http://127.0.0.1:%d", i, ports[2*i+1]))
	}
	token := fmt.Sprintf("kvsse-test-%d-%d-%d", os.Getpid(), etcdClusters.Add(1), time.Now().UnixNano())
	for i := range n {
		client := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i])
		peer := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1])
		m := &etcdMember{name: fmt.Sprintf("m%d", i), clientURL: client, log: new(lockedBuffer)}
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

func (m *etcdMember) start(path string) error {
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
func (c *etcdCluster) Endpoints() []string {
	var urls []string
	for _, m := range c.members {
		urls = append(urls, m.clientURL)
	}
	return urls
}

// Kill ends member i with SIGKILL and reaps it. It does nothing to a
// member that is down.
func (c *etcdCluster) Kill(i int) {
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
func (c *etcdCluster) Restart(t testing.TB, i int) {
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
func (c *etcdCluster) WaitHealthy(t testing.TB) {
	t.Helper()
	if err := c.waitHealthy(30 * time.Second); err != nil {
		t.Fatal(err)
	}
}

var etcdHealthClient = &http.Client{Timeout: 2 * time.Second}

func (c *etcdCluster) waitHealthy(wait time.Duration) error {
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
func (c *etcdCluster) Leader(t testing.TB) int {
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
func (c *etcdCluster) logs() string {
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
func (c *etcdCluster) stop() {
	for i := range c.members {
		c.Kill(i)
	}
	os.RemoveAll(c.root)
}

// startEtcdNodes runs n kvsse binaries on c, all under one new prefix.
func startEtcdNodes(t *testing.T, c *etcdCluster, n int) []*proc {
	t.Helper()
	args := append(c.serverArgs(etcdTestPrefix()), "-data", t.TempDir())
	var nodes []*proc
	for range n {
		nodes = append(nodes, startProc(t, args...))
	}
	return nodes
}

// etcdTestHTTP is the client of requests that a node whose etcd is
// failing might leave hanging: they fail after a while instead.
var etcdTestHTTP = &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}

// etcdTestDo sends one request and returns the status, the revision of
// its Kvsse-Revision header (0 when there is none) and the body; err is
// a transport error or a timeout. It does not touch a testing.T: writer
// goroutines call it.
func etcdTestDo(method, u string, body []byte) (status int, rev int64, b []byte, err error) {
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		return 0, 0, nil, err
	}
	resp, err := etcdTestHTTP.Do(req)
	if err != nil {
		return 0, 0, nil, err
	}
	defer resp.Body.Close()
	b, err = io.ReadAll(resp.Body)
	rev, _ = strconv.ParseInt(resp.Header.Get("Kvsse-Revision"), 10, 64)
	return resp.StatusCode, rev, b, err
}

// waitHealthz polls a node's /healthz until it answers status and
// returns that answer's header and body.
func waitHealthz(t *testing.T, base string, status int) (http.Header, []byte) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, _ := http.NewRequest(http.MethodGet, base+"/healthz", nil)
		resp, err := etcdTestHTTP.Do(req)
		var b []byte
		if err == nil {
			b, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode == status {
				return resp.Header, b
			}
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("%s: %s", resp.Status, b)
			}
			t.Fatalf("%s/healthz: still %v after 30s, want %d", base, err, status)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSSESyncAfterWrite: a stream opened after a write was acknowledged
// turns live at that write's revision or later (so the write is not sent
// to it as a live event).
func TestSSESyncAfterWrite(t *testing.T) { forEachBackend(t, testSSESyncAfterWrite) }

func testSSESyncAfterWrite(t *testing.T, be testBackend) {
	ts := be.start(t)
	for i := range 20 {
		rev := ssePut(t, ts.URL, "y/k", strconv.Itoa(i))
		s := sseOpen(t, ts.URL+"/watch/y/**", nil)
		if got := s.sync(t); got != be.storeRev(rev, got) {
			t.Fatalf("round %d: a stream opened after the write at %d turns live at %d", i, rev, got)
		}
		s.close()
	}
}

// TestEtcdResumeOnOtherNode: two kvsse nodes on one cluster and prefix.
// A write through either is visible at once through the other; a stream
// on A shows the writes made through B in order; after A is killed, the
// client resumes on B with the last id it saw and gets every change,
// those made while A was dead included, without gap or duplicate.
func TestEtcdResumeOnOtherNode(t *testing.T) {
	nodes := startEtcdNodes(t, sharedEtcd(t), 2)
	a, b := nodes[0], nodes[1]

	for i := range 4 {
		from, to := nodes[i%2], nodes[(i+1)%2]
		v := fmt.Sprintf("v%d", i)
		rev := ssePut(t, from.URL, "seen/k", v)
		st, h, body := call(t, "GET", to.URL+"/kv/seen/k", nil)
		if st != 200 || string(body) != v || h.Get("ETag") != fmt.Sprintf(`"%d"`, rev) {
			t.Fatalf("PUT %q through %s at %d, then GET through %s: %d %v %q", v, from.URL, rev, to.URL, st, h, body)
		}
		s := sseOpen(t, to.URL+"/watch/seen/**", nil)
		if got := s.sync(t); got < rev {
			t.Errorf("PUT through %s at %d, then a stream through %s turns live at %d", from.URL, rev, to.URL, got)
		}
		s.close()
	}

	s1 := sseOpen(t, a.URL+"/watch/m/**", nil)
	s1.sync(t)
	halfway := make(chan struct{})
	done := make(chan sseResult, 1)
	go func() {
		ops, err := sseWriters(b.URL, "m/", 4, 100, "v", halfway, nil)
		done <- sseResult{ops, err}
	}()
	var got []sseOp
	add := func(e sseEvent) {
		t.Helper()
		if e.ID != sseID(e.Data.Revision) {
			t.Fatalf("event %+v: id is not its revision", e)
		}
		got = append(got, sseOp{e.Data.Revision, e.Event, e.Data.Key})
	}
	for _, e := range s1.events(t, 100) {
		add(e)
	}
	// Killed while the first half of the writes may still go on; the
	// second half is made while A is dead.
	a.kill()
	msgs, err := s1.end(t)
	for _, m := range msgs {
		add(sseEventOf(t, m))
	}
	t.Logf("A sent %d events before it died (%v)", len(got), err)
	close(halfway)

	lastID := sseID(got[len(got)-1].Rev)
	s2 := sseOpen(t, b.URL+"/watch/m/**", http.Header{"Last-Event-ID": {lastID}})
	acked, resumed := sseResumed(t, s2, done, 4*sseWait)
	if diff := cmp.Diff(acked, append(got, resumed...)); diff != "" {
		t.Errorf("stream on A, then on B from A's last id (-acknowledged +delivered):\n%s", diff)
	}
}

// TestEtcdCASTwoNodes runs 100 read-modify-write increments of one
// counter with If-Match, through both nodes in turn from 10 goroutines,
// retrying on 412: the counter ends at exactly 100 on both.
func TestEtcdCASTwoNodes(t *testing.T) {
	nodes := startEtcdNodes(t, sharedEtcd(t), 2)
	if st, _, b := call(t, "PUT", nodes[0].URL+"/kv/counter", []byte("0")); st != 201 {
		t.Fatalf("PUT counter: %d %s", st, b)
	}
	const workers, each = 10, 10
	errc := make(chan error, workers*each)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				errc <- increment(nodes[(w+i)%2].URL + "/kv/counter")
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Fatal(err)
		}
	}
	var etags []string
	for _, n := range nodes {
		st, h, b := call(t, "GET", n.URL+"/kv/counter", nil)
		if st != 200 || string(b) != "100" {
			t.Errorf("counter through %s: %d %q, want 100", n.URL, st, b)
		}
		etags = append(etags, h.Get("ETag"))
	}
	if etags[0] != etags[1] {
		t.Errorf("ETags of the counter through each node: %q", etags)
	}
}

// etcdTestOp is an acknowledged put.
type etcdTestOp struct {
	Rev        int64
	Key, Value string
}

// etcdWrites is what a writer of TestEtcdMemberKilled reports.
type etcdWrites struct {
	acked       []etcdTestOp
	unavailable int // answered 503
	err         error
}

// etcdWriter puts key f/w/(i%5) = "w/i" for i = 0, 1... through nodes in
// turn until stop is closed. A 503 is a write that did not happen as far
// as the client knows; anything else but success ends it with an error.
func etcdWriter(nodes []*proc, w int, stop <-chan struct{}, acked *atomic.Int64) etcdWrites {
	var res etcdWrites
	for i := 0; ; i++ {
		select {
		case <-stop:
			return res
		default:
		}
		key, value := fmt.Sprintf("f/%d/%d", w, i%5), fmt.Sprintf("%d/%d", w, i)
		u := sseKeyURL(nodes[(w+i)%len(nodes)].URL, key)
		st, rev, b, err := etcdTestDo(http.MethodPut, u, []byte(value))
		var e apiError
		switch {
		case err != nil:
			res.err = fmt.Errorf("PUT %s: %v", u, err)
			return res
		case st/100 == 2 && rev > 0:
			res.acked = append(res.acked, etcdTestOp{rev, key, value})
			acked.Add(1)
		case st == http.StatusServiceUnavailable && json.Unmarshal(b, &e) == nil && e.Code != "":
			res.unavailable++
			time.Sleep(20 * time.Millisecond) // back off, not a wait for a condition
		default:
			res.err = fmt.Errorf("PUT %s: %d %s (Kvsse-Revision %d)", u, st, b, rev)
			return res
		}
	}
}

// etcdWriteIndex parses a value "w/i" that key f/w/k may hold, returning
// i, or -1 when no writer puts that value in that key.
func etcdWriteIndex(key, value string) int {
	var w, k, i int
	if _, err := fmt.Sscanf(key, "f/%d/%d", &w, &k); err != nil {
		return -1
	}
	if _, err := fmt.Sscanf(value, "%d/%d", &w, &i); err != nil || fmt.Sprintf("f/%d/%d", w, i%5) != key || fmt.Sprintf("%d/%d", w, i) != value {
		return -1
	}
	return i
}

// TestEtcdMemberKilled: on a cluster of three, the leader is killed with
// SIGKILL while four writers put keys through two kvsse nodes. Writes may
// fail with 503 for a while, and then go on. Afterwards every
// acknowledged write is there on both nodes, and a stream opened before
// the kill has gone on: it shows every acknowledged write at its
// revision, in order, each write once.
func TestEtcdMemberKilled(t *testing.T) {
	c := startEtcd(t, 3)
	nodes := startEtcdNodes(t, c, 2)
	s := sseOpen(t, nodes[0].URL+"/watch/f/**", nil)
	syncRev := s.sync(t)

	const writers = 4
	stop := make(chan struct{})
	results := make(chan etcdWrites, writers)
	var acked atomic.Int64
	for w := range writers {
		go func() { results <- etcdWriter(nodes, w, stop, &acked) }()
	}
	var stopOnce sync.Once
	var all []etcdTestOp
	stopWriters := func() (errs []error) {
		stopOnce.Do(func() {
			close(stop)
			unavailable := 0
			for range writers {
				r := <-results
				all = append(all, r.acked...)
				unavailable += r.unavailable
				if r.err != nil {
					errs = append(errs, r.err)
				}
			}
			t.Logf("%d writes acknowledged, %d answered 503", len(all), unavailable)
		})
		return errs
	}
	t.Cleanup(func() { stopWriters() })
	waitAcked := func(n int64, what string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for acked.Load() < n {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d writes acknowledged after 30s, want %d; writers: %v", what, acked.Load(), n, stopWriters())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitAcked(40, "before the kill")
	leader := c.Leader(t)
	killedAt := acked.Load()
	start := time.Now()
	c.Kill(leader)
	waitAcked(killedAt+60, fmt.Sprintf("after killing etcd m%d, the leader", leader))
	t.Logf("killed the leader m%d after %d writes; 60 more in %v", leader, killedAt, time.Since(start).Round(time.Millisecond))
	if errs := stopWriters(); len(errs) > 0 {
		t.Fatalf("writers: %v", errs)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Rev < all[j].Rev })

	// The newest value of every key, through each node.
	last := map[string]etcdTestOp{}
	for _, op := range all {
		last[op.Key] = op
	}
	for key, op := range last {
		for _, n := range nodes {
			st, h, b := call(t, "GET", sseKeyURL(n.URL, key), nil)
			rev, _ := strconv.ParseInt(strings.Trim(h.Get("ETag"), `"`), 10, 64)
			if st != 200 || etcdWriteIndex(key, string(b)) < etcdWriteIndex(key, op.Value) || rev < op.Rev {
				t.Errorf("GET %s through %s: %d %q ETag %s, want %q at %d or a later put of that key", key, n.URL, st, b, h.Get("ETag"), op.Value, op.Rev)
			}
		}
	}

	// The stream opened before the kill.
	final := all[len(all)-1].Rev
	delivered := map[int64]etcdTestOp{}
	seen := map[string]int64{}
	prev := syncRev
	for _, e := range s.until(t, func(e sseEvent) bool { return e.Data.Revision >= final }) {
		rev := e.Data.Revision
		if e.Event != "put" || e.ID != sseID(rev) || rev <= prev || e.Data.Value == nil {
			t.Fatalf("after revision %d the stream sent %+v, want a put whose id is its revision, above", prev, e)
		}
		prev = rev
		v := *e.Data.Value
		if etcdWriteIndex(e.Data.Key, v) < 0 {
			t.Errorf("stream sent a put nobody made: %+v", e)
		}
		if r, dup := seen[v]; dup {
			t.Errorf("stream sent the put of %q twice, at %d and %d", v, r, rev)
		}
		seen[v] = rev
		delivered[rev] = etcdTestOp{rev, e.Data.Key, v}
	}
	missing := 0
	for _, op := range all {
		if d, ok := delivered[op.Rev]; d != op {
			missing++
			if missing <= 10 {
				t.Errorf("acknowledged %+v; the stream sent %+v (%v)", op, d, ok)
			}
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d acknowledged writes not in the stream as acknowledged", missing, len(all))
	}
}

// TestEtcdOutage: when every etcd member is down, /healthz of a node says
// 503 with a JSON error and a write gets 503. When the members are back
// on their data, /healthz says 200 again, and a stream opened before the
// outage shows the writes made right after it, in order, with no gap.
func TestEtcdOutage(t *testing.T) {
	c := startEtcd(t, 3)
	nodes := startEtcdNodes(t, c, 2)
	a, b := nodes[0], nodes[1]
	s := sseOpen(t, a.URL+"/watch/o/**", nil)
	s.sync(t)
	before := ssePut(t, b.URL, "o/before", "1")
	if e := sseEventOf(t, s.next(t)); e.ID != sseID(before) || e.Data.Key != "o/before" {
		t.Fatalf("got %+v, want the put of o/before at %d", e, before)
	}

	for i := range c.members {
		c.Kill(i)
	}
	start := time.Now()
	for _, n := range nodes {
		h, body := waitHealthz(t, n.URL, http.StatusServiceUnavailable)
		if e := decodeError(t, body); !strings.HasPrefix(h.Get("Content-Type"), "application/json") {
			t.Errorf("/healthz with etcd down: Content-Type %q, %+v", h.Get("Content-Type"), e)
		}
	}
	t.Logf("/healthz said 503 %v after etcd went down", time.Since(start).Round(time.Millisecond))
	st, rev, body, err := etcdTestDo(http.MethodPut, b.URL+"/kv/o/down", []byte("x"))
	if err != nil || st != http.StatusServiceUnavailable || rev != 0 {
		t.Errorf("PUT with etcd down: %d %s, Kvsse-Revision %d, %v; want 503", st, body, rev, err)
	} else {
		decodeError(t, body)
	}

	for i := range c.members {
		c.Restart(t, i)
	}
	c.WaitHealthy(t)
	start = time.Now()
	waitHealthz(t, b.URL, http.StatusOK)
	t.Logf("/healthz said 200 %v after etcd was healthy again", time.Since(start).Round(time.Millisecond))
	// Right away, while A may still be reconnecting.
	var want []sseOp
	for i := range 20 {
		k := fmt.Sprintf("o/after/%d", i%4)
		want = append(want, sseOp{ssePut(t, b.URL, k, strconv.Itoa(i)), "put", k})
	}
	if want[0].Rev <= before {
		t.Errorf("first write after the outage at %d, not after %d", want[0].Rev, before)
	}
	var got []sseOp
	for _, e := range s.until(t, func(e sseEvent) bool { return e.Data.Revision >= want[len(want)-1].Rev }) {
		if e.ID != sseID(e.Data.Revision) {
			t.Errorf("event %+v: id is not its revision", e)
		}
		got = append(got, sseOp{e.Data.Revision, e.Event, e.Data.Key})
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("stream across the outage (-acknowledged +delivered):\n%s", diff)
	}
	waitHealthz(t, a.URL, http.StatusOK)
	if st, _, got := call(t, "GET", a.URL+"/kv/o/down", nil); st != 404 {
		t.Errorf("the write refused while etcd was down: GET %d %q, want 404", st, got)
	}
}

// TestEtcdResumeFromEtcdHistory: a node keeps no changes from before it
// started, so a client that resumes on a fresh node is served from
// etcd's history; once etcd has compacted that history, it gets a reset
// and a snapshot instead.
func TestEtcdResumeFromEtcdHistory(t *testing.T) {
	c := startEtcd(t, 1) // of its own: it compacts etcd's history
	args := c.serverArgs(etcdTestPrefix())
	first := startServer(t, args...)
	var revs []int64
	for i := range 10 {
		if i%3 == 2 { // delete what the write before put
			revs = append(revs, sseDel(t, first.URL, fmt.Sprintf("h/k%d", (i-1)%4)))
		} else {
			revs = append(revs, ssePut(t, first.URL, fmt.Sprintf("h/k%d", i%4), strconv.Itoa(i)))
		}
	}
	first.stop(t)

	// Written while no node runs: only etcd has seen them.
	revs = append(revs, ssePut(t, startServer(t, args...).URL, "h/k9", "late"))
	fresh := startServer(t, args...)
	hdr := http.Header{"Last-Event-ID": {sseID(revs[2])}}
	s := sseOpen(t, fresh.URL+"/watch/h/**", hdr)
	got := s.until(t, func(e sseEvent) bool { return e.Event == "sync" })
	var ids []int64
	for _, e := range got[:len(got)-1] {
		ids = append(ids, e.Data.Revision)
		if e.ID != sseID(e.Data.Revision) {
			t.Errorf("event %+v: id is not its revision", e)
		}
	}
	if diff := cmp.Diff(revs[3:], ids); diff != "" {
		t.Errorf("resume from %d on a fresh node: revisions (-want +got):\n%s", revs[2], diff)
	}
	s.close()

	// Compacting etcd past the asked-for revision: reset, then the keys.
	var compacted struct{}
	body := fmt.Appendf(nil, `{"revision":"%d"}`, revs[6])
	if err := etcdPost(c.Endpoints()[0], "/v3/kv/compaction", body, &compacted); err != nil {
		t.Fatal(err)
	}
	fresh = startServer(t, args...)
	s = sseOpen(t, fresh.URL+"/watch/h/**", http.Header{"Last-Event-ID": {sseID(revs[2])}})
	got = s.until(t, func(e sseEvent) bool { return e.Event == "sync" })
	if got[0].Event != "reset" || got[0].Data.Reason != "history" {
		t.Fatalf("resume from before etcd's compaction: first event %+v, want a history reset", got[0])
	}
	keys := map[string]string{}
	for _, e := range got[1 : len(got)-1] {
		if e.Event != "put" || e.ID != "" {
			t.Fatalf("after the reset: %+v, want snapshot puts without id", e)
		}
		keys[e.Data.Key] = *e.Data.Value
	}
	if want := sseList(t, fresh.URL, "h/"); len(want) != len(keys) {
		t.Errorf("snapshot after reset holds %v, the listing %v", keys, want)
	}
	s.close()
}

// etcdPost calls etcd's gateway directly.
func etcdPost(endpoint, path string, body []byte, into any) error {
	resp, err := etcdTestHTTP.Post(endpoint+path, "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("etcd %s: %s: %s", path, resp.Status, b)
	}
	return json.Unmarshal(b, into)
}

// TestEtcdProgress: writes outside the prefix move etcd's revision but
// make no event; etcd's progress notifications tell the node how far its
// watch has come all the same, so its revision (heartbeats, /healthz)
// follows etcd's without a write of its own.
func TestEtcdProgress(t *testing.T) {
	c := startEtcd(t, 1)
	node := startServer(t, c.serverArgs(etcdTestPrefix())...)
	var put struct {
		Header struct {
			Revision int64 `json:"revision,string"`
		} `json:"header"`
	}
	// The key "/elsewhere" is outside every kvsse prefix.
	if err := etcdPost(c.Endpoints()[0], "/v3/kv/put", []byte(`{"key":"L2Vsc2V3aGVyZQ==","value":"eA=="}`), &put); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, b := send(t, http.MethodGet, node.URL+"/healthz", nil)
		var h struct{ Revision int64 }
		if err := json.Unmarshal(b, &h); err != nil {
			t.Fatalf("/healthz: %v: %s", err, b)
		}
		if h.Revision >= put.Header.Revision {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node at revision %d 15 s after etcd reached %d", h.Revision, put.Header.Revision)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
