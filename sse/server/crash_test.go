package server_test

// Black-box durability tests: the server is killed with SIGKILL under load,
// its log is torn or damaged byte by byte, its data directory is shared,
// compacted and reopened, and every acknowledged write must still be there,
// with revisions that never go back.

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"kvsse/kv/wal"
	"kvsse/sse"
	"kvsse/sse/server/servertest"
)

// ---- HTTP helpers -------------------------------------------------------

// crashClient returns a client whose idle connections are closed at the
// end of the test.
func crashClient(t testing.TB) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 32, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

// crashDo sends one request and reads the whole answer.
func crashDo(c *http.Client, method, url string, body []byte, hdr map[string]string) (int, http.Header, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return 0, nil, nil, err
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("%s %s: reading the body: %w", method, url, err)
	}
	return resp.StatusCode, resp.Header, b, nil
}

// crashWrite sends a PUT or DELETE of key. For a successful write it
// returns the revision from Kvsse-Revision; a success without that header
// is an error.
func crashWrite(c *http.Client, method, base, key string, value []byte, hdr map[string]string) (status int, rev int64, body []byte, err error) {
	status, h, body, err := crashDo(c, method, base+"/kv/"+key, value, hdr)
	if err != nil {
		return 0, 0, nil, err
	}
	if status/100 == 2 {
		rev, err = strconv.ParseInt(h.Get("Kvsse-Revision"), 10, 64)
		if err != nil || rev <= 0 {
			return status, 0, body, fmt.Errorf("%s %s: status %d with Kvsse-Revision %q", method, key, status, h.Get("Kvsse-Revision"))
		}
	}
	return status, rev, body, nil
}

// crashPut is a PUT that must succeed; it returns the revision it took.
func crashPut(c *http.Client, base, key, value string, hdr map[string]string) (int64, error) {
	status, rev, body, err := crashWrite(c, http.MethodPut, base, key, []byte(value), hdr)
	if err != nil {
		return 0, err
	}
	if status != http.StatusOK && status != http.StatusCreated {
		return 0, fmt.Errorf("PUT %s: status %d: %s", key, status, body)
	}
	return rev, nil
}

// crashGet reads key: its status, value and the revision of its ETag.
func crashGet(c *http.Client, base, key string) (status int, value []byte, rev int64, err error) {
	status, h, body, err := crashDo(c, http.MethodGet, base+"/kv/"+key, nil, nil)
	if err != nil || status != http.StatusOK {
		return status, body, 0, err
	}
	tag := h.Get("ETag")
	rev, err = strconv.ParseInt(strings.Trim(tag, `"`), 10, 64)
	if err != nil || len(tag) < 3 || tag[0] != '"' || tag[len(tag)-1] != '"' {
		return status, body, 0, fmt.Errorf("GET %s: bad ETag %q", key, tag)
	}
	return status, body, rev, nil
}

// crashHealth returns the revision /healthz reports; any status but 200
// is an error.
func crashHealth(c *http.Client, base string) (int64, error) {
	status, _, body, err := crashDo(c, http.MethodGet, base+"/healthz", nil, nil)
	if err != nil {
		return 0, err
	}
	var h struct {
		Status   string `json:"status"`
		Revision *int64 `json:"revision"`
	}
	if status != http.StatusOK || json.Unmarshal(body, &h) != nil || h.Status != "ok" || h.Revision == nil {
		return 0, fmt.Errorf("healthz: status %d: %s", status, body)
	}
	return *h.Revision, nil
}

// crashItem is one key of a listing; Value holds the raw bytes (decoded
// from base64 when the listing encoded them).
type crashItem struct {
	Value       string
	Revision    int64
	ContentType string
	Expires     string
}

// crashList reads every key through as many pages as it takes, and the
// revision of the first page.
func crashList(c *http.Client, base string) (int64, map[string]crashItem, error) {
	items := map[string]crashItem{}
	rev := int64(-1)
	after := ""
	for page := 0; ; page++ {
		if page > 1000 {
			return 0, nil, fmt.Errorf("listing: more than 1000 pages")
		}
		status, _, body, err := crashDo(c, http.MethodGet, base+"/kv?prefix=&limit=1000&after="+after, nil, nil)
		if err != nil {
			return 0, nil, err
		}
		var p servertest.Page
		if status != http.StatusOK {
			return 0, nil, fmt.Errorf("listing: status %d: %s", status, body)
		}
		if err := json.Unmarshal(body, &p); err != nil {
			return 0, nil, fmt.Errorf("listing: %v: %s", err, body)
		}
		if rev == -1 {
			rev = p.Revision
		}
		for _, it := range p.Items {
			v := it.Value
			if it.Encoding == "base64" {
				b, err := base64.StdEncoding.DecodeString(v)
				if err != nil {
					return 0, nil, fmt.Errorf("listing: key %q: %v", it.Key, err)
				}
				v = string(b)
			}
			if _, dup := items[it.Key]; dup {
				return 0, nil, fmt.Errorf("listing: key %q twice", it.Key)
			}
			items[it.Key] = crashItem{Value: v, Revision: it.Revision, ContentType: it.ContentType, Expires: it.Expires}
		}
		if p.Next == nil {
			return rev, items, nil
		}
		after = *p.Next
	}
}

// crashRandom returns a generator seeded from KVSSE_CRASH_SEED or the
// clock, and logs the seed so that a failure can be replayed.
func crashRandom(t testing.TB) *rand.Rand {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("KVSSE_CRASH_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("KVSSE_CRASH_SEED: %v", err)
		}
		seed = n
	}
	t.Logf("seed %d (set KVSSE_CRASH_SEED to replay)", seed)
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}

// ---- processes whose stderr and exit we watch ----------------------------

// crashRun is the kvsse binary run as a server, which may fail to start.
type crashRun struct {
	URL    string
	cmd    *exec.Cmd
	stderr *servertest.LockedBuffer
	exited chan struct{} // closed once the process has been reaped
}

// crashLaunch starts the binary and returns once it serves (/healthz 200)
// or has exited, whichever comes first.
func crashLaunch(t testing.TB, args ...string) *crashRun {
	t.Helper()
	cmd := exec.Command(servertest.Binary(t), append([]string{"-addr", "127.0.0.1:0", "-log-level", "warn"}, args...)...)
	stdout := new(servertest.LockedBuffer)
	r := &crashRun{cmd: cmd, stderr: new(servertest.LockedBuffer), exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = stdout, r.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		cmd.Wait()
		close(r.exited)
	}()
	t.Cleanup(r.kill)
	c := crashClient(t)
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-r.exited:
			return r
		default:
		}
		if r.URL == "" {
			if url, err := sse.ReadBanner(strings.NewReader(stdout.String())); err == nil {
				r.URL = url
			}
		}
		if r.URL != "" {
			if _, err := crashHealth(c, r.URL); err == nil {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("kvsse %q neither served nor exited within 20 s; stderr:\n%s", args, r.stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// running reports whether the process has not exited.
func (r *crashRun) running() bool {
	select {
	case <-r.exited:
		return false
	default:
		return true
	}
}

// exitCode is the exit status of a process that has exited.
func (r *crashRun) exitCode() int {
	<-r.exited
	return r.cmd.ProcessState.ExitCode()
}

// kill sends SIGKILL (if the process still runs) and waits until it is
// reaped.
func (r *crashRun) kill() {
	if r.running() {
		r.cmd.Process.Kill()
	}
	<-r.exited
}

// ---- files of a data directory -----------------------------------------

// crashFiles returns the base names of the log segments and snapshots in
// dir, in name (= revision) order.
func crashFiles(t testing.TB, dir string) (wals, snaps []string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		switch n := e.Name(); {
		case strings.HasPrefix(n, "wal-") && strings.HasSuffix(n, ".log"):
			wals = append(wals, n)
		case strings.HasPrefix(n, "snap-") && strings.HasSuffix(n, ".snap"):
			snaps = append(snaps, n)
		}
	}
	return wals, snaps
}

// crashFrame is one record of a log segment: where its frame starts and
// ends in the file, where the commit marker of its batch ends (from there
// on the write counts), and the revision in its payload.
type crashFrame struct {
	start, end, commit int
	rev                int64
}

// crashFrames parses a log segment by the documented format: the magic
// "kvsseLG2", then frames of [length u32 LE][CRC-32C u32 LE][payload],
// where the payload is an op byte followed by the revision as a uvarint.
// Each batch of change records ends with a commit marker (op 6); the
// frames returned are the change records. The whole file must be valid.
func crashFrames(data []byte) ([]crashFrame, error) {
	if !bytes.HasPrefix(data, []byte("kvsseLG2")) {
		return nil, fmt.Errorf("segment does not start with the magic: %q", data[:min(8, len(data))])
	}
	table := crc32.MakeTable(crc32.Castagnoli)
	var frames []crashFrame
	for off := 8; off < len(data); {
		if len(data)-off < 8 {
			return nil, fmt.Errorf("partial frame header at offset %d", off)
		}
		n := int(binary.LittleEndian.Uint32(data[off:]))
		if n < 2 || len(data)-off-8 < n {
			return nil, fmt.Errorf("frame at offset %d: bad length %d", off, n)
		}
		payload := data[off+8 : off+8+n]
		if crc32.Checksum(payload, table) != binary.LittleEndian.Uint32(data[off+4:]) {
			return nil, fmt.Errorf("frame at offset %d: checksum mismatch", off)
		}
		rev, k := binary.Uvarint(payload[1:])
		if k <= 0 {
			return nil, fmt.Errorf("frame at offset %d: bad revision", off)
		}
		if payload[0] == 6 { // a commit marker ends the batch
			for i := len(frames) - 1; i >= 0 && frames[i].commit == 0; i-- {
				frames[i].commit = off + 8 + n
			}
		} else {
			frames = append(frames, crashFrame{start: off, end: off + 8 + n, rev: int64(rev)})
		}
		off += 8 + n
	}
	return frames, nil
}

// crashScratchDir returns a new directory for tests of the log's format
// (not of the disk), on tmpfs when there is one: every start of the
// server fsyncs, and a few hundred starts on a slow disk take long.
func crashScratchDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "kvsse-crash-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// crashCopyDir copies the regular files of src into a new directory dst.
func crashCopyDir(src, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// ---- 1 and 6: kill -9 under concurrent load -----------------------------

const crashWriters = 8

// crashAck is a PUT of the load: Rev is the revision the server
// acknowledged, 0 while it is not acknowledged.
type crashAck struct {
	Key, Value string
	Rev        int64
}

// crashWriterResult is what one writer did until the server died: the
// writes acknowledged to it, in order, and the one it had in flight, whose
// fate is unknown.
type crashWriterResult struct {
	acked   []crashAck
	pending *crashAck
	err     error
}

// crashWriter puts its own keys w<id>/<n%64> (new keys, then overwrites)
// with value w<id>-n<n>, and every 8th write does a compare-and-set on a
// shared key. It counts acknowledged writes in acks and closes reached
// when the count hits target. It stops at the first failed request after
// killed is closed; a failure before that is an error.
func crashWriter(c *http.Client, base string, id, n int, killed <-chan struct{}, acks *atomic.Int64, target int64, reached chan<- struct{}) (res crashWriterResult) {
	dead := func() bool {
		select {
		case <-killed:
			return true
		default:
			return false
		}
	}
	for ; ; n++ {
		if dead() {
			return res
		}
		key := fmt.Sprintf("w%d/%d", id, n%64)
		hdr := map[string]string{"Content-Type": "text/plain"}
		cas := n%8 == 7
		if cas {
			key = fmt.Sprintf("shared/%d", n%3)
			status, _, rev, err := crashGet(c, base, key)
			switch {
			case err != nil && dead():
				return res
			case err != nil:
				res.err = err
				return res
			case status == http.StatusOK:
				hdr["If-Match"] = fmt.Sprintf(`"%d"`, rev)
			case status == http.StatusNotFound:
				hdr["If-None-Match"] = "*"
			default:
				res.err = fmt.Errorf("GET %s: status %d", key, status)
				return res
			}
		}
		a := crashAck{Key: key, Value: fmt.Sprintf("w%d-n%d", id, n)}
		status, rev, body, err := crashWrite(c, http.MethodPut, base, key, []byte(a.Value), hdr)
		switch {
		case err != nil && dead():
			res.pending = &a
			return res
		case err != nil:
			res.err = err
			return res
		case status == http.StatusOK || status == http.StatusCreated:
			a.Rev = rev
			res.acked = append(res.acked, a)
			if acks.Add(1) == target {
				close(reached)
			}
		case status == http.StatusPreconditionFailed && cas:
			// another writer won the race
		default:
			res.err = fmt.Errorf("PUT %s: status %d: %s", key, status, body)
			return res
		}
	}
}

// crashLoad runs the writers against p, kills p with SIGKILL once target
// writes were acknowledged (while the others are in flight), and returns
// every acknowledged write and the writes whose fate is unknown. Writer n
// counters start at base so that values are unique across cycles.
func crashLoad(t *testing.T, c *http.Client, p *servertest.Proc, target int64, base int) (acked, pending []crashAck) {
	t.Helper()
	killed := make(chan struct{})
	reached := make(chan struct{})
	resc := make(chan crashWriterResult, crashWriters)
	var acks atomic.Int64
	for i := range crashWriters {
		go func() { resc <- crashWriter(c, p.URL, i, base, killed, &acks, target, reached) }()
	}
	stopped := false
	defer func() {
		if !stopped {
			close(killed)
		}
	}()
	select {
	case <-reached:
	case r := <-resc:
		t.Fatalf("a writer stopped before the kill, after %d acknowledged writes: %v", acks.Load(), r.err)
	case <-time.After(60 * time.Second):
		t.Fatalf("only %d of %d writes acknowledged within 60 s", acks.Load(), target)
	}
	close(killed)
	stopped = true
	p.Kill()
	deadline := time.After(30 * time.Second)
	for range crashWriters {
		select {
		case r := <-resc:
			if r.err != nil {
				t.Fatalf("writer failed before the kill: %v", r.err)
			}
			for i := 1; i < len(r.acked); i++ {
				if r.acked[i].Rev <= r.acked[i-1].Rev {
					t.Fatalf("one writer got revision %d (%s) after %d (%s)", r.acked[i].Rev, r.acked[i].Key, r.acked[i-1].Rev, r.acked[i-1].Key)
				}
			}
			acked = append(acked, r.acked...)
			if r.pending != nil {
				pending = append(pending, *r.pending)
			}
		case <-deadline:
			t.Fatal("writers did not stop within 30 s of the kill")
		}
	}
	return acked, pending
}

// crashModel is what the acknowledged writes say the server holds.
type crashModel struct {
	state map[string]crashAck // per key, the newest write known to be stored
	revs  map[int64]string    // every acknowledged revision, to its key
	floor int64               // the revision /healthz reported at the last start
	max   int64               // the highest acknowledged revision
}

// merge adds one cycle's acknowledged writes. Each must have a revision
// above the one the server reported when it started, and no two the same.
func (m *crashModel) merge(t *testing.T, acked []crashAck) {
	t.Helper()
	for _, a := range acked {
		if a.Rev <= m.floor {
			t.Fatalf("write %s=%s acknowledged at revision %d, not above revision %d the server had at start", a.Key, a.Value, a.Rev, m.floor)
		}
		if k, dup := m.revs[a.Rev]; dup {
			t.Fatalf("revision %d acknowledged twice: for %s and for %s", a.Rev, k, a.Key)
		}
		m.revs[a.Rev] = a.Key
		if a.Rev > m.state[a.Key].Rev {
			m.state[a.Key] = a
		}
		m.max = max(m.max, a.Rev)
	}
}

// crashVerify checks a restarted server against the model: every
// acknowledged write is there (or a later write of the same key), a value
// newer than the newest acknowledged write of its key is one that was in
// flight, nothing else appeared, and the revision did not go back. Then
// the model becomes what the server holds.
func crashVerify(t *testing.T, c *http.Client, base string, m *crashModel, pending []crashAck) {
	t.Helper()
	rev, err := crashHealth(c, base)
	if err != nil {
		t.Fatal(err)
	}
	if rev < m.max {
		t.Fatalf("after restart the revision is %d, below the highest acknowledged revision %d", rev, m.max)
	}
	listRev, items, err := crashList(c, base)
	if err != nil {
		t.Fatal(err)
	}
	if listRev != rev {
		t.Errorf("listing revision %d, /healthz revision %d on an idle server", listRev, rev)
	}
	inFlight := func(key, value string) bool {
		for _, p := range pending {
			if p.Key == key && p.Value == value {
				return true
			}
		}
		return false
	}
	var problems []string
	for key, want := range m.state {
		got, ok := items[key]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("%s: acknowledged %q at revision %d, now missing", key, want.Value, want.Rev))
		case got.Revision < want.Rev:
			problems = append(problems, fmt.Sprintf("%s: acknowledged %q at revision %d, now %q at older revision %d", key, want.Value, want.Rev, got.Value, got.Revision))
		case got.Revision == want.Rev && got.Value != want.Value:
			problems = append(problems, fmt.Sprintf("%s: revision %d holds %q, acknowledged %q", key, want.Rev, got.Value, want.Value))
		case got.Revision > want.Rev && !inFlight(key, got.Value):
			problems = append(problems, fmt.Sprintf("%s: %q at revision %d is newer than acknowledged %q at %d and was not in flight", key, got.Value, got.Revision, want.Value, want.Rev))
		}
	}
	for key, got := range items {
		if _, ok := m.state[key]; !ok && !inFlight(key, got.Value) {
			problems = append(problems, fmt.Sprintf("%s: %q at revision %d was never written", key, got.Value, got.Revision))
		}
		if got.Revision > rev {
			problems = append(problems, fmt.Sprintf("%s: revision %d is above the store's revision %d", key, got.Revision, rev))
		}
	}
	if len(problems) > 0 {
		t.Fatalf("%d problems after restart (revision %d, %d keys), for example:\n%s", len(problems), rev, len(items), strings.Join(problems[:min(20, len(problems))], "\n"))
	}
	for key, it := range items {
		status, value, etagRev, err := crashGet(c, base, key)
		if err != nil || status != http.StatusOK || string(value) != it.Value || etagRev != it.Revision {
			t.Fatalf("GET %s: status %d, %q, ETag revision %d, err %v; listed as %q at revision %d", key, status, value, etagRev, err, it.Value, it.Revision)
		}
	}
	clear(m.state)
	for key, it := range items {
		m.state[key] = crashAck{Key: key, Value: it.Value, Rev: it.Revision}
	}
	m.floor, m.max = rev, rev
}

// crashCycles starts the binary on one data directory, loads it with
// concurrent writers, kills it with SIGKILL after a random number of
// acknowledged writes, restarts it and checks it, cycles times.
func crashCycles(t *testing.T, args []string, cycles, minAcks, spread int) (dir string) {
	dir = t.TempDir()
	c := crashClient(t)
	rng := crashRandom(t)
	m := &crashModel{state: map[string]crashAck{}, revs: map[int64]string{}}
	var pending []crashAck
	for cycle := 0; ; cycle++ {
		p := servertest.StartProc(t, append([]string{"-data", dir}, args...)...)
		crashVerify(t, c, p.URL, m, pending)
		if cycle == cycles {
			p.Kill()
			return dir
		}
		if cycle == 0 {
			// Keys written once and never again, at both ends of the key
			// order: only snapshots keep them once their segments are gone.
			var cold []crashAck
			for _, key := range []string{"a-cold/1", "a-cold/2", "z-cold/1", "z-cold/2"} {
				rev, err := crashPut(c, p.URL, key, "cold "+key, nil)
				if err != nil {
					t.Fatal(err)
				}
				cold = append(cold, crashAck{Key: key, Value: "cold " + key, Rev: rev})
			}
			m.merge(t, cold)
		}
		target := minAcks + rng.IntN(spread)
		var acked []crashAck
		acked, pending = crashLoad(t, c, p, int64(target), cycle*1_000_000)
		m.merge(t, acked)
		c.Transport.(*http.Transport).CloseIdleConnections()
		t.Logf("cycle %d: killed after %d acknowledged writes (highest revision %d), %d in flight", cycle, len(acked), m.max, len(pending))
	}
}

// TestCrashKill9 kills the server with SIGKILL while 8 clients write, and
// checks after each restart that every acknowledged write survived and
// that revisions never go back or get reused. The compact case makes the
// log roll into snapshots many times, so that kills also land during and
// around compactions.
func TestCrashKill9(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"sync-always", []string{"-sync", "always"}},
		{"sync-always-compact", []string{"-sync", "always", "-compact-bytes", "20000"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := crashCycles(t, tc.args, 3, 200, 600)
			if _, snaps := crashFiles(t, dir); strings.Contains(tc.name, "compact") && len(snaps) == 0 {
				t.Errorf("no snapshot was written with -compact-bytes 20000")
			}
		})
	}
}

// TestSyncNoneSurvivesProcessCrash: with -sync=none an acknowledged write
// is in the kernel's page cache, so it survives a SIGKILL of the process.
func TestSyncNoneSurvivesProcessCrash(t *testing.T) {
	t.Parallel()
	crashCycles(t, []string{"-sync", "none"}, 2, 200, 600)
}

// ---- 2 and 3: torn and damaged logs --------------------------------------

// crashOp is one sequential write of a small log.
type crashOp struct {
	del          bool
	key, value   string
	contentType  string
	wantRevision int64 // filled in when the write is acknowledged
}

// crashSmallLog writes 30 known, sequential operations to a fresh server
// (puts, then an overwrite, a delete and a put as the last three), stops
// it and returns its data directory, the operations with their revisions,
// the log segment's path, contents and frames, one frame per operation.
func crashSmallLog(t *testing.T) (dir string, ops []crashOp, seg string, data []byte, frames []crashFrame) {
	t.Helper()
	for i := range 27 {
		op := crashOp{key: fmt.Sprintf("t/k%02d", i), value: fmt.Sprintf("value %d", i), contentType: "text/plain"}
		if i%3 == 0 {
			op.contentType = "application/json"
			op.value = fmt.Sprintf(`{"n":%d}`, i)
		}
		ops = append(ops, op)
	}
	ops = append(ops,
		crashOp{key: "t/k01", value: "value 1, overwritten", contentType: "text/plain"},
		crashOp{key: "t/k02", del: true},
		crashOp{key: "t/new", value: "new", contentType: "text/plain"},
	)
	ts := servertest.Start(t, "-data", crashScratchDir(t))
	c := crashClient(t)
	exists := map[string]bool{}
	for i := range ops {
		op := &ops[i]
		method, want := http.MethodPut, http.StatusCreated
		switch {
		case op.del:
			method, want = http.MethodDelete, http.StatusNoContent
		case exists[op.key]:
			want = http.StatusOK
		}
		exists[op.key] = !op.del
		status, rev, body, err := crashWrite(c, method, ts.URL, op.key, []byte(op.value), map[string]string{"Content-Type": op.contentType})
		if err != nil {
			t.Fatal(err)
		}
		if status != want {
			t.Fatalf("%s %s: status %d, want %d: %s", method, op.key, status, want, body)
		}
		if i > 0 && rev != ops[i-1].wantRevision+1 {
			t.Fatalf("%s %s took revision %d after %d: revisions must be consecutive", method, op.key, rev, ops[i-1].wantRevision)
		}
		op.wantRevision = rev
	}
	ts.Stop(t)
	wals, _ := crashFiles(t, ts.Dir)
	if len(wals) != 1 {
		t.Fatalf("want one log segment, got %q", wals)
	}
	seg = filepath.Join(ts.Dir, wals[0])
	data, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	frames, err = crashFrames(data)
	if err != nil {
		t.Fatalf("%s: %v", seg, err)
	}
	if len(frames) != len(ops) {
		t.Fatalf("%s holds %d records, want one per write (%d)", seg, len(frames), len(ops))
	}
	for i, f := range frames {
		if f.rev != ops[i].wantRevision {
			t.Fatalf("record %d at offset %d holds revision %d, want %d", i, f.start, f.rev, ops[i].wantRevision)
		}
	}
	return ts.Dir, ops, seg, data, frames
}

// crashState is what a server holds after ops, as its listing shows it.
func crashState(ops []crashOp) map[string]crashItem {
	m := map[string]crashItem{}
	for _, op := range ops {
		if op.del {
			delete(m, op.key)
			continue
		}
		m[op.key] = crashItem{Value: op.value, Revision: op.wantRevision, ContentType: op.contentType}
	}
	return m
}

// crashCheckState checks that the server at base holds exactly the first
// n of ops, at the revision of the n-th.
func crashCheckState(c *http.Client, base string, ops []crashOp, n int) error {
	rev, err := crashHealth(c, base)
	if err != nil {
		return err
	}
	if want := ops[n-1].wantRevision; rev != want {
		return fmt.Errorf("/healthz revision %d, want %d (the last whole record)", rev, want)
	}
	_, items, err := crashList(c, base)
	if err != nil {
		return err
	}
	if diff := cmp.Diff(crashState(ops[:n]), items); diff != "" {
		return fmt.Errorf("keys differ from the first %d writes (-want +got):\n%s", n, diff)
	}
	return nil
}

// TestTornTail cuts the log at every byte inside its last three records:
// the server must start, hold exactly the writes whose records lie wholly
// before the cut, report the revision of the last of them, and give the
// next write the next revision. Every few cuts it is restarted once more
// to check that the cut and the new write are on disk.
func TestTornTail(t *testing.T) {
	src, ops, seg, data, frames := crashSmallLog(t)
	c := crashClient(t)
	scratch := crashScratchDir(t)
	first := frames[len(frames)-3].start
	for off := first; off < len(data); off++ {
		whole := 0
		for whole < len(frames) && frames[whole].commit <= off {
			whole++
		}
		dir := filepath.Join(scratch, strconv.Itoa(off))
		if err := crashCopyDir(src, dir); err != nil {
			t.Fatal(err)
		}
		cut := filepath.Join(dir, filepath.Base(seg))
		if err := os.Truncate(cut, int64(off)); err != nil {
			t.Fatal(err)
		}
		ts := servertest.Start(t, "-data", dir)
		if err := crashCheckState(c, ts.URL, ops, whole); err != nil {
			t.Fatalf("log cut at byte %d of %d (%d whole records): %v", off, len(data), whole, err)
		}
		next := ops[whole-1].wantRevision + 1
		rev, err := crashPut(c, ts.URL, "t/after", "after the cut", map[string]string{"Content-Type": "text/plain"})
		if err != nil {
			t.Fatalf("log cut at byte %d: %v", off, err)
		}
		if rev != next {
			t.Fatalf("log cut at byte %d: the first write took revision %d, want %d", off, rev, next)
		}
		ts.Stop(t)
		c.Transport.(*http.Transport).CloseIdleConnections()
		if off%4 != 0 && off != len(data)-1 {
			continue
		}
		ts = servertest.Start(t, "-data", dir)
		after := append(ops[:whole:whole], crashOp{key: "t/after", value: "after the cut", contentType: "text/plain", wantRevision: next})
		if err := crashCheckState(c, ts.URL, after, len(after)); err != nil {
			t.Fatalf("log cut at byte %d, written once and restarted: %v", off, err)
		}
		ts.Stop(t)
		c.Transport.(*http.Transport).CloseIdleConnections()
	}
}

// crashFrameBytes encodes one log frame of a put the way the documented
// format does, for a value that carries a frame in it.
func crashFrameBytes(rev int64, key, value string) []byte {
	p := []byte{1} // put
	p = binary.AppendUvarint(p, uint64(rev))
	p = binary.AppendUvarint(p, 0)
	p = binary.AppendUvarint(p, uint64(len(key)))
	p = append(p, key...)
	p = binary.AppendUvarint(p, 0) // content type
	p = binary.AppendVarint(p, 0)  // expires
	p = binary.AppendUvarint(p, uint64(len(value)))
	p = append(p, value...)
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(p)))
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(p, crc32.MakeTable(crc32.Castagnoli)))
	return append(b, p...)
}

// TestTornTailValueHoldsFrame: values are opaque bytes, and a value may
// well hold a log frame (a backup of a kvsse log stored in kvsse, say).
// When the log is torn or damaged inside the LAST record, after such an
// embedded frame, the damage is still a tail (nothing valid follows the
// record): the server must cut it off and start, as it does for any other
// tail.
func TestTornTailValueHoldsFrame(t *testing.T) {
	ts := servertest.Start(t, "-data", crashScratchDir(t))
	c := crashClient(t)
	base, err := crashPut(c, ts.URL, "f/a", "first", nil)
	if err != nil {
		t.Fatal(err)
	}
	value := "head " + string(crashFrameBytes(base+7, "f/inner", "inner value")) + strings.Repeat(" tail", 8)
	if _, err := crashPut(c, ts.URL, "f/blob", value, nil); err != nil {
		t.Fatal(err)
	}
	ts.Stop(t)
	wals, _ := crashFiles(t, ts.Dir)
	if len(wals) != 1 {
		t.Fatalf("want one log segment, got %q", wals)
	}
	data, err := os.ReadFile(filepath.Join(ts.Dir, wals[0]))
	if err != nil {
		t.Fatal(err)
	}
	frames, err := crashFrames(data)
	if err != nil || len(frames) != 2 {
		t.Fatalf("want 2 records, got %d (%v)", len(frames), err)
	}
	for _, tc := range []struct {
		name   string
		damage func([]byte) []byte
	}{
		{"torn in the value's tail", func(b []byte) []byte { return b[:len(b)-4] }},
		{"bit flipped in the value's tail", func(b []byte) []byte { b[len(b)-3] ^= 0x01; return b }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(crashScratchDir(t), "data")
			if err := crashCopyDir(ts.Dir, dir); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, wals[0]), tc.damage(bytes.Clone(data)), 0o644); err != nil {
				t.Fatal(err)
			}
			r := crashLaunch(t, "-data", dir)
			if !r.running() {
				t.Fatalf("start-up refused (exit %d) a log whose only damage is inside its last record (offset %d..%d):\n%s",
					r.exitCode(), frames[1].start, frames[1].end, r.stderr)
			}
			_, items, err := crashList(c, r.URL)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]crashItem{"f/a": {Value: "first", Revision: base, ContentType: "application/octet-stream"}}
			if diff := cmp.Diff(want, items); diff != "" {
				t.Errorf("keys after cutting the damaged last record (-want +got):\n%s", diff)
			}
		})
	}
}

// TestCorruptMiddleRefused flips one bit in one record of a log. Damage
// with valid records after it must make start-up fail with an error naming
// the file and the record's offset, and leave the file untouched. Damage
// in the last frame, the commit marker of the last write, is a corrupt
// tail: it is cut off with a log line, and every write before it is kept.
// Damage in the last write's record, before its intact marker, is damage
// in a batch that was written whole: refused like any other.
func TestCorruptMiddleRefused(t *testing.T) {
	src, ops, seg, data, frames := crashSmallLog(t)
	c := crashClient(t)
	last := len(frames) - 1
	for _, tc := range []struct {
		name   string
		record int
		at     func(f crashFrame) int // the byte to flip
		refuse bool
	}{
		{"payload of a middle record", 14, func(f crashFrame) int { return f.start + 8 + (f.end-f.start-8)/2 }, true},
		{"checksum of a middle record", 10, func(f crashFrame) int { return f.start + 5 }, true},
		{"length of a middle record", 20, func(f crashFrame) int { return f.start + 2 }, true},
		{"payload of the first record", 0, func(f crashFrame) int { return f.end - 1 }, true},
		{"payload of the last record", last, func(f crashFrame) int { return f.start + 8 + (f.end-f.start-8)/2 }, true},
		{"payload of the last commit marker", last, func(f crashFrame) int { return f.end + 9 }, false},
		{"checksum of the last commit marker", last, func(f crashFrame) int { return f.end + 4 }, false},
		{"length of the last commit marker", last, func(f crashFrame) int { return f.end + 2 }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(crashScratchDir(t), "data")
			if err := crashCopyDir(src, dir); err != nil {
				t.Fatal(err)
			}
			f := frames[tc.record]
			bad := bytes.Clone(data)
			bad[tc.at(f)] ^= 0x01
			path := filepath.Join(dir, filepath.Base(seg))
			if err := os.WriteFile(path, bad, 0o644); err != nil {
				t.Fatal(err)
			}
			r := crashLaunch(t, "-data", dir)
			stderr := r.stderr.String()
			if tc.refuse {
				if r.running() {
					t.Fatalf("the server started on a log with record %d of %d damaged at byte %d", tc.record, len(frames), tc.at(f))
				}
				if code := r.exitCode(); code == 0 {
					t.Errorf("exit status 0, want non-zero")
				}
				for _, want := range []string{filepath.Base(seg), fmt.Sprintf("offset %d", f.start)} {
					if !strings.Contains(stderr, want) {
						t.Errorf("the error does not name %q:\n%s", want, stderr)
					}
				}
				after, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(after, bad) {
					t.Errorf("the refused log was modified: %d bytes, were %d", len(after), len(bad))
				}
				return
			}
			if !r.running() {
				t.Fatalf("start-up failed (exit %d) on a log whose last record is damaged:\n%s", r.exitCode(), stderr)
			}
			if err := crashCheckState(c, r.URL, ops, last); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(stderr, filepath.Base(seg)) || !strings.Contains(stderr, "offset") {
				t.Errorf("no log line naming the file and offset of the cut tail:\n%s", stderr)
			}
			rev, err := crashPut(c, r.URL, "t/after", "x", nil)
			if err != nil {
				t.Fatal(err)
			}
			if want := ops[last-1].wantRevision + 1; rev != want {
				t.Errorf("the next write took revision %d, want %d", rev, want)
			}
		})
	}
}

// ---- 4: one server per data directory ------------------------------------

// TestDataDirLocked: a second server on a data directory in use exits
// non-zero saying so, the first keeps serving, and once the first is
// killed a new server takes the directory over with its data.
func TestDataDirLocked(t *testing.T) {
	dir := t.TempDir()
	c := crashClient(t)
	p := servertest.StartProc(t, "-data", dir)
	if _, err := crashPut(c, p.URL, "lock/a", "one", nil); err != nil {
		t.Fatal(err)
	}
	second := crashLaunch(t, "-data", dir)
	if second.running() {
		t.Fatalf("a second server started on %s, which another server uses", dir)
	}
	if code := second.exitCode(); code == 0 {
		t.Errorf("the second server exited with status 0")
	}
	stderr := second.stderr.String()
	for _, want := range []string{"in use by another kvsse process", dir} {
		if !strings.Contains(stderr, want) {
			t.Errorf("the second server's error does not say %q:\n%s", want, stderr)
		}
	}
	if _, err := crashHealth(c, p.URL); err != nil {
		t.Fatalf("the first server after the second one failed: %v", err)
	}
	rev, err := crashPut(c, p.URL, "lock/a", "two", nil)
	if err != nil {
		t.Fatal(err)
	}
	p.Kill()
	p = servertest.StartProc(t, "-data", dir)
	status, value, etagRev, err := crashGet(c, p.URL, "lock/a")
	if err != nil || status != http.StatusOK || string(value) != "two" || etagRev != rev {
		t.Fatalf("after the first server was killed: GET lock/a = %d %q at %d (%v), want 200 \"two\" at %d", status, value, etagRev, err, rev)
	}
}

// ---- 5: compaction across restarts ----------------------------------------

// crashCompactWrites does n random writes over 50 keys (puts of text and
// binary values, puts with a TTL of an hour, overwrites without TTL that
// clear it, deletes of present and absent keys) and keeps model in step,
// with Expires "ttl" for a key that has one. Writes are sequential, so
// each must take the next revision.
func crashCompactWrites(c *http.Client, base string, rng *rand.Rand, model map[string]crashItem, n int) error {
	rev, err := crashHealth(c, base)
	if err != nil {
		return err
	}
	ctypes := []string{"", "text/plain", "application/x-test"}
	for range n {
		key := fmt.Sprintf("c/k%02d", rng.IntN(50))
		r := rng.IntN(100)
		if r < 15 {
			status, got, body, err := crashWrite(c, http.MethodDelete, base, key, nil, nil)
			if err != nil {
				return err
			}
			if _, ok := model[key]; !ok {
				if status != http.StatusNotFound {
					return fmt.Errorf("DELETE of absent %s: status %d: %s", key, status, body)
				}
				continue
			}
			if status != http.StatusNoContent {
				return fmt.Errorf("DELETE %s: status %d: %s", key, status, body)
			}
			if rev++; got != rev {
				return fmt.Errorf("DELETE %s took revision %d, want %d", key, got, rev)
			}
			delete(model, key)
			continue
		}
		value := make([]byte, 10+rng.IntN(150))
		for i := range value {
			value[i] = 'a' + byte(rng.IntN(26))
		}
		if rng.IntN(10) == 0 {
			for i := range value {
				value[i] = byte(rng.IntN(256))
			}
		}
		it := crashItem{Value: string(value), ContentType: ctypes[rng.IntN(len(ctypes))]}
		path := key
		if r < 30 {
			path += "?ttl=1h"
			it.Expires = "ttl"
		}
		hdr := map[string]string{}
		if it.ContentType != "" {
			hdr["Content-Type"] = it.ContentType
		} else {
			it.ContentType = "application/octet-stream"
		}
		status, got, body, err := crashWrite(c, http.MethodPut, base, path, value, hdr)
		if err != nil {
			return err
		}
		_, existed := model[key]
		if want := map[bool]int{true: http.StatusOK, false: http.StatusCreated}[existed]; status != want {
			return fmt.Errorf("PUT %s: status %d, want %d: %s", path, status, want, body)
		}
		if rev++; got != rev {
			return fmt.Errorf("PUT %s took revision %d, want %d", path, got, rev)
		}
		it.Revision = rev
		model[key] = it
	}
	return nil
}

// crashNoExpiry replaces a listing's expiry times by "ttl", to compare it
// with a model that knows only whether a key has a TTL.
func crashNoExpiry(items map[string]crashItem) map[string]crashItem {
	m := make(map[string]crashItem, len(items))
	for k, it := range items {
		if it.Expires != "" {
			it.Expires = "ttl"
		}
		m[k] = it
	}
	return m
}

// crashSettled waits until compaction has caught up: exactly one snapshot
// and at most 3 log segments.
func crashSettled(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		wals, snaps := crashFiles(t, dir)
		if len(snaps) == 1 && len(wals) <= 3 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after compactions, %d snapshots %q and %d log segments %q, want 1 and at most 3", len(snaps), snaps, len(wals), wals)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCompactionRestart writes enough with a tiny -compact-bytes that the
// log is compacted many times, checks that snapshots replace the old
// segments, and that the full listing and the revision are the same after
// a graceful restart and after SIGKILL of the binary.
func TestCompactionRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	c := crashClient(t)
	rng := crashRandom(t)
	model := map[string]crashItem{}
	args := []string{"-data", dir, "-compact-bytes", "4096", "-history", "30"}

	// check compares the server with the model and returns its listing
	// and revision.
	check := func(when, base string) (int64, map[string]crashItem) {
		t.Helper()
		rev, items, err := crashList(c, base)
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		if diff := cmp.Diff(model, crashNoExpiry(items)); diff != "" {
			t.Fatalf("%s: keys differ from the writes (-want +got):\n%s", when, diff)
		}
		return rev, items
	}
	// same checks that a restarted server holds exactly what it held.
	same := func(when, base string, rev int64, items map[string]crashItem) {
		t.Helper()
		rev2, items2, err := crashList(c, base)
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		if diff := cmp.Diff(items, items2); diff != "" {
			t.Fatalf("%s: listing changed (-before +after):\n%s", when, diff)
		}
		if rev2 != rev {
			t.Fatalf("%s: revision %d, was %d", when, rev2, rev)
		}
	}

	ts := servertest.Start(t, args...)
	if err := crashCompactWrites(c, ts.URL, rng, model, 400); err != nil {
		t.Fatal(err)
	}
	rev, items := check("after 400 writes", ts.URL)
	crashSettled(t, dir)
	ts.Stop(t)

	ts = servertest.Start(t, args...)
	same("after a graceful restart", ts.URL, rev, items)
	if err := crashCompactWrites(c, ts.URL, rng, model, 200); err != nil {
		t.Fatal(err)
	}
	rev, items = check("after 200 more writes", ts.URL)
	crashSettled(t, dir)
	ts.Stop(t)

	p := servertest.StartProc(t, args...)
	same("the binary on the same data", p.URL, rev, items)
	if err := crashCompactWrites(c, p.URL, rng, model, 200); err != nil {
		t.Fatal(err)
	}
	rev, items = check("after 200 writes to the binary", p.URL)
	p.Kill() // possibly during a compaction
	p = servertest.StartProc(t, args...)
	same("after SIGKILL", p.URL, rev, items)
	if err := crashCompactWrites(c, p.URL, rng, model, 100); err != nil {
		t.Fatal(err)
	}
	check("after 100 writes past the SIGKILL", p.URL)
	crashSettled(t, dir)
}

// TestPrevAcrossRestart: after SIGKILL and after a clean stop (SIGTERM) of
// the binary, a resume with prev=1 replays every change with the value it
// replaced, from the log: also a change whose key's previous value was
// written to a segment that compaction has since removed, one whose
// previous value lies in an earlier segment that is kept, and one whose
// previous value lies in its own segment.
func TestPrevAcrossRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	c := crashClient(t)
	const history = 200
	args := []string{"-data", dir, "-compact-bytes", "2048", "-history", strconv.Itoa(history)}

	type change struct {
		event, key string
		prev       *string // the value the change replaced
	}
	want := map[int64]change{} // by revision
	values := map[string]string{}
	var last int64
	write := func(base, method, key, value string) {
		t.Helper()
		status, rev, body, err := crashWrite(c, method, base, key, []byte(value), map[string]string{"Content-Type": "text/plain"})
		if err != nil || status/100 != 2 {
			t.Fatalf("%s %s: %d %s %v", method, key, status, body, err)
		}
		ch := change{event: "put", key: key}
		if method == http.MethodDelete {
			ch.event = "delete"
		}
		if v, ok := values[key]; ok {
			ch.prev = &v
		}
		want[rev], last = ch, rev
		if method == http.MethodDelete {
			delete(values, key)
		} else {
			values[key] = value
		}
	}
	hot := func(base string, n int) {
		for i := range n {
			key := fmt.Sprintf("hot/%d", i%7)
			if i%40 == 39 {
				write(base, http.MethodDelete, key, "")
				continue
			}
			write(base, http.MethodPut, key, fmt.Sprintf("value %d of %s, long enough to fill the log", i, key))
		}
	}
	// verify resumes from well inside the history and checks every
	// change replayed, and that the replay reaches the last write.
	verify := func(when, base string) {
		t.Helper()
		since := last - history*3/4
		s := servertest.Open(t, base+"/watch/**?prev=1&since="+servertest.ID(since), nil)
		n := 0
		for _, e := range s.Until(t, func(e servertest.Event) bool { return e.Event == "sync" }) {
			if e.Event == "sync" {
				break
			}
			n++
			w, ok := want[e.Data.Revision]
			var got *string
			if e.Data.PrevValue != nil {
				v := *e.Data.PrevValue
				got = &v
			}
			if !ok || e.Event != w.event || e.Data.Key != w.key || !cmp.Equal(got, w.prev) ||
				(got != nil && (e.Data.PrevContentType == nil || *e.Data.PrevContentType != "text/plain")) {
				t.Fatalf("%s: replayed %+v (previous value %v), want %+v (previous value %v)", when, e, deref(got), w, deref(w.prev))
			}
		}
		if int64(n) != last-since {
			t.Fatalf("%s: replayed %d changes after %d, want %d", when, n, since, last-since)
		}
	}
	p := servertest.StartProc(t, args...)
	write(p.URL, http.MethodPut, "cold/a", "first a")
	write(p.URL, http.MethodPut, "cold/b", "first b")
	hot(p.URL, 400)
	// Compaction has removed the segment that holds the first values of
	// the cold keys.
	first := filepath.Base(wal.SegmentPath(dir, 1))
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if wals, _ := crashFiles(t, dir); len(wals) > 0 && wals[0] != first {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("segment %s still there after 400 writes", first)
		}
	}
	write(p.URL, http.MethodPut, "cold/a", "second a")
	write(p.URL, http.MethodDelete, "cold/b", "")
	hot(p.URL, 20)
	verify("before any restart", p.URL)
	p.Kill()

	p = servertest.StartProc(t, args...)
	verify("after SIGKILL", p.URL)
	hot(p.URL, 30)
	write(p.URL, http.MethodPut, "cold/a", "third a")
	hot(p.URL, 10)
	if err := p.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.Cmd.Wait(); err != nil {
		t.Fatalf("the server did not stop cleanly: %v", err)
	}

	p = servertest.StartProc(t, args...)
	verify("after a clean stop", p.URL)
}

func deref(s *string) any {
	if s == nil {
		return nil
	}
	return *s
}
