package server_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"kvsse/sse/server/servertest"
)

// The tests of the etcd backend below run several kvsse binaries on one
// etcd cluster and kill members and nodes; the black-box tests of the KV
// API and the event stream run on both backends through
// servertest.ForEachBackend.

// startEtcdNodes runs n kvsse binaries on c, all under one new prefix.
func startEtcdNodes(t *testing.T, c *servertest.Cluster, n int) []*servertest.Proc {
	t.Helper()
	args := append(c.ServerArgs(servertest.EtcdPrefix()), "-data", t.TempDir())
	var nodes []*servertest.Proc
	for range n {
		nodes = append(nodes, servertest.StartProc(t, args...))
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
func TestSSESyncAfterWrite(t *testing.T) { servertest.ForEachBackend(t, testSSESyncAfterWrite) }

func testSSESyncAfterWrite(t *testing.T, be servertest.Backend) {
	ts := be.Start(t)
	for i := range 20 {
		rev := servertest.Put(t, ts.URL, "y/k", strconv.Itoa(i))
		s := servertest.Open(t, ts.URL+"/watch/y/**", nil)
		if got := s.Sync(t); got != be.StoreRev(rev, got) {
			t.Fatalf("round %d: a stream opened after the write at %d turns live at %d", i, rev, got)
		}
		s.Close()
	}
}

// TestEtcdResumeOnOtherNode: two kvsse nodes on one cluster and prefix.
// A write through either is visible at once through the other; a stream
// on A shows the writes made through B in order; after A is killed, the
// client resumes on B with the last id it saw and gets every change,
// those made while A was dead included, without gap or duplicate.
func TestEtcdResumeOnOtherNode(t *testing.T) {
	nodes := startEtcdNodes(t, servertest.SharedEtcd(t), 2)
	a, b := nodes[0], nodes[1]

	for i := range 4 {
		from, to := nodes[i%2], nodes[(i+1)%2]
		v := fmt.Sprintf("v%d", i)
		rev := servertest.Put(t, from.URL, "seen/k", v)
		st, h, body := servertest.Call(t, "GET", to.URL+"/kv/seen/k", nil)
		if st != 200 || string(body) != v || h.Get("ETag") != fmt.Sprintf(`"%d"`, rev) {
			t.Fatalf("PUT %q through %s at %d, then GET through %s: %d %v %q", v, from.URL, rev, to.URL, st, h, body)
		}
		s := servertest.Open(t, to.URL+"/watch/seen/**", nil)
		if got := s.Sync(t); got < rev {
			t.Errorf("PUT through %s at %d, then a stream through %s turns live at %d", from.URL, rev, to.URL, got)
		}
		s.Close()
	}

	s1 := servertest.Open(t, a.URL+"/watch/m/**", nil)
	s1.Sync(t)
	halfway, done := servertest.GoWriters(b.URL, "m/", 4, 100, "v")
	var got []servertest.Op
	add := func(e servertest.Event) {
		t.Helper()
		if e.ID != servertest.ID(e.Data.Revision) {
			t.Fatalf("event %+v: id is not its revision", e)
		}
		got = append(got, servertest.Op{Rev: e.Data.Revision, Event: e.Event, Key: e.Data.Key})
	}
	for _, e := range s1.Events(t, 100) {
		add(e)
	}
	// Killed while the first half of the writes may still go on; the
	// second half is made while A is dead.
	a.Kill()
	msgs, err := s1.End(t)
	for _, m := range msgs {
		add(servertest.EventOf(t, m))
	}
	t.Logf("A sent %d events before it died (%v)", len(got), err)
	close(halfway)

	lastID := servertest.ID(got[len(got)-1].Rev)
	s2 := servertest.Open(t, b.URL+"/watch/m/**", http.Header{"Last-Event-ID": {lastID}})
	acked, resumed := servertest.Resumed(t, s2, done, 4*servertest.Timeout)
	if diff := cmp.Diff(acked, append(got, resumed...)); diff != "" {
		t.Errorf("stream on A, then on B from A's last id (-acknowledged +delivered):\n%s", diff)
	}
}

// TestEtcdCASTwoNodes runs 100 read-modify-write increments of one
// counter with If-Match, through both nodes in turn from 10 goroutines,
// retrying on 412: the counter ends at exactly 100 on both.
func TestEtcdCASTwoNodes(t *testing.T) {
	nodes := startEtcdNodes(t, servertest.SharedEtcd(t), 2)
	if st, _, b := servertest.Call(t, "PUT", nodes[0].URL+"/kv/counter", []byte("0")); st != 201 {
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
				errc <- servertest.Increment(nodes[(w+i)%2].URL + "/kv/counter")
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
		st, h, b := servertest.Call(t, "GET", n.URL+"/kv/counter", nil)
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
func etcdWriter(nodes []*servertest.Proc, w int, stop <-chan struct{}, acked *atomic.Int64) etcdWrites {
	var res etcdWrites
	for i := 0; ; i++ {
		select {
		case <-stop:
			return res
		default:
		}
		key, value := fmt.Sprintf("f/%d/%d", w, i%5), fmt.Sprintf("%d/%d", w, i)
		u := servertest.KeyURL(nodes[(w+i)%len(nodes)].URL, key)
		st, rev, b, err := etcdTestDo(http.MethodPut, u, []byte(value))
		var e servertest.APIError
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
	c := servertest.StartEtcd(t, 3)
	nodes := startEtcdNodes(t, c, 2)
	s := servertest.Open(t, nodes[0].URL+"/watch/f/**", nil)
	syncRev := s.Sync(t)

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
			st, h, b := servertest.Call(t, "GET", servertest.KeyURL(n.URL, key), nil)
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
	for _, e := range s.Until(t, func(e servertest.Event) bool { return e.Data.Revision >= final }) {
		rev := e.Data.Revision
		if e.Event != "put" || e.ID != servertest.ID(rev) || rev <= prev || e.Data.Value == nil {
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
	c := servertest.StartEtcd(t, 3)
	nodes := startEtcdNodes(t, c, 2)
	a, b := nodes[0], nodes[1]
	s := servertest.Open(t, a.URL+"/watch/o/**", nil)
	s.Sync(t)
	before := servertest.Put(t, b.URL, "o/before", "1")
	if e := servertest.EventOf(t, s.Next(t)); e.ID != servertest.ID(before) || e.Data.Key != "o/before" {
		t.Fatalf("got %+v, want the put of o/before at %d", e, before)
	}

	for i := range len(c.Endpoints()) {
		c.Kill(i)
	}
	start := time.Now()
	for _, n := range nodes {
		h, body := waitHealthz(t, n.URL, http.StatusServiceUnavailable)
		if e := servertest.DecodeError(t, body); !strings.HasPrefix(h.Get("Content-Type"), "application/json") {
			t.Errorf("/healthz with etcd down: Content-Type %q, %+v", h.Get("Content-Type"), e)
		}
	}
	t.Logf("/healthz said 503 %v after etcd went down", time.Since(start).Round(time.Millisecond))
	st, rev, body, err := etcdTestDo(http.MethodPut, b.URL+"/kv/o/down", []byte("x"))
	if err != nil || st != http.StatusServiceUnavailable || rev != 0 {
		t.Errorf("PUT with etcd down: %d %s, Kvsse-Revision %d, %v; want 503", st, body, rev, err)
	} else {
		servertest.DecodeError(t, body)
	}

	for i := range len(c.Endpoints()) {
		c.Restart(t, i)
	}
	c.WaitHealthy(t)
	start = time.Now()
	waitHealthz(t, b.URL, http.StatusOK)
	t.Logf("/healthz said 200 %v after etcd was healthy again", time.Since(start).Round(time.Millisecond))
	// Right away, while A may still be reconnecting.
	var want []servertest.Op
	for i := range 20 {
		k := fmt.Sprintf("o/after/%d", i%4)
		want = append(want, servertest.Op{Rev: servertest.Put(t, b.URL, k, strconv.Itoa(i)), Event: "put", Key: k})
	}
	if want[0].Rev <= before {
		t.Errorf("first write after the outage at %d, not after %d", want[0].Rev, before)
	}
	var got []servertest.Op
	for _, e := range s.Until(t, func(e servertest.Event) bool { return e.Data.Revision >= want[len(want)-1].Rev }) {
		if e.ID != servertest.ID(e.Data.Revision) {
			t.Errorf("event %+v: id is not its revision", e)
		}
		got = append(got, servertest.Op{Rev: e.Data.Revision, Event: e.Event, Key: e.Data.Key})
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("stream across the outage (-acknowledged +delivered):\n%s", diff)
	}
	waitHealthz(t, a.URL, http.StatusOK)
	if st, _, got := servertest.Call(t, "GET", a.URL+"/kv/o/down", nil); st != 404 {
		t.Errorf("the write refused while etcd was down: GET %d %q, want 404", st, got)
	}
}

// TestEtcdResumeFromEtcdHistory: a node keeps no changes from before it
// started, so a client that resumes on a fresh node is served from
// etcd's history; once etcd has compacted that history, it gets a reset
// and a snapshot instead.
func TestEtcdResumeFromEtcdHistory(t *testing.T) {
	c := servertest.StartEtcd(t, 1) // of its own: it compacts etcd's history
	args := c.ServerArgs(servertest.EtcdPrefix())
	first := servertest.Start(t, args...)
	var revs []int64
	values := map[string]string{}
	prevs := map[int64]*string{} // the value each change replaced
	for i := range 10 {
		if i%3 == 2 { // delete what the write before put
			key := fmt.Sprintf("h/k%d", (i-1)%4)
			revs = append(revs, servertest.Del(t, first.URL, key))
			v := values[key]
			prevs[revs[i]] = &v
			delete(values, key)
		} else {
			key := fmt.Sprintf("h/k%d", i%4)
			revs = append(revs, servertest.Put(t, first.URL, key, strconv.Itoa(i)))
			if v, ok := values[key]; ok {
				prevs[revs[i]] = &v
			}
			values[key] = strconv.Itoa(i)
		}
	}
	first.Stop(t)

	// Written while no node runs: only etcd has seen them.
	revs = append(revs, servertest.Put(t, servertest.Start(t, args...).URL, "h/k9", "late"))
	fresh := servertest.Start(t, args...)
	hdr := http.Header{"Last-Event-ID": {servertest.ID(revs[2])}}
	s := servertest.Open(t, fresh.URL+"/watch/h/**", hdr)
	got := s.Until(t, func(e servertest.Event) bool { return e.Event == "sync" })
	var ids []int64
	for _, e := range got[:len(got)-1] {
		ids = append(ids, e.Data.Revision)
		if e.ID != servertest.ID(e.Data.Revision) {
			t.Errorf("event %+v: id is not its revision", e)
		}
	}
	if diff := cmp.Diff(revs[3:], ids); diff != "" {
		t.Errorf("resume from %d on a fresh node: revisions (-want +got):\n%s", revs[2], diff)
	}
	s.Close()

	// With prev=1, the changes read from etcd's history carry the values
	// they replaced.
	s = servertest.Open(t, servertest.Start(t, args...).URL+"/watch/h/**?prev=1", hdr)
	got = s.Until(t, func(e servertest.Event) bool { return e.Event == "sync" })
	for _, e := range got[:len(got)-1] {
		if want := prevs[e.Data.Revision]; !cmp.Equal(e.Data.PrevValue, want) {
			t.Errorf("resume with prev=1 on a fresh node: %+v carries previous value %v, want %v", e, deref(e.Data.PrevValue), deref(want))
		}
	}
	s.Close()

	// Compacting etcd past the asked-for revision: reset, then the keys.
	var compacted struct{}
	body := fmt.Appendf(nil, `{"revision":"%d"}`, revs[6])
	if err := etcdPost(c.Endpoints()[0], "/v3/kv/compaction", body, &compacted); err != nil {
		t.Fatal(err)
	}
	fresh = servertest.Start(t, args...)
	s = servertest.Open(t, fresh.URL+"/watch/h/**", http.Header{"Last-Event-ID": {servertest.ID(revs[2])}})
	got = s.Until(t, func(e servertest.Event) bool { return e.Event == "sync" })
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
	if want := servertest.List(t, fresh.URL, "h/"); len(want) != len(keys) {
		t.Errorf("snapshot after reset holds %v, the listing %v", keys, want)
	}
	s.Close()
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
	c := servertest.StartEtcd(t, 1)
	node := servertest.Start(t, c.ServerArgs(servertest.EtcdPrefix())...)
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
		_, b := servertest.Send(t, http.MethodGet, node.URL+"/healthz", nil)
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
