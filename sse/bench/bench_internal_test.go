package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"kvsse/sse/server/servertest"
)

// TestMain removes the kvsse binary that TestBenchBaseline built.
func TestMain(m *testing.M) { servertest.Main(m) }

// runBench runs "kvsse bench" (Run) against server and returns the
// parsed JSON figures, the whole output and Run's error.
func runBench(t *testing.T, server string, args ...string) (result, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	full := append([]string{"-json"}, args...)
	err := Run(ctx, full, server, &stdout, &stderr)
	out := stdout.String()
	var res result
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if jerr := json.Unmarshal([]byte(lines[len(lines)-1]), &res); jerr != nil {
		t.Fatalf("bench %q: last line is not JSON: %v\nstdout:\n%s\nstderr:\n%s\nerr: %v", args, jerr, out, stderr.String(), err)
	}
	return res, out, err
}

// checks are the figures that the correctness tests compare.
type checks struct {
	Writes, WriteErrors, Events, Expected, Gaps, Duplicates, OutOfOrder, Unexpected int64
}

func checksOf(r result) checks {
	return checks{r.Writes, r.WriteErrors, r.Events, r.Expected, r.Gaps, r.Duplicates, r.OutOfOrder, r.Unexpected}
}

func TestBenchRealServer(t *testing.T) {
	// Without fsync the test measures the bench, not the disk of a
	// shared machine; the streams and revisions are the same.
	ts := servertest.Start(t, "-sync", "none")
	tests := []struct {
		name   string
		args   []string
		writes int64
		perSub int64 // events each subscriber expects
	}{
		{
			name:   "sse all keys",
			args:   []string{"-prefix", "sse", "-writers", "4", "-writes", "2000", "-subscribers", "20"},
			writes: 2000,
			perSub: 2000,
		},
		{
			name:   "ndjson one key each",
			args:   []string{"-prefix", "nd", "-writers", "2", "-writes", "1000", "-subscribers", "20", "-format", "ndjson", "-keys", "100", "-pattern", "nd/%d", "-value-size", "100"},
			writes: 1000,
			perSub: 10, // 1000 writes over 100 keys
		},
		{
			name:   "long polls one key each",
			args:   []string{"-prefix", "lp", "-writers", "2", "-writes", "1000", "-subscribers", "20", "-format", "poll", "-keys", "100", "-pattern", "lp/%d", "-value-size", "100"},
			writes: 1000,
			perSub: 10,
		},
		{
			name:   "long polls all keys",
			args:   []string{"-prefix", "lpa", "-writers", "4", "-writes", "2000", "-subscribers", "20", "-format", "poll"},
			writes: 2000,
			perSub: 2000,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, out, err := runBench(t, ts.URL, tc.args...)
			if err != nil {
				t.Fatalf("bench: %v\n%s", err, out)
			}
			want := checks{Writes: tc.writes, Events: 20 * tc.perSub, Expected: 20 * tc.perSub}
			if diff := cmp.Diff(want, checksOf(res)); diff != "" {
				t.Errorf("figures (-want +got):\n%s\n%s", diff, out)
			}
			for _, line := range []string{`writes\s+` + strconv.FormatInt(tc.writes, 10), `events delivered\s+` + strconv.FormatInt(want.Events, 10), `gaps\s+0`, `duplicates\s+0`, `checks\s+ok`} {
				if !regexp.MustCompile(`(?m)^` + line + `$`).MatchString(out) {
					t.Errorf("output has no line %q:\n%s", line, out)
				}
			}
			if res.LatencyP50 <= 0 || res.LatencyP50 > res.LatencyP99 || res.LatencyP99 > res.LatencyMax {
				t.Errorf("latency p50 %v, p99 %v, max %v: want 0 < p50 <= p99 <= max", res.LatencyP50, res.LatencyP99, res.LatencyMax)
			}
			if res.PutP50 <= 0 || res.WritesPerSec <= 0 || res.EventsPerSec <= 0 {
				t.Errorf("put p50 %v, writes/s %v, events/s %v: want all positive", res.PutP50, res.WritesPerSec, res.EventsPerSec)
			}
		})
	}
	t.Run("pid figures", func(t *testing.T) {
		res, out, err := runBench(t, ts.URL, "-prefix", "p", "-writers", "2", "-writes", "100", "-subscribers", "2", "-pid", strconv.Itoa(os.Getpid()))
		if err != nil {
			t.Fatalf("bench: %v\n%s", err, out)
		}
		if s := res.Server; s == nil || s.RSSBeforeKiB <= 0 || s.RSSAfterKiB <= 0 || s.CPUSeconds < 0 {
			t.Errorf("server figures %+v:\n%s", s, out)
		}
	})
}

// fakeServer acknowledges PUTs with consecutive revisions and streams them
// to watchers, in SSE or NDJSON, resuming after Last-Event-ID, but lets
// send decide what a stream sends for each revision: a broken server.
// Each revision is sent as perRev events (a transaction's, from 1 on):
// only the last carries the id (SSE) or "last":true (NDJSON).
type fakeServer struct {
	// send returns the revisions to send for rev, in order, and whether
	// to end the stream after them. It is called by one stream at a time.
	send   func(rev int64) (revs []fakeRev, hangup bool)
	perRev int

	mu   sync.Mutex    // guards rev and wake
	rev  int64         // the last revision acknowledged
	wake chan struct{} // closed and replaced at each PUT

	lastEventIDs []string // the Last-Event-ID of each stream; guarded by mu
}

// fakeRev is a revision as fakeServer sends it: whole, or cut before its
// last event.
type fakeRev struct {
	rev int64
	cut bool
}

// whole is the revisions revs, each sent whole.
func whole(revs ...int64) []fakeRev {
	out := make([]fakeRev, len(revs))
	for i, r := range revs {
		out[i] = fakeRev{rev: r}
	}
	return out
}

func (f *fakeServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/kv/"):
		io.Copy(io.Discard, r.Body)
		f.mu.Lock()
		f.rev++
		rev := f.rev
		close(f.wake)
		f.wake = make(chan struct{})
		f.mu.Unlock()
		w.Header().Set("Kvsse-Revision", strconv.FormatInt(rev, 10))
		w.WriteHeader(http.StatusCreated)
	case r.Method == http.MethodGet && r.URL.Path == "/healthz":
	case r.Method == http.MethodGet && r.URL.Path == "/watch":
		f.stream(w, r)
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeServer) stream(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	cur := f.rev
	f.lastEventIDs = append(f.lastEventIDs, r.Header.Get("Last-Event-ID"))
	f.mu.Unlock()
	next := cur + 1
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		n, _ := strconv.ParseInt(id, 10, 64)
		next = n + 1
	}
	ndjson := r.URL.Query().Get("format") == "ndjson"
	w.Header().Set("Content-Type", "text/event-stream")
	rc := http.NewResponseController(w)
	write := func(x fakeRev) {
		for i := range max(f.perRev, 1) {
			last := i == max(f.perRev, 1)-1
			if last && x.cut {
				return
			}
			switch {
			case ndjson && last:
				fmt.Fprintf(w, "{\"event\":\"put\",\"key\":\"bench/0\",\"value\":\"x\",\"revision\":%d,\"last\":true}\n", x.rev)
			case ndjson:
				fmt.Fprintf(w, "{\"event\":\"put\",\"key\":\"bench/0\",\"value\":\"x\",\"revision\":%d}\n", x.rev)
			case last:
				fmt.Fprintf(w, "id: %d\nevent: put\ndata: {\"key\":\"bench/0\",\"value\":\"x\",\"revision\":%d}\n\n", x.rev, x.rev)
			default:
				fmt.Fprintf(w, "event: put\ndata: {\"key\":\"bench/0\",\"value\":\"x\",\"revision\":%d}\n\n", x.rev)
			}
		}
	}
	send := func(from, to int64, live bool) bool {
		for rev := from; rev <= to; rev++ {
			revs, hangup := whole(rev), false
			if live {
				revs, hangup = f.send(rev)
			}
			for _, x := range revs {
				write(x)
			}
			if hangup {
				return false
			}
		}
		return true
	}
	send(next, cur, false) // the replay
	if ndjson {
		fmt.Fprintf(w, "{\"event\":\"sync\",\"revision\":%d}\n", cur)
	} else {
		fmt.Fprintf(w, "retry: 2000\n\nid: %d\nevent: sync\ndata: {\"revision\":%d}\n\n", cur, cur)
	}
	rc.Flush()
	next = cur + 1
	for {
		f.mu.Lock()
		cur, wake := f.rev, f.wake
		f.mu.Unlock()
		if cur < next {
			select {
			case <-wake:
				continue
			case <-r.Context().Done():
				return
			}
		}
		ok := send(next, cur, true)
		rc.Flush()
		if !ok {
			return
		}
		next = cur + 1
	}
}

// TestBenchDetectsBrokenStreams runs the bench against broken servers,
// in both formats, with revisions of one event and of three (a
// transaction's): a revision counts once, at its last event, and the
// checks are per revision.
func TestBenchDetectsBrokenStreams(t *testing.T) {
	hangupOnce := func(cut bool) func() func(rev int64) ([]fakeRev, bool) {
		return func() func(rev int64) ([]fakeRev, bool) {
			var done atomic.Bool
			return func(rev int64) ([]fakeRev, bool) {
				if rev == 5 && done.CompareAndSwap(false, true) {
					return []fakeRev{{rev: 5, cut: cut}}, true
				}
				return whole(rev), false
			}
		}
	}
	// replace sends, for each revision in m, m's events instead of the
	// revision whole.
	replace := func(m map[int64][]fakeRev) func() func(rev int64) ([]fakeRev, bool) {
		return func() func(rev int64) ([]fakeRev, bool) {
			return func(rev int64) ([]fakeRev, bool) {
				if revs, ok := m[rev]; ok {
					return revs, false
				}
				return whole(rev), false
			}
		}
	}
	tests := []struct {
		name    string
		send    func() func(rev int64) ([]fakeRev, bool)
		multi   bool   // only with several events a revision
		wantErr string // "" for success
		want    checks
		wantIDs []string // the Last-Event-ID of each stream, when checked
	}{
		{
			name:    "gap",
			send:    replace(map[int64][]fakeRev{5: nil}),
			wantErr: "missed 1 of 10 changes (a gap), the lowest at revision 5",
			want:    checks{Writes: 10, Events: 9, Expected: 10, Gaps: 1},
		},
		{
			name:    "duplicate",
			send:    replace(map[int64][]fakeRev{5: whole(5, 5)}),
			wantErr: "1 duplicate changes",
			want:    checks{Writes: 10, Events: 11, Expected: 10, Duplicates: 1},
		},
		{
			name:    "out of order",
			send:    replace(map[int64][]fakeRev{5: nil, 6: whole(6, 5)}),
			wantErr: "1 changes out of order",
			want:    checks{Writes: 10, Events: 10, Expected: 10, OutOfOrder: 1},
		},
		{
			name:    "hang-up resumed",
			send:    hangupOnce(false),
			want:    checks{Writes: 10, Events: 10, Expected: 10},
			wantIDs: []string{"", "5"},
		},
		{
			// Cut inside revision 5: the stream resumes from before it
			// and gets it whole, counted once.
			name:    "hang-up inside a revision",
			send:    hangupOnce(true),
			multi:   true,
			want:    checks{Writes: 10, Events: 10, Expected: 10},
			wantIDs: []string{"", "4"},
		},
		{
			// Revision 5's last event never comes: it was not received.
			name: "revision never ended",
			send: func() func(rev int64) ([]fakeRev, bool) {
				return func(rev int64) ([]fakeRev, bool) {
					return []fakeRev{{rev: rev, cut: rev == 5}}, false
				}
			},
			multi:   true,
			wantErr: "missed 1 of 10 changes (a gap), the lowest at revision 5",
			want:    checks{Writes: 10, Events: 9, Expected: 10, Gaps: 1},
		},
	}
	for _, tc := range tests {
		for _, format := range []string{"sse", "ndjson"} {
			for _, perRev := range []int{1, 3} {
				if tc.multi && perRev == 1 {
					continue
				}
				writes := "single writes"
				if perRev > 1 {
					writes = fmt.Sprintf("transactions of %d", perRev)
				}
				t.Run(tc.name+"/"+format+"/"+writes, func(t *testing.T) {
					f := &fakeServer{send: tc.send(), perRev: perRev, wake: make(chan struct{})}
					srv := httptest.NewServer(f)
					defer srv.Close()
					// The bench's own -server wins over the one it is given (the
					// program's -server).
					res, out, err := runBench(t, "http://127.0.0.1:1", "-server", srv.URL, "-format", format, "-writers", "1", "-writes", "10", "-subscribers", "1", "-sync-timeout", "5s")
					switch {
					case tc.wantErr == "" && err != nil:
						t.Fatalf("bench: %v\n%s", err, out)
					case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
						t.Fatalf("bench returned %v, want an error with %q\n%s", err, tc.wantErr, out)
					}
					if diff := cmp.Diff(tc.want, checksOf(res)); diff != "" {
						t.Errorf("figures (-want +got):\n%s\n%s", diff, out)
					}
					if tc.wantIDs != nil {
						f.mu.Lock()
						ids := f.lastEventIDs
						f.mu.Unlock()
						if diff := cmp.Diff(tc.wantIDs, ids); diff != "" || res.Reconnects != 1 {
							t.Errorf("reconnects %d, Last-Event-IDs (-want +got):\n%s", res.Reconnects, diff)
						}
					}
				})
			}
		}
	}
}

// TestBenchParseAllocs holds the stream parser to no allocation per event,
// and to counting each revision once, one in ten of them a transaction of
// three events.
func TestBenchParseAllocs(t *testing.T) {
	var sseStream, ndStream bytes.Buffer
	sseStream.WriteString("retry: 2000\n\nid: 100\nevent: sync\ndata: {\"revision\":100}\n\n")
	ndStream.WriteString("{\"event\":\"sync\",\"revision\":100}\n")
	sent := time.Now().UnixNano()
	for rev := 101; rev <= 1100; rev++ {
		if rev%10 == 0 { // a transaction: two more changes before the last
			for i := range 2 {
				fmt.Fprintf(&sseStream, "event: put\ndata: {\"key\":\"txn/%d\",\"value\":\"%dxxxxx\",\"revision\":%d}\n\n", i, sent, rev)
				fmt.Fprintf(&ndStream, "{\"event\":\"put\",\"key\":\"txn/%d\",\"value\":\"%dxxxxx\",\"revision\":%d}\n", i, sent, rev)
			}
		}
		fmt.Fprintf(&sseStream, "id: %d\nevent: put\ndata: {\"key\":\"bench/%d\",\"value\":\"%dxxxxx\",\"revision\":%d}\n\n", rev, rev, sent, rev)
		fmt.Fprintf(&ndStream, "{\"event\":\"put\",\"key\":\"bench/%d\",\"value\":\"%dxxxxx\",\"revision\":%d,\"last\":true}\n", rev, sent, rev)
		if rev%100 == 0 {
			sseStream.WriteString(": keep-alive\nid: " + strconv.Itoa(rev) + "\n\n")
			fmt.Fprintf(&ndStream, "{\"event\":\"heartbeat\",\"revision\":%d}\n", rev)
		}
	}
	for _, tc := range []struct {
		name   string
		ndjson bool
		data   []byte
	}{{"sse", false, sseStream.Bytes()}, {"ndjson", true, ndStream.Bytes()}} {
		t.Run(tc.name, func(t *testing.T) {
			s := &subscriber{ndjson: tc.ndjson, ready: func(error) {}}
			r := bytes.NewReader(tc.data)
			if err := s.read(r); err != io.EOF {
				t.Fatalf("read: %v", err)
			}
			if s.events != 1000 || s.dups != 0 || s.outOfOrder != 0 || s.last.Load() != 1100 || s.lat.n != 1000 {
				t.Fatalf("events %d, dups %d, out of order %d, last %d, latencies %d; want 1000, 0, 0, 1100, 1000",
					s.events, s.dups, s.outOfOrder, s.last.Load(), s.lat.n)
			}
			// A connection costs its reader; an event costs nothing: the
			// same events twice over take no more allocations than once.
			double := append(append([]byte(nil), tc.data...), tc.data[bytes.IndexByte(tc.data, '\n')+1:]...)
			allocs := func(data []byte) float64 {
				return testing.AllocsPerRun(5, func() {
					r.Reset(data)
					s.read(r)
				})
			}
			once, twice := allocs(tc.data), allocs(double)
			if twice > once {
				t.Errorf("%v allocations to parse 1000 events, %v for 2000: want no allocation per event", once, twice)
			}
			if once > 20 {
				t.Errorf("%v allocations for one connection's reader, want at most 20", once)
			}
		})
	}
}

func TestBenchHistogram(t *testing.T) {
	var h histogram
	for v := int64(1); v <= 1_000_000; v++ {
		h.record(v * 1000) // 1 µs to 1 s, evenly
	}
	for _, q := range []float64{0.5, 0.9, 0.99} {
		want := q * 1e9
		if got := float64(h.quantile(q)); math.Abs(got-want)/want > 0.01 {
			t.Errorf("quantile %v = %v, want %v within 1 %%", q, time.Duration(got), time.Duration(want))
		}
	}
	if h.max != 1e9 {
		t.Errorf("max %v, want 1s", time.Duration(h.max))
	}
	for v := int64(0); v < 1<<20; v += 7 {
		if i := histBucket(v); i < 0 || i >= histBuckets || (i > 0 && histBucket(v-1) > i) {
			t.Fatalf("bucket of %d: %d", v, i)
		}
	}
}

// TestBenchBaseline runs "bench -baseline" against a kvsse server: the
// same load against the hub (a child process) and then the server, one
// table of both, and both runs' checks passing.
func TestBenchBaseline(t *testing.T) {
	ts := servertest.Start(t, "-sync", "none")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	args := []string{"-json", "-baseline", "-baseline-exe", servertest.Binary(t),
		"-prefix", "base", "-writers", "2", "-writes", "1000", "-subscribers", "10", "-pid", strconv.Itoa(os.Getpid())}
	err := Run(ctx, args, ts.URL, &stdout, &stderr)
	out := stdout.String()
	if err != nil {
		t.Fatalf("bench -baseline: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.String())
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) < 4 || !strings.Contains(lines[0], "ratio: kvsse / baseline") || lines[1] != "" {
		t.Fatalf("no caption and blank line first:\n%s", out)
	}

	// The table: rows of a name (26 columns), baseline, kvsse and ratio.
	var names []string
	for _, line := range lines[2 : len(lines)-1] {
		if len(line) < 26 {
			t.Fatalf("short row %q:\n%s", line, out)
		}
		name, f := strings.TrimSpace(line[:26]), strings.Fields(line[26:])
		names = append(names, name)
		switch {
		case name == "":
			if diff := cmp.Diff([]string{"baseline", "kvsse", "ratio"}, f); diff != "" {
				t.Errorf("header (-want +got):\n%s", diff)
			}
		case name == "checks":
			if diff := cmp.Diff([]string{"ok", "ok"}, f); diff != "" {
				t.Errorf("checks (-want +got):\n%s", diff)
			}
		case name == "writes" || name == "events delivered" || name == "reconnects":
			if len(f) != 2 || f[0] != f[1] {
				t.Errorf("row %q: want the same count twice", line)
			}
		case strings.HasPrefix(name, "server "):
			// Measured in /proc ticks of 10 ms, and, for the server in
			// this process, with the test's own memory: noise, "-" when
			// there is no ratio to make.
			if r, err := strconv.ParseFloat(f[len(f)-1], 64); f[len(f)-1] != "-" && (err != nil || r < 0) {
				t.Errorf("row %q: no ratio or \"-\" last", line)
			}
		default:
			if r, err := strconv.ParseFloat(f[len(f)-1], 64); err != nil || r <= 0 {
				t.Errorf("row %q: no positive ratio last", line)
			}
		}
	}
	wantNames := []string{"", "writes", "writes/s", "put latency p50", "put latency p99",
		"events delivered", "events/s", "latency p50", "latency p99", "reconnects",
		"server cpu", "server cpu per event", "server cpu per write", "server rss per subscriber", "server rss after",
		"checks"}
	if diff := cmp.Diff(wantNames, names); diff != "" {
		t.Errorf("rows (-want +got):\n%s\n%s", diff, out)
	}

	var res struct {
		Baseline, Kvsse result
		Ratios          map[string]float64
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil {
		t.Fatalf("last line is not JSON: %v\n%s", err, out)
	}
	want := checks{Writes: 1000, Events: 10 * 1000, Expected: 10 * 1000}
	for name, r := range map[string]result{"baseline": res.Baseline, "kvsse": res.Kvsse} {
		if diff := cmp.Diff(want, checksOf(r)); diff != "" {
			t.Errorf("%s figures (-want +got):\n%s", name, diff)
		}
		if r.Server == nil || r.Server.CPUSeconds < 0 || r.Server.RSSAfterKiB <= 0 {
			t.Errorf("%s server figures %+v", name, r.Server)
		}
	}
	for _, k := range []string{"writes_per_sec", "events_per_sec", "latency_p99_ms", "put_p99_ms"} {
		if res.Ratios[k] <= 0 {
			t.Errorf("ratio %s = %v, want positive", k, res.Ratios[k])
		}
	}
}

// TestBenchTxn: with -txn the writers change -txn keys at a time by
// transactions, subscribers receive each transaction's revision once, and
// keys/s counts the keys changed.
func TestBenchTxn(t *testing.T) {
	ts := servertest.Start(t, "-sync", "none", "-write-rate", "0")
	for _, format := range []string{"sse", "ndjson"} {
		t.Run(format, func(t *testing.T) {
			res, out, err := runBench(t, ts.URL, "-txn", "5", "-keys", "20", "-writes", "60", "-writers", "4",
				"-subscribers", "3", "-format", format, "-prefix", "txn-"+format)
			if err != nil {
				t.Fatalf("bench: %v\n%s", err, out)
			}
			// Every subscriber matches every key: 60 revisions each.
			want := checks{Writes: 60, Events: 180, Expected: 180}
			if diff := cmp.Diff(want, checksOf(res)); diff != "" {
				t.Errorf("checks (-want +got):\n%s", diff)
			}
			if res.Txn != 5 || res.KeysPerSec != 5*res.WritesPerSec {
				t.Errorf("txn %d, keys/s %v, writes/s %v; want keys/s = 5 × writes/s", res.Txn, res.KeysPerSec, res.WritesPerSec)
			}
			if got := servertest.List(t, ts.URL, "txn-"+format+"/"); len(got) != 20 {
				t.Errorf("%d keys written, want 20", len(got))
			}
		})
	}
	var ue *UsageError
	if err := Run(context.Background(), []string{"-txn", "30", "-keys", "20"}, ts.URL, io.Discard, io.Discard); !errors.As(err, &ue) {
		t.Errorf("-txn above -keys: %v, want a usage error", err)
	}
}
