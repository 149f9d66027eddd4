package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"kvsse/sse"
	"kvsse/sse/server/servertest"
)

// Black-box tests of the event stream (API.md, "The event stream"): each
// starts the real server in this process (servertest), writes over HTTP
// and reads /watch streams with sse.Reader (servertest.Open) or bufio.

func sseStr(s string) *string { return &s }

// sseCheckLines fails unless every line of a raw SSE stream is a known
// field, a comment or blank, with no CR anywhere, and every data line is
// one JSON object.
func sseCheckLines(t *testing.T, raw string) {
	t.Helper()
	if strings.ContainsRune(raw, '\r') {
		t.Errorf("raw CR in the stream:\n%q", raw)
	}
	for _, line := range strings.Split(raw, "\n") {
		switch {
		case line == "", strings.HasPrefix(line, ":"),
			strings.HasPrefix(line, "retry: "), strings.HasPrefix(line, "id: "), strings.HasPrefix(line, "event: "):
		case strings.HasPrefix(line, "data: "):
			if d := strings.TrimPrefix(line, "data: "); !json.Valid([]byte(d)) || d[0] != '{' {
				t.Errorf("data line is not one JSON object: %q", line)
			}
		default:
			t.Errorf("unexpected line %q (a raw line break in a field?)", line)
		}
	}
}

// sseStartWatch starts a server on be and opens the stream of path (the
// URL's path and query) on it, read up to its sync: it gets every change
// made after.
func sseStartWatch(t *testing.T, be servertest.Backend, path string) (*servertest.Server, *servertest.Stream) {
	t.Helper()
	ts := be.Start(t)
	s := servertest.Open(t, ts.URL+path, nil)
	s.Sync(t)
	return ts, s
}

func TestSSEPutDelete(t *testing.T) { servertest.ForEachBackend(t, testSSEPutDelete) }

func testSSEPutDelete(t *testing.T, be servertest.Backend) {
	ts, s := sseStartWatch(t, be, "/watch/t/**")

	bin := []byte{0xff, 0x00, 0xfe, 'a', 0x80, '\n'}
	tricky := "line1\r\nline2\rline3\n\"quoted\" \\back\\ \x00 \t tab \u2028 é"
	r1 := servertest.Put(t, ts.URL, "t/a", "v1")
	r2 := servertest.Put(t, ts.URL, "t/a", "v2")
	r3 := servertest.PutBytes(t, ts.URL, "t/bin", bin)
	r4 := servertest.Put(t, ts.URL, `t/"q" é`, tricky)
	r5 := servertest.Del(t, ts.URL, "t/a")
	want := []servertest.Event{
		{ID: servertest.ID(r1), Event: "put", Data: servertest.Change{Key: "t/a", Value: sseStr("v1"), Revision: r1}},
		{ID: servertest.ID(r2), Event: "put", Data: servertest.Change{Key: "t/a", Value: sseStr("v2"), Revision: r2, PrevRevision: r1}},
		{ID: servertest.ID(r3), Event: "put", Data: servertest.Change{Key: "t/bin", Value: sseStr(base64.StdEncoding.EncodeToString(bin)), Encoding: "base64", Revision: r3}},
		{ID: servertest.ID(r4), Event: "put", Data: servertest.Change{Key: `t/"q" é`, Value: sseStr(tricky), Revision: r4}},
		{ID: servertest.ID(r5), Event: "delete", Data: servertest.Change{Key: "t/a", Revision: r5, PrevRevision: r2, Reason: "deleted"}},
	}
	got := s.Events(t, len(want))
	if got[4].Data.PrevRevision == 0 {
		// The contract's example delete has no prev_revision; when one is
		// sent it must be the key's revision before the delete.
		want[4].Data.PrevRevision = 0
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	s.Close()
	sseCheckLines(t, s.Raw())
}

func TestSSERetryThenSync(t *testing.T) { servertest.ForEachBackend(t, testSSERetryThenSync) }

func testSSERetryThenSync(t *testing.T, be servertest.Backend) {
	ts := be.Start(t)
	servertest.Put(t, ts.URL, "a", "1")
	servertest.Put(t, ts.URL, "other", "x")
	rev := servertest.Del(t, ts.URL, "a")

	s := servertest.Open(t, ts.URL+"/watch/**", nil)
	got0 := s.Next(t)
	if id, err := strconv.ParseInt(got0.ID, 10, 64); err == nil {
		rev = be.StoreRev(rev, id)
	}
	// Retry set means the retry line came first.
	want0 := sse.Message{ID: servertest.ID(rev), Event: "sync", Data: fmt.Sprintf(`{"revision":%d}`, rev), Retry: 2 * time.Second}
	if diff := cmp.Diff(want0, got0); diff != "" {
		t.Errorf("first message (-want +got):\n%s", diff)
	}
	r1 := servertest.Put(t, ts.URL, "a", "2")
	r2 := servertest.Put(t, ts.URL, "b/c", "3")
	got := s.Events(t, 2)
	want := []servertest.Event{
		{ID: servertest.ID(r1), Event: "put", Data: servertest.Change{Key: "a", Value: sseStr("2"), Revision: r1}},
		{ID: servertest.ID(r2), Event: "put", Data: servertest.Change{Key: "b/c", Value: sseStr("3"), Revision: r2}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("live events (-want +got):\n%s", diff)
	}
	s.Close()
	raw := s.Raw()
	if !strings.HasPrefix(raw, "retry: 2000\n") {
		t.Errorf("stream starts with %q, want the line retry: 2000", servertest.Tail(raw[:min(len(raw), 40)]))
	}
	if n := strings.Count(raw, "event: sync\n"); n != 1 {
		t.Errorf("%d sync events, want 1:\n%s", n, raw)
	}
}

func TestSSEHeaders(t *testing.T) { servertest.ForEachBackend(t, testSSEHeaders) }

func testSSEHeaders(t *testing.T, be servertest.Backend) {
	ts := be.Start(t)
	rev := servertest.Put(t, ts.URL, "h/a", "1")
	for _, tt := range []struct {
		path   string
		header http.Header
	}{
		{"/watch/h/**", nil},
		{"/watch?pattern=h/*&pattern=x", nil},
		{"/watch/h/**?snapshot=1", nil},
		{"/watch/h/**?since=" + servertest.ID(rev-1), nil},
		{"/watch/h/**", http.Header{"Last-Event-Id": {servertest.ID(rev + 1)}}}, // reset
		{"/watch/h/**", http.Header{"Accept": {"text/event-stream"}}},           // as EventSource asks
	} {
		t.Run(tt.path, func(t *testing.T) {
			s := servertest.Open(t, ts.URL+tt.path, tt.header)
			defer s.Close()
			ct, _, err := mime.ParseMediaType(s.Header.Get("Content-Type"))
			got := map[string]string{
				"Content-Type":      ct,
				"Cache-Control":     s.Header.Get("Cache-Control"),
				"X-Accel-Buffering": s.Header.Get("X-Accel-Buffering"),
			}
			want := map[string]string{
				"Content-Type":      "text/event-stream",
				"Cache-Control":     "no-cache",
				"X-Accel-Buffering": "no",
			}
			if err != nil {
				t.Errorf("Content-Type %q: %v", s.Header.Get("Content-Type"), err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("headers (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSSEPatterns(t *testing.T) { servertest.ForEachBackend(t, testSSEPatterns) }

func testSSEPatterns(t *testing.T, be servertest.Backend) {
	tests := []struct {
		name     string
		patterns []string
		match    []string // keys whose writes are delivered
		other    []string // keys whose writes are not
	}{
		{"star in a segment", []string{"user-*"},
			[]string{"user-1", "user-", "user-a-b"},
			[]string{"user", "users-1", "xuser-1", "user-1/x"}},
		{"stars in a segment", []string{"p/a*b*c"},
			[]string{"p/abc", "p/aXbYc", "p/abbc"},
			[]string{"p/acb", "p/ab", "p/abcd", "p/xabc"}},
		{"star segment", []string{"jobs/*/status"},
			[]string{"jobs/1/status", "jobs/abc-def/status"},
			[]string{"jobs/status", "jobs/1/2/status", "jobs/1/statusx", "jobs/1", "jobs/1/status/x"}},
		{"trailing double star", []string{"config/**"},
			[]string{"config/a", "config/a/b/c", "config/z"},
			[]string{"config", "configx/a", "conf/a", "x/config/a"}},
		{"star then double star", []string{"svc/*-log/**"},
			[]string{"svc/web-log/1", "svc/-log/a/b"},
			[]string{"svc/web-log", "svc/web/1", "svc/a/web-log/1"}},
		{"double star alone", []string{"**"},
			[]string{"a", "b/c/d", "zz"},
			nil},
		{"several patterns", []string{"a/*", "b/**", "a/x", "exact"},
			[]string{"a/x", "a/y", "b/1/2", "exact", "b/c"},
			[]string{"a/x/y", "b", "c/1", "a", "exactly"}},
		{"overlapping patterns", []string{"o/**", "o/*", "o/k", "o/*/**"},
			[]string{"o/k", "o/k/l", "o/m"},
			[]string{"o", "ok"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := be.Start(t, "-sync", "none")
			u := ts.URL + "/watch/" + tt.patterns[0]
			if len(tt.patterns) > 1 {
				u = ts.URL + "/watch?" + url.Values{"pattern": tt.patterns}.Encode()
			}
			s := servertest.Open(t, u, nil)
			s.Sync(t)
			sep := "?"
			if strings.Contains(u, "?") {
				sep = "&"
			}

			type delivered struct {
				Key string
				Rev int64
			}

			var want []delivered
			for i := range max(len(tt.match), len(tt.other)) {
				if i < len(tt.other) {
					servertest.Put(t, ts.URL, tt.other[i], "no")
				}
				if i < len(tt.match) {
					k := tt.match[i]
					want = append(want, delivered{k, servertest.Put(t, ts.URL, k, "yes")})
				}
			}
			readUpTo := func(s *servertest.Stream, rev int64) []delivered {
				t.Helper()
				var got []delivered
				for _, e := range s.Until(t, func(e servertest.Event) bool { return e.Data.Revision >= rev }) {
					got = append(got, delivered{e.Data.Key, e.Data.Revision})
				}
				return got
			}
			fenceRev := servertest.Put(t, ts.URL, tt.match[0], "fence")
			want = append(want, delivered{tt.match[0], fenceRev})
			if diff := cmp.Diff(want, readUpTo(s, fenceRev)); diff != "" {
				t.Errorf("live (-want +got):\n%s", diff)
			}

			// The snapshot and the replay filter the same keys.
			wantSnap := map[string]int64{}
			for _, d := range want {
				wantSnap[d.Key] = d.Rev
			}
			snap := servertest.Open(t, u+sep+"snapshot=1", nil)
			gotSnap := map[string]int64{}
			for _, e := range snap.Until(t, func(e servertest.Event) bool { return e.Event == "sync" }) {
				if e.Event == "put" {
					gotSnap[e.Data.Key] = e.Data.Revision
				}
			}
			snap.Close()
			if diff := cmp.Diff(wantSnap, gotSnap); diff != "" {
				t.Errorf("snapshot (-want +got):\n%s", diff)
			}
			replay := servertest.Open(t, u+sep+"since=0", nil)
			if diff := cmp.Diff(want, readUpTo(replay, fenceRev)); diff != "" {
				t.Errorf("replay (-want +got):\n%s", diff)
			}
			replay.Close()

			// Deletes of other keys are not delivered either.
			for _, k := range tt.other {
				servertest.Del(t, ts.URL, k)
			}
			fenceRev = servertest.Put(t, ts.URL, tt.match[0], "fence")
			if diff := cmp.Diff([]delivered{{tt.match[0], fenceRev}}, readUpTo(s, fenceRev)); diff != "" {
				t.Errorf("live after deleting other keys (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSSEBadRequest(t *testing.T) { servertest.ForEachBackend(t, testSSEBadRequest) }

func testSSEBadRequest(t *testing.T, be servertest.Backend) {
	ts := be.Start(t)
	servertest.Put(t, ts.URL, "a/b", "1")
	many := url.Values{}
	for i := range 65 {
		many.Add("pattern", fmt.Sprintf("p%d/**", i))
	}
	tests := []struct {
		name   string
		path   string
		header http.Header
	}{
		{"double star inside a segment", "/watch/a**", nil},
		{"double star not last", "/watch/**/a", nil},
		{"double star in the middle", "/watch?pattern=a/**/b", nil},
		{"control character", "/watch?pattern=a%0Ab", nil},
		{"empty pattern", "/watch?pattern=", nil},
		{"no pattern", "/watch", nil},
		{"one bad pattern among good ones", "/watch?pattern=a/*&pattern=b/&pattern=c", nil},
		{"too long", "/watch/" + strings.Repeat("a", 1025), nil},
		{"65 patterns", "/watch?" + many.Encode(), nil},
		{"since not a number", "/watch/a/*?since=abc", nil},
		{"since negative", "/watch/a/*?since=-1", nil},
		{"Last-Event-ID negative", "/watch/a/*", http.Header{"Last-Event-Id": {"-1"}}},
		{"Last-Event-ID negative wins over since", "/watch/a/*?since=1", http.Header{"Last-Event-Id": {"-1"}}},
		{"Last-Event-ID not a number", "/watch/a/*", http.Header{"Last-Event-Id": {"x1"}}},
		{"double slash", "/watch/a//b", nil},
		{"leading double slash", "/watch//a", nil},
		{"trailing slash", "/watch/a/", nil},
		{"dot segment", "/watch/a/./b", nil},
		{"dot dot segment", "/watch/a/../b", nil},
		{"dot dot to another pattern", "/watch/x/../a/b", nil},
		{"events other than put or delete", "/watch/a/*?events=expire", nil},
		{"events as a list", "/watch/a/*?events=put,delete", nil},
		{"prev not 0 or 1", "/watch/a/*?prev=yes", nil},
		{"coalesce not 0 or 1", "/watch/a/*?coalesce=2", nil},
		{"poll not 0 or 1", "/watch/a/*?poll=on", nil},
		{"poll with wait", "/watch/a/*?poll=1&wait=1s", nil},
		{"wait not a duration", "/watch/a/*?wait=soon", nil},
		{"wait not positive", "/watch/a/*?wait=-1s", nil},
		{"wait zero", "/watch/a/*?wait=0s", nil},
		{"wait above -max-wait", "/watch/a/*?wait=6m", nil},
		{"limit without a poll", "/watch/a/*?limit=5", nil},
		{"limit zero", "/watch/a/*?poll=1&limit=0", nil},
		{"limit negative", "/watch/a/*?poll=1&limit=-3", nil},
		{"limit above the most", "/watch/a/*?poll=1&limit=10001", nil},
		{"limit not a number", "/watch/a/*?wait=1s&limit=ten", nil},
	}
	codeRE := regexp.MustCompile(`^[a-z]+(_[a-z]+)*$`)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), servertest.Timeout)
			defer cancel()
			resp, err := servertest.Get(ctx, ts.URL+tt.path, tt.header)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("status %s (%s), want 400", resp.Status, resp.Header.Get("Content-Type"))
			}
			b, _ := io.ReadAll(resp.Body)
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			var body struct {
				Error string `json:"error"`
				Code  string `json:"code"`
			}
			if err := json.Unmarshal(b, &body); err != nil || body.Error == "" || !codeRE.MatchString(body.Code) {
				t.Errorf("body %s (%v), want JSON with error and a snake_case code", b, err)
			}
			// A bad option's error names it: one of the request's
			// parameters or headers.
			u, _ := url.Parse(tt.path)
			var names []string
			for name := range u.Query() {
				if name != "pattern" {
					names = append(names, name)
				}
			}
			for name := range tt.header {
				names = append(names, name)
			}
			lower := strings.ToLower(body.Error)
			if len(names) > 0 && !slices.ContainsFunc(names, func(n string) bool { return strings.Contains(lower, strings.ToLower(n)) }) {
				t.Errorf("error %q names none of the parameters %q", body.Error, names)
			}
		})
	}

	t.Run("64 patterns accepted", func(t *testing.T) {
		q := url.Values{}
		for i := range 64 {
			q.Add("pattern", fmt.Sprintf("p%d/**", i))
		}
		s := servertest.Open(t, ts.URL+"/watch?"+q.Encode(), nil)
		s.Sync(t)
		rev := servertest.Put(t, ts.URL, "p63/x", "1")
		if e := servertest.EventOf(t, s.Next(t)); e.ID != servertest.ID(rev) {
			t.Errorf("got %+v, want the put of p63/x at %d", e, rev)
		}
	})
}

func TestSSESnapshotConcurrentWriter(t *testing.T) {
	servertest.ForEachBackend(t, testSSESnapshotConcurrentWriter)
}

func testSSESnapshotConcurrentWriter(t *testing.T, be servertest.Backend) {
	ts := be.Start(t, "-sync", "none")
	const keys = 300
	errc := make(chan error, 8)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < keys; i += 4 {
				if _, err := servertest.Write(http.MethodPut, servertest.KeyURL(ts.URL, fmt.Sprintf("s/%03d", i)), []byte("init")); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errc:
		t.Fatal(err)
	default:
	}

	// The writer runs while the snapshot is taken and sent, and goes on
	// for 50 writes after the stream is live.
	synced := make(chan struct{})
	started := make(chan struct{})
	lastRev := make(chan int64, 1)
	go func() {
		var last int64
		stopAt := -1
		for i := 0; stopAt < 0 || i < stopAt; i++ {
			if i == 20 {
				close(started)
			}
			if stopAt < 0 {
				select {
				case <-synced:
					stopAt = i + 50
				default:
				}
			}
			k := servertest.KeyURL(ts.URL, fmt.Sprintf("s/%03d", (i*7)%keys))
			method, body := http.MethodPut, []byte(fmt.Sprintf("v%d", i))
			if i%3 == 2 {
				method, body = http.MethodDelete, nil
			}
			rev, err := servertest.Write(method, k, body)
			if err != nil && method == http.MethodDelete && strings.Contains(err.Error(), "404 Not Found") {
				continue // deleted already
			}
			if err != nil {
				errc <- err
				return
			}
			last = rev
		}
		lastRev <- last
	}()
	select {
	case <-started:
	case err := <-errc:
		t.Fatal(err)
	}

	s := servertest.Open(t, ts.URL+"/watch/s/**?snapshot=1", nil)
	state := map[string]servertest.Entry{}
	var syncRev int64
	for syncRev == 0 {
		e := servertest.EventOf(t, s.Next(t))
		switch {
		case e.Event == "sync":
			syncRev = e.Data.Revision
			if e.ID != servertest.ID(syncRev) {
				t.Fatalf("sync %+v: id is not its revision", e)
			}
		case e.Event == "put" && e.ID == "" && e.Data.Value != nil:
			if _, dup := state[e.Data.Key]; dup {
				t.Errorf("snapshot sends %q twice", e.Data.Key)
			}
			state[e.Data.Key] = servertest.Entry{Value: *e.Data.Value, Revision: e.Data.Revision}
		default:
			t.Fatalf("got %+v before sync, want snapshot puts with no id", e)
		}
	}
	close(synced)

	var last int64
	select {
	case last = <-lastRev:
	case err := <-errc:
		t.Fatal(err)
	case <-time.After(servertest.Timeout):
		t.Fatal("writer did not finish")
	}
	if last <= syncRev {
		t.Fatalf("writer's last revision %d is not after the sync at %d", last, syncRev)
	}
	prev := syncRev
	for _, e := range s.Until(t, func(e servertest.Event) bool { return e.Data.Revision >= last }) {
		if e.ID != servertest.ID(e.Data.Revision) || e.Data.Revision <= prev {
			t.Fatalf("live event %+v after revision %d: want id = revision, increasing", e, prev)
		}
		prev = e.Data.Revision
		switch e.Event {
		case "put":
			state[e.Data.Key] = servertest.Entry{Value: *e.Data.Value, Revision: e.Data.Revision}
		case "delete":
			delete(state, e.Data.Key)
		default:
			t.Fatalf("unexpected live event %+v", e)
		}
	}
	s.Close()
	if diff := cmp.Diff(servertest.List(t, ts.URL, "s/"), state); diff != "" {
		t.Errorf("state rebuilt from the stream (-listing +stream):\n%s", diff)
	}
}

// sseReplay reads s up to its sync event, which it includes, and returns
// the events as ops; an event whose id is not its revision fails the
// test.
func sseReplay(t *testing.T, s *servertest.Stream) []servertest.Op {
	t.Helper()
	var got []servertest.Op
	for _, e := range s.Until(t, func(e servertest.Event) bool { return e.Event == "sync" }) {
		if e.ID != servertest.ID(e.Data.Revision) {
			t.Errorf("replayed %+v: id is not the revision", e)
		}
		got = append(got, servertest.Op{Rev: e.Data.Revision, Event: e.Event, Key: e.Data.Key})
	}
	return got
}

func TestSSESince(t *testing.T) { servertest.ForEachBackend(t, testSSESince) }

func testSSESince(t *testing.T, be servertest.Backend) {
	ts := be.Start(t)
	first := servertest.Put(t, ts.URL, "w/a", "1")
	r0 := servertest.Put(t, ts.URL, "w/b", "1")
	var want []servertest.Op
	add := func(rev int64, event, key string) {
		want = append(want, servertest.Op{Rev: rev, Event: event, Key: key})
	}
	add(servertest.Put(t, ts.URL, "w/a", "2"), "put", "w/a")
	servertest.Put(t, ts.URL, "x/a", "no")
	add(servertest.Del(t, ts.URL, "w/b"), "delete", "w/b")
	add(servertest.Put(t, ts.URL, "w/c/d", "3"), "put", "w/c/d")
	servertest.Put(t, ts.URL, "wx", "no")
	add(servertest.Put(t, ts.URL, "w/a", "4"), "put", "w/a")
	cur := servertest.Put(t, ts.URL, "y", "no")

	tests := []struct {
		name   string
		query  string
		header http.Header
		from   int64 // the revision the replay starts after
	}{
		{"since", "?since=" + servertest.ID(r0), nil, r0},
		{"since ignores snapshot", "?snapshot=1&since=" + servertest.ID(r0), nil, r0},
		{"Last-Event-ID", "", http.Header{"Last-Event-Id": {servertest.ID(r0)}}, r0},
		{"Last-Event-ID wins over since", "?since=1", http.Header{"Last-Event-Id": {servertest.ID(r0)}}, r0},
		{"Last-Event-ID wins over a bad since", "?since=abc", http.Header{"Last-Event-Id": {servertest.ID(r0)}}, r0},
		{"Last-Event-ID ignores snapshot", "?snapshot=1", http.Header{"Last-Event-Id": {servertest.ID(r0)}}, r0},
		{"since 0 replays everything", "?since=0", nil, 0},
		{"since the current revision", "?since=" + servertest.ID(cur), nil, cur},
	}
	all := append([]servertest.Op{{Rev: first, Event: "put", Key: "w/a"}, {Rev: r0, Event: "put", Key: "w/b"}}, want...)
	storeRev := cur
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := servertest.Open(t, ts.URL+"/watch/w/**"+tt.query, tt.header)
			var replay []servertest.Op
			for _, op := range all {
				if op.Rev > tt.from {
					replay = append(replay, op)
				}
			}
			replay = append(replay, servertest.Op{Rev: storeRev, Event: "sync", Key: ""})
			got := sseReplay(t, s)
			replay[len(replay)-1].Rev = be.StoreRev(storeRev, got[len(got)-1].Rev)
			if diff := cmp.Diff(replay, got); diff != "" {
				t.Errorf("replay then sync (-want +got):\n%s", diff)
			}
			key := "w/live/" + strings.ReplaceAll(tt.name, " ", "-")
			live := servertest.Put(t, ts.URL, key, "x")
			all = append(all, servertest.Op{Rev: live, Event: "put", Key: key}) // later cases replay it
			storeRev = live
			if e := servertest.EventOf(t, s.Next(t)); e.ID != servertest.ID(live) || e.Event != "put" {
				t.Errorf("after sync got %+v, want the live put at %d", e, live)
			}
		})
	}
}

func TestSSEResumeLastEventID(t *testing.T) { servertest.ForEachBackend(t, testSSEResumeLastEventID) }

func testSSEResumeLastEventID(t *testing.T, be servertest.Backend) {
	ts, s1 := sseStartWatch(t, be, "/watch/r/**")

	halfway, done := servertest.GoWriters(ts.URL, "r/", 4, 200, "v")

	// The first client reads part of the first half, then drops.
	var got []servertest.Op
	var lastID string
	for _, e := range s1.Events(t, 150) {
		got = append(got, servertest.Op{Rev: e.Data.Revision, Event: e.Event, Key: e.Data.Key})
		lastID = e.ID
	}
	s1.Close()
	close(halfway)

	s2 := servertest.Open(t, ts.URL+"/watch/r/**", http.Header{"Last-Event-ID": {lastID}})
	acked, resumed := servertest.Resumed(t, s2, done, 2*servertest.Timeout)
	if diff := cmp.Diff(acked, append(got, resumed...)); diff != "" {
		t.Errorf("both streams together (-acknowledged +delivered):\n%s", diff)
	}
}

func TestSSEReset(t *testing.T) {
	ts := servertest.Start(t, "-history", "10")
	var ops []servertest.Op
	for i := range 30 {
		k := fmt.Sprintf("h/%d", i%4)
		if i%5 == 4 {
			ops = append(ops, servertest.Op{Rev: servertest.Del(t, ts.URL, k), Event: "delete", Key: k})
		} else {
			ops = append(ops, servertest.Op{Rev: servertest.Put(t, ts.URL, k, fmt.Sprintf("v%d", i)), Event: "put", Key: k})
		}
	}
	servertest.Put(t, ts.URL, "other", "x")
	cur := servertest.Put(t, ts.URL, "h/x", "last")
	ops = append(ops, servertest.Op{Rev: cur, Event: "put", Key: "h/x"})
	listing := servertest.List(t, ts.URL, "h/")

	tests := []struct {
		name   string
		query  string
		header http.Header
		reason string // "" for a replay
	}{
		{"history", "", http.Header{"Last-Event-Id": {"2"}}, "history"},
		{"history from 0", "?since=0", nil, "history"},
		{"history just too old", "?since=" + servertest.ID(cur-11), nil, "history"},
		{"oldest kept", "?since=" + servertest.ID(cur-10), nil, ""},
		{"future", "", http.Header{"Last-Event-Id": {servertest.ID(cur + 1)}}, "future"},
		{"future since", "?since=" + servertest.ID(cur+100), nil, "future"},
		{"future wins over snapshot", "?snapshot=1", http.Header{"Last-Event-Id": {servertest.ID(cur + 5)}}, "future"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := servertest.Open(t, ts.URL+"/watch/h/**"+tt.query, tt.header)
			if tt.reason == "" {
				// The 10 changes kept are the 9 last of ops and "other".
				want := append(ops[len(ops)-9:len(ops):len(ops)], servertest.Op{Rev: cur, Event: "sync", Key: ""})
				got := sseReplay(t, s)
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("replay then sync (-want +got):\n%s", diff)
				}
				return
			}
			first := servertest.EventOf(t, s.Next(t))
			want := servertest.Event{Event: "reset", Data: servertest.Change{Revision: cur, Reason: tt.reason}}
			if diff := cmp.Diff(want, first); diff != "" {
				t.Fatalf("first event (-want +got):\n%s", diff)
			}
			got := map[string]servertest.Entry{}
			e := servertest.EventOf(t, s.Next(t))
			for ; e.Event != "sync"; e = servertest.EventOf(t, s.Next(t)) {
				if e.Event != "put" || e.ID != "" || e.Data.Value == nil {
					t.Fatalf("got %+v, want snapshot puts with no id", e)
				}
				got[e.Data.Key] = servertest.Entry{Value: *e.Data.Value, Revision: e.Data.Revision}
			}
			if diff := cmp.Diff(listing, got); diff != "" {
				t.Errorf("snapshot after reset (-listing +stream):\n%s", diff)
			}
			if want := (servertest.Event{ID: servertest.ID(cur), Event: "sync", Data: servertest.Change{Revision: cur}}); e != want {
				t.Errorf("got %+v after the snapshot, want %+v", e, want)
			}
		})
	}
}

func TestSSEResumeAfterRestart(t *testing.T) {
	ts := servertest.Start(t)
	dir := ts.Dir
	s := servertest.Open(t, ts.URL+"/watch/rs/**", nil)
	s.Sync(t)
	var want []servertest.Op
	for i := range 3 {
		servertest.Put(t, ts.URL, fmt.Sprintf("rs/%d", i), "before")
	}
	got := s.Events(t, 3)
	lastID := got[2].ID
	s.Close()

	want = append(want, servertest.Op{Rev: servertest.Put(t, ts.URL, "rs/0", "after"), Event: "put", Key: "rs/0"})
	servertest.Put(t, ts.URL, "zz", "not watched")
	want = append(want, servertest.Op{Rev: servertest.Del(t, ts.URL, "rs/1"), Event: "delete", Key: "rs/1"})
	want = append(want, servertest.Op{Rev: servertest.Put(t, ts.URL, "rs/new/key", "after"), Event: "put", Key: "rs/new/key"})
	last := servertest.Put(t, ts.URL, "zz", "not watched")
	ts.Stop(t)

	ts2 := servertest.Start(t, "-data", dir)
	s2 := servertest.Open(t, ts2.URL+"/watch/rs/**", http.Header{"Last-Event-ID": {lastID}})
	want = append(want, servertest.Op{Rev: last, Event: "sync", Key: ""})
	replay := sseReplay(t, s2)
	if diff := cmp.Diff(want, replay); diff != "" {
		t.Errorf("replay then sync after restart (-want +got):\n%s", diff)
	}
	next := servertest.Put(t, ts2.URL, "rs/0", "restarted")
	if next <= last {
		t.Errorf("revision %d after the restart, want above %d", next, last)
	}
	if e := servertest.EventOf(t, s2.Next(t)); e.ID != servertest.ID(next) {
		t.Errorf("live event %+v, want the put at %d", e, next)
	}
}

func TestSSESlowSubscriber(t *testing.T) {
	// -sync none: this is about the feed, not the log; it saves an fsync
	// per batch of the 20,000 writes.
	ts := servertest.Start(t, "-sub-buffer", "64", "-sync", "none")
	conn, rd := servertest.OpenAtSync(t, ts.URL, "/watch/slow/**", 0)
	// From here on the client reads nothing until every write is done.

	const writers, total = 8, 20_000
	value := strings.Repeat("v", 1000) // 20 MB of events: far more than socket buffers hold
	done := make(chan servertest.Result, 1)
	start := time.Now()
	var progress atomic.Int64
	go func() {
		ops, err := servertest.Writers(ts.URL, "slow/", writers, total/writers, value, nil, &progress)
		done <- servertest.Result{Ops: ops, Err: err}
	}()
	// Writers that never block keep making progress, however slow the
	// machine: fail when none completes a write for servertest.Timeout.
	var res servertest.Result
	tick := time.NewTicker(servertest.Timeout)
	defer tick.Stop()
	for seen := int64(-1); res.Ops == nil; {
		select {
		case res = <-done:
			if res.Err != nil {
				t.Fatal(res.Err)
			}
		case <-tick.C:
			n := progress.Load()
			if n == seen {
				t.Fatalf("writers blocked: stuck at %d writes for %v", n, servertest.Timeout)
			}
			seen = n
		}
	}
	t.Logf("%d writes in %v", len(res.Ops), time.Since(start))

	var got []servertest.Op
	conn.SetReadDeadline(time.Now().Add(servertest.Timeout))
	for {
		m, err := rd.Next()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("the server did not close the slow stream (%d events read)", len(got))
			}
			break
		}
		e := servertest.EventOf(t, m)
		got = append(got, servertest.Op{Rev: e.Data.Revision, Event: e.Event, Key: e.Data.Key})
	}
	if len(got) >= total {
		t.Fatalf("the slow stream delivered all %d events: it was not disconnected", len(got))
	}
	lastID := rd.LastEventID()
	t.Logf("slow stream dropped after %d events, last id %s", len(got), lastID)

	s := servertest.Open(t, ts.URL+"/watch/slow/**", http.Header{"Last-Event-ID": {lastID}})
	final := res.Ops[len(res.Ops)-1].Rev
	for _, e := range s.Until(t, func(e servertest.Event) bool { return e.Event == "sync" }) {
		if e.Event == "sync" {
			if e.Data.Revision != final {
				t.Errorf("sync at %d, want %d", e.Data.Revision, final)
			}
			continue
		}
		got = append(got, servertest.Op{Rev: e.Data.Revision, Event: e.Event, Key: e.Data.Key})
	}
	// slices.Equal first: cmp.Diff of 20,000 items is slow under -race.
	if !slices.Equal(res.Ops, got) {
		t.Errorf("slow stream then resumed stream (-acknowledged +delivered):\n%s", cmp.Diff(res.Ops, got))
	}
}

// TestSSECoalesce: a coalescing stream whose client stops reading while
// writers hammer 20 keys stays open, skips revisions but never goes back,
// and the state its client builds equals the final listing when its last
// event id reaches the last write.
func TestSSECoalesce(t *testing.T) { servertest.ForEachBackend(t, testSSECoalesce) }

func testSSECoalesce(t *testing.T, be servertest.Backend) {
	args := []string{"-sub-buffer", "64"}
	if be.Dense {
		args = append(args, "-sync", "none") // the embedded store's log
	}
	ts := be.Start(t, args...)
	// From the sync on the client reads nothing until every write is done:
	// 4 writers on 5 keys each, 20 MB of events. On etcd, whose writes are
	// slower, 6 MB to a client with a small receive buffer: the flood must
	// end well within the 30 s that a write to a client that reads nothing
	// may wait before the server cuts it off.
	const writers = 4
	total, rcvBuf := 20_000, 0
	if !be.Dense {
		total, rcvBuf = 6_000, 64<<10
	}
	conn, rd := servertest.OpenAtSync(t, ts.URL, "/watch/co/**?coalesce=1", rcvBuf)
	ops, err := servertest.Writers(ts.URL, "co/", writers, total/writers, strings.Repeat("v", 1000), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	final := servertest.ID(ops[len(ops)-1].Rev)

	state := map[string]int64{}
	events, last := 0, int64(0)
	conn.SetReadDeadline(time.Now().Add(servertest.Timeout))
	for rd.LastEventID() != final {
		m, err := rd.Next()
		if err != nil {
			t.Fatalf("the coalescing stream ended after %d events, last id %s (want %s): %v", events, rd.LastEventID(), final, err)
		}
		e := servertest.EventOf(t, m)
		if e.Data.Revision < last {
			t.Fatalf("revision %d after %d", e.Data.Revision, last)
		}
		last = e.Data.Revision
		events++
		switch e.Event {
		case "put":
			state[e.Data.Key] = e.Data.Revision
		case "delete":
			delete(state, e.Data.Key)
		default:
			t.Fatalf("unexpected %s event", e.Event)
		}
	}
	t.Logf("%d writes reached the stalled client as %d events", total, events)
	if events >= total {
		t.Fatalf("the stream sent all %d events: it never coalesced", events)
	}
	want := map[string]int64{}
	for k, e := range servertest.List(t, ts.URL, "co/") {
		want[k] = e.Revision
	}
	if diff := cmp.Diff(want, state); diff != "" {
		t.Errorf("state built from the stream vs the listing (-listing +stream):\n%s", diff)
	}
}

func TestSSEExpiry(t *testing.T) { servertest.ForEachBackend(t, testSSEExpiry) }

func testSSEExpiry(t *testing.T, be servertest.Backend) {
	ts, s := sseStartWatch(t, be, "/watch/e/**")
	rev, err := servertest.Write(http.MethodPut, servertest.KeyURL(ts.URL, "e/k")+fmt.Sprintf("?ttl=%ds", be.TTL), []byte("soon gone"))
	if err != nil {
		t.Fatal(err)
	}
	put := servertest.EventOf(t, s.Next(t))
	if put.ID != servertest.ID(rev) || put.Event != "put" {
		t.Fatalf("got %+v, want the put at %d", put, rev)
	}
	// The put says when the key expires, so that a page can show it.
	ttl := time.Duration(be.TTL) * time.Second
	if exp, err := time.Parse(time.RFC3339Nano, put.Data.Expires); err != nil || time.Until(exp) > ttl || time.Until(exp) < -time.Second {
		t.Errorf("the put's expires %q (%v), want about %v from now", put.Data.Expires, err, ttl)
	}
	start := time.Now()
	got := servertest.EventOf(t, s.Next(t)) // Next fails after servertest.Timeout
	del := rev + 1
	if be.After(rev, got.Data.Revision) {
		del = got.Data.Revision
	}
	want := servertest.Event{ID: servertest.ID(del), Event: "delete", Data: servertest.Change{Key: "e/k", Revision: del, PrevRevision: rev, Reason: "expired"}}
	if got.Data.PrevRevision == 0 {
		want.Data.PrevRevision = 0 // see TestSSEPutDelete
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("expiry (-want +got):\n%s", diff)
	}
	if d := time.Since(start); d > time.Duration(be.TTL)*time.Second+4*time.Second {
		t.Errorf("expired after %v, want about %ds", d, be.TTL)
	}
	resp, err := servertest.Client.Get(servertest.KeyURL(ts.URL, "e/k"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET of the expired key: %s, want 404", resp.Status)
	}
}

// sseLines reads a stream line by line (bufio), recording what it read.
type sseLines struct {
	br  *bufio.Reader
	raw bytes.Buffer
}

func (l *sseLines) next(t *testing.T) string {
	t.Helper()
	line, err := l.br.ReadString('\n')
	l.raw.WriteString(line)
	if err != nil {
		t.Fatalf("reading the stream: %v\nread so far:\n%s", err, servertest.Tail(l.raw.String()))
	}
	return strings.TrimSuffix(line, "\n")
}

// sseOpenLines opens a stream read by the test goroutine itself; the
// request ends after servertest.Timeout at the latest, so that no read
// blocks longer.
func sseOpenLines(t *testing.T, u string, header http.Header) (*http.Response, *sseLines) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), servertest.Timeout)
	t.Cleanup(cancel)
	resp, err := servertest.Get(ctx, u, header)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s: %s", u, resp.Status, b)
	}
	return resp, &sseLines{br: bufio.NewReader(resp.Body)}
}

func TestSSEHeartbeat(t *testing.T) { servertest.ForEachBackend(t, testSSEHeartbeat) }

func testSSEHeartbeat(t *testing.T, be servertest.Backend) {
	ts := be.Start(t, "-heartbeat", "200ms")
	r1 := servertest.Put(t, ts.URL, "hb/a", "1")

	t.Run("sse", func(t *testing.T) {
		_, l := sseOpenLines(t, ts.URL+"/watch/hb/**", nil)
		// A write the stream does not show: only a heartbeat tells the
		// client that the store moved on.
		rev := servertest.Put(t, ts.URL, "elsewhere/sse", "x")
		start := time.Now()
		beats := 0
		for {
			line := l.next(t)
			if line != ": keep-alive" {
				continue
			}
			beats++
			id := l.next(t)
			if blank := l.next(t); blank != "" {
				t.Fatalf("heartbeat %q then %q, want a blank line", id, blank)
			}
			if id == "id: "+servertest.ID(rev) {
				break
			}
			if id != "id: "+servertest.ID(r1) {
				t.Fatalf("heartbeat with %q, want id: %d or id: %d", id, r1, rev)
			}
		}
		if d := time.Since(start); d > 3*time.Second || beats > 10 {
			t.Errorf("%d heartbeats in %v with -heartbeat 200ms", beats, d)
		}
		rd := sse.NewReader(bytes.NewReader(l.raw.Bytes()))
		var msgs []sse.Message
		for {
			m, err := rd.Next()
			if err != nil {
				break
			}
			msgs = append(msgs, m)
		}
		want := []sse.Message{{ID: servertest.ID(r1), Event: "sync", Data: fmt.Sprintf(`{"revision":%d}`, r1), Retry: 2 * time.Second}}
		if diff := cmp.Diff(want, msgs); diff != "" {
			t.Errorf("messages dispatched (-want +got):\n%s", diff)
		}
		if got := rd.LastEventID(); got != servertest.ID(rev) {
			t.Errorf("LastEventID %q after the heartbeat, want %d", got, rev)
		}
	})

	t.Run("ndjson", func(t *testing.T) {
		base := servertest.Put(t, ts.URL, "elsewhere/base", "x")
		_, l := sseOpenLines(t, ts.URL+"/watch/hb/**?format=ndjson", nil)
		first, err := servertest.Decode(l.next(t))
		if diff := cmp.Diff(servertest.Change{Event: "sync", Revision: base}, first); err != nil || diff != "" {
			t.Fatalf("first line (-want +got): %v\n%s", err, diff)
		}
		rev := servertest.Put(t, ts.URL, "elsewhere/ndjson", "x")
		for {
			c, err := servertest.Decode(l.next(t))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(servertest.Change{Event: "heartbeat", Revision: rev}, c); diff == "" {
				break
			} else if c.Event != "heartbeat" || c.Revision != base || c.Key != "" {
				t.Fatalf("heartbeat (-want +got):\n%s", diff)
			}
		}
	})
}

func TestSSENDJSON(t *testing.T) { servertest.ForEachBackend(t, testSSENDJSON) }

func testSSENDJSON(t *testing.T, be servertest.Backend) {
	bin := []byte{0xc3, 0x28, 0x00}
	syncAt := func(rev int64) servertest.Change { return servertest.Change{Event: "sync", Revision: rev} }
	tests := []struct {
		name   string
		query  string
		header func(cur int64) http.Header
		// want is the catch-up, given the puts of n/a and n/b (as a
		// snapshot shows them) and the store's revision.
		want func(a, b servertest.Change, cur int64) []servertest.Change
	}{
		{"format", "?format=ndjson", nil,
			func(a, b servertest.Change, cur int64) []servertest.Change { return []servertest.Change{syncAt(cur)} }},
		{"Accept", "", func(int64) http.Header { return http.Header{"Accept": {"application/x-ndjson"}} },
			func(a, b servertest.Change, cur int64) []servertest.Change { return []servertest.Change{syncAt(cur)} }},
		{"snapshot", "?format=ndjson&snapshot=1", nil,
			func(a, b servertest.Change, cur int64) []servertest.Change {
				return []servertest.Change{a, b, syncAt(cur)}
			}},
		{"since", "?format=ndjson&since={r1}", nil,
			func(a, b servertest.Change, cur int64) []servertest.Change {
				b.Last = true // a replayed change, the last of its revision; snapshot items carry no "last"
				return []servertest.Change{b, syncAt(cur)}
			}},
		{"reset", "?format=ndjson", func(cur int64) http.Header { return http.Header{"Last-Event-Id": {servertest.ID(cur + 1)}} },
			func(a, b servertest.Change, cur int64) []servertest.Change {
				return []servertest.Change{{Event: "reset", Revision: cur, Reason: "future"}, a, b, syncAt(cur)}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := be.Start(t, "-sync", "none")
			r1 := servertest.Put(t, ts.URL, "n/a", "1\n2")
			r2 := servertest.PutBytes(t, ts.URL, "n/b", bin)
			servertest.Put(t, ts.URL, "x", "other")
			cur := servertest.Put(t, ts.URL, "x", "other")
			a := servertest.Change{Event: "put", Key: "n/a", Value: sseStr("1\n2"), Revision: r1}
			b := servertest.Change{Event: "put", Key: "n/b", Value: sseStr(base64.StdEncoding.EncodeToString(bin)), Encoding: "base64", Revision: r2}
			var header http.Header
			if tt.header != nil {
				header = tt.header(cur)
			}
			resp, l := sseOpenLines(t, ts.URL+"/watch/n/**"+strings.ReplaceAll(tt.query, "{r1}", servertest.ID(r1)), header)
			if ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); ct != "application/x-ndjson" {
				t.Errorf("Content-Type %q, want application/x-ndjson", resp.Header.Get("Content-Type"))
			}
			var got []servertest.Change
			read := func(n int) {
				for range n {
					line := l.next(t)
					c, err := servertest.Decode(line)
					if err != nil || line[0] != '{' {
						t.Fatalf("line %q: %v", line, err)
					}
					got = append(got, c)
				}
			}
			want := tt.want(a, b, cur)
			read(len(want))
			for i := range want {
				if want[i].Event == "sync" || want[i].Event == "reset" {
					want[i].Revision = be.StoreRev(cur, got[i].Revision)
				}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("catch-up (-want +got):\n%s", diff)
			}
			p1 := servertest.Put(t, ts.URL, "n/live", "x")
			p2 := servertest.Put(t, ts.URL, "n/live", "\"y\"\r\n")
			d := servertest.Del(t, ts.URL, "n/live")
			got = got[:0]
			read(3)
			live := []servertest.Change{
				{Event: "put", Key: "n/live", Value: sseStr("x"), Revision: p1, Last: true},
				{Event: "put", Key: "n/live", Value: sseStr("\"y\"\r\n"), Revision: p2, PrevRevision: p1, Last: true},
				{Event: "delete", Key: "n/live", Revision: d, PrevRevision: p2, Reason: "deleted", Last: true},
			}
			if got[2].PrevRevision == 0 {
				live[2].PrevRevision = 0 // see TestSSEPutDelete
			}
			if diff := cmp.Diff(live, got); diff != "" {
				t.Errorf("live (-want +got):\n%s", diff)
			}
			if raw := l.raw.String(); strings.Contains(raw, "retry:") || strings.Contains(raw, "\r") {
				t.Errorf("NDJSON stream with an SSE field or a raw CR:\n%q", raw)
			}
		})
	}
}

func TestSSEShutdown(t *testing.T) { servertest.ForEachBackend(t, testSSEShutdown) }

func testSSEShutdown(t *testing.T, be servertest.Backend) {
	ts, s := sseStartWatch(t, be, "/watch/**")
	nd := servertest.Open(t, ts.URL+"/watch/**?format=ndjson", nil)
	rev := servertest.Put(t, ts.URL, "a", "1")
	if e := servertest.EventOf(t, s.Next(t)); e.ID != servertest.ID(rev) {
		t.Fatalf("got %+v, want the put at %d", e, rev)
	}

	start := time.Now()
	ts.Stop(t) // fails the test unless server.Serve returns nil
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("shutdown with open streams took %v", d)
	}
	msgs, err := s.End(t)
	if len(msgs) != 0 || err != io.EOF {
		t.Errorf("stream ended with %v after %+v, want io.EOF after nothing more", err, msgs)
	}
	raw := s.Raw()
	if !regexp.MustCompile(`\n\nretry: [0-9]+\n\n$`).MatchString(raw) {
		t.Errorf("the stream does not end with a retry line:\n%s", servertest.Tail(raw))
	}
	// The NDJSON stream ends too; sse.Reader sees no message in it.
	if _, err := nd.End(t); err != io.EOF {
		t.Errorf("NDJSON stream ended with %v, want io.EOF", err)
	}
	if !strings.HasSuffix(nd.Raw(), fmt.Sprintf(`"revision":%d,"last":true}`+"\n", rev)) {
		t.Errorf("NDJSON stream ends with %q", servertest.Tail(nd.Raw()))
	}
}

// A client that stops reading must not hold the shutdown up: the server
// ends every stream and server.Serve returns nil within -shutdown-timeout.
func TestSSEShutdownStalledClient(t *testing.T) {
	ts := servertest.Start(t, "-sync", "none", "-shutdown-timeout", "2s")
	host := strings.TrimPrefix(ts.URL, "http://")
	conn, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /watch/big/** HTTP/1.1\r\nHost: %s\r\n\r\n", host)
	conn.SetReadDeadline(time.Now().Add(servertest.Timeout))
	resp, err := http.ReadResponse(bufio.NewReaderSize(conn, 512), nil)
	if err != nil {
		t.Fatal(err)
	}
	rd := sse.NewReader(resp.Body)
	if m, err := rd.Next(); err != nil || m.Event != "sync" {
		t.Fatalf("got %+v, %v; want the sync", m, err)
	}
	// 16 MB of events, more than the socket buffers hold, fewer events
	// than -sub-buffer: the stream's handler is left blocked in a write.
	c, err := servertest.Dial(ts.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	value := bytes.Repeat([]byte("v"), 64<<10)
	for i := range 256 {
		if _, err := c.Write(http.MethodPut, fmt.Sprintf("big/%d", i%8), value); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()

	start := time.Now()
	ts.Stop(t) // fails the test unless server.Serve returns nil
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("shutdown took %v with -shutdown-timeout 2s", d)
	}
}

func TestSSEMaxSubscribers(t *testing.T) {
	ts := servertest.Start(t, "-max-subscribers", "2")
	s1 := servertest.Open(t, ts.URL+"/watch/a", nil)
	s1.Sync(t)
	s2 := servertest.Open(t, ts.URL+"/watch/b?format=ndjson", nil)

	// A long poll holds a subscription as a stream does, waiting or not.
	for _, path := range []string{"/watch/c", "/watch/c?format=ndjson", "/watch?pattern=a&pattern=b&snapshot=1", "/watch/c?wait=1m", "/watch/c?poll=1"} {
		ctx, cancel := context.WithTimeout(context.Background(), servertest.Timeout)
		resp, err := servertest.Get(ctx, ts.URL+path, nil)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		var body struct {
			Error string `json:"error"`
			Code  string `json:"code"`
		}
		err = json.Unmarshal(b, &body)
		if resp.StatusCode != http.StatusTooManyRequests || err != nil || body.Code == "" || body.Error == "" ||
			!strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
			t.Errorf("third stream %s: %s %q %s, want 429 with a JSON error and code", path, resp.Status, resp.Header.Get("Content-Type"), b)
		}
	}

	// The slot of a stream frees once the server sees its client gone:
	// poll until a new stream is accepted.
	s1.Close()
	deadline := time.Now().Add(servertest.Timeout)
	var s3 *servertest.Stream
	for s3 == nil {
		ctx, cancel := context.WithCancel(context.Background())
		resp, err := servertest.Get(ctx, ts.URL+"/watch/c", nil)
		switch {
		case err != nil:
			cancel()
			t.Fatal(err)
		case resp.StatusCode == http.StatusOK:
			s3 = servertest.Wrap(t, resp, cancel)
		case resp.StatusCode != http.StatusTooManyRequests:
			t.Fatalf("new stream: %s", resp.Status)
		case time.Now().After(deadline):
			t.Fatalf("still 429 %v after a stream ended", servertest.Timeout)
		default:
			resp.Body.Close()
			cancel()
			time.Sleep(10 * time.Millisecond)
		}
	}
	s3.Sync(t)
	rev := servertest.Put(t, ts.URL, "c", "1")
	if e := servertest.EventOf(t, s3.Next(t)); e.ID != servertest.ID(rev) {
		t.Errorf("new stream got %+v, want the put at %d", e, rev)
	}
	s2.Close()
}

// TestSSEPacing: a busy stream flushes at most once an interval that
// grows with the streams open, up to -flush-interval. Events written right
// after the sync (itself a flush) wait for the interval to pass and then
// arrive together, in order.
func TestSSEPacing(t *testing.T) {
	// With 100 streams open a busy stream waits a tenth of -flush-interval
	// between two flushes; with 1,000 or more, all of it.
	const interval = time.Second
	const streams = 100
	pace := interval * streams / 1000
	ts := servertest.Start(t, "-sync", "none", "-flush-interval", interval.String())
	for range streams - 1 {
		idle := servertest.Open(t, ts.URL+"/watch/idle/**", nil)
		idle.Sync(t)
		defer idle.Close()
	}
	s := servertest.Open(t, ts.URL+"/watch/p/**", nil)
	defer s.Close()
	s.Sync(t)
	flushed := time.Now() // the sync was flushed at the latest now
	var revs []int64
	for i := range 3 {
		revs = append(revs, servertest.Put(t, ts.URL, fmt.Sprintf("p/%d", i), "v"))
	}
	evs := s.Events(t, 3)
	// The sync reached us after it was flushed, so the events may seem to
	// come a little early; without pacing they would come within
	// milliseconds, with the whole -flush-interval after 1 s.
	if waited := time.Since(flushed); waited < pace/2 || waited > interval/2 {
		t.Errorf("events arrived %v after the previous flush, want about %v", waited, pace)
	}
	for i, ev := range evs {
		if ev.ID != servertest.ID(revs[i]) {
			t.Errorf("event %d has id %s, want %d", i, ev.ID, revs[i])
		}
	}
}

// TestTxnStreamsWhole: writers change groups of keys by transactions,
// each setting every key of a group to one value. Listings, an SSE
// stream and an NDJSON stream, applied a revision at a time (at the event
// that ends it), never show a group that is not whole; the NDJSON stream
// is cut again and again, often in the middle of a transaction, and
// resumed with the Last-Event-ID of the last whole revision; both streams
// end with the state of the final listing.
func TestTxnStreamsWhole(t *testing.T) { servertest.ForEachBackend(t, testTxnStreamsWhole) }

func testTxnStreamsWhole(t *testing.T, be servertest.Backend) {
	const groups, keys, rounds = 3, 4, 30
	ts := be.Start(t, "-write-rate", "0")
	sseStream := servertest.Open(t, ts.URL+"/watch/tw/**", nil)
	start := sseStream.Sync(t)

	errc := make(chan error, groups+1)
	done := make(chan struct{})
	for g := range groups {
		go func() {
			for n := 1; n <= rounds; n++ {
				var ops []string
				for k := range keys {
					ops = append(ops, fmt.Sprintf(`{"put": "tw/g%d/%d", "value": "%d"}`, g, k, n))
				}
				ctx, cancel := context.WithTimeout(context.Background(), servertest.Timeout)
				resp, b, err := servertest.Do(ctx, servertest.Client, "POST", ts.URL+"/txn", `{"then": [`+strings.Join(ops, ",")+`]}`)
				cancel()
				if err == nil && resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("POST /txn: %s %s", resp.Status, b)
				}
				if err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	go func() { // listings, until the writers are done
		for {
			select {
			case <-done:
				errc <- nil
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), servertest.Timeout)
			resp, b, err := servertest.Do(ctx, servertest.Client, "GET", ts.URL+"/kv?prefix=tw/", "")
			cancel()
			var page servertest.Page
			if err == nil {
				err = json.Unmarshal(b, &page)
			}
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("listing: %s", resp.Status)
			}
			state := map[string]string{}
			for _, it := range page.Items {
				state[it.Key] = it.Value
			}
			if err == nil {
				err = txnWhole(state, groups, keys, "a listing")
			}
			if err != nil {
				errc <- err
				return
			}
		}
	}()
	for range groups {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	final := servertest.List(t, ts.URL, "tw/")
	want := map[string]string{}
	for key, e := range final {
		want[key] = e.Value
	}

	// SSE: a revision ends at the event whose own id is that revision.
	state, held := map[string]string{}, []servertest.Event{}
	for len(held) > 0 || cmp.Diff(want, state) != "" {
		e := servertest.EventOf(t, sseStream.Next(t))
		held = append(held, e)
		if e.ID != servertest.ID(e.Data.Revision) {
			continue // more of this revision follow
		}
		for _, h := range held {
			if h.Data.Revision != e.Data.Revision {
				t.Fatalf("SSE: a revision %d event before the end of revision %d", h.Data.Revision, e.Data.Revision)
			}
			state[h.Data.Key] = *h.Data.Value
		}
		held = held[:0]
		if err := txnWhole(state, groups, keys, "the SSE stream at "+e.ID); err != nil {
			t.Fatal(err)
		}
	}

	// NDJSON, cut every few lines and resumed.
	state = map[string]string{}
	rng := rand.New(rand.NewPCG(uint64(start), 7))
	last, cuts := start, 0
	for cmp.Diff(want, state) != "" {
		ctx, cancel := context.WithCancel(context.Background())
		resp, err := servertest.Get(ctx, ts.URL+"/watch/tw/**?format=ndjson", http.Header{"Last-Event-Id": {servertest.ID(last)}})
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		rd := sse.NewNDJSONReader(resp.Body, 0)
		var pending []servertest.Change
		for n := 1 + rng.IntN(12); n > 0; n-- {
			f, err := rd.NextFrame()
			if err != nil {
				cancel()
				t.Fatalf("NDJSON stream: %v", err)
			}
			c, err := servertest.Decode(string(f.Data))
			if err != nil {
				cancel()
				t.Fatal(err)
			}
			if c.Event != "put" {
				continue
			}
			pending = append(pending, c)
			if !c.Last {
				continue
			}
			for _, p := range pending {
				state[p.Key] = *p.Value
			}
			pending, last = pending[:0], c.Revision
			if err := txnWhole(state, groups, keys, "the NDJSON stream at "+servertest.ID(last)); err != nil {
				cancel()
				t.Fatal(err)
			}
			if cmp.Diff(want, state) == "" {
				break
			}
		}
		cancel() // a cut, maybe in the middle of a transaction: pending is dropped
		cuts++
	}
	t.Logf("%d transactions; the NDJSON stream was cut %d times", groups*rounds, cuts)
}

// txnWhole checks that every group of keys (tw/gG/K) in state is whole:
// every key of a group that has any holds the group's one value.
func txnWhole(state map[string]string, groups, keys int, where string) error {
	for g := range groups {
		var value string
		seen := 0
		for k := range keys {
			v, ok := state[fmt.Sprintf("tw/g%d/%d", g, k)]
			if !ok {
				continue
			}
			if seen > 0 && v != value {
				return fmt.Errorf("%s shows half a transaction: group %d holds %q and %q", where, g, value, v)
			}
			value, seen = v, seen+1
		}
		if seen != 0 && seen != keys {
			return fmt.Errorf("%s shows %d of the %d keys of group %d", where, seen, keys, g)
		}
	}
	return nil
}

func TestWatchEventsFilter(t *testing.T) { servertest.ForEachBackend(t, testWatchEventsFilter) }

// testWatchEventsFilter follows puts only and deletes only, live and in a
// replay, through single writes, an expiry and a transaction.
func testWatchEventsFilter(t *testing.T, be servertest.Backend) {
	ts := be.Start(t)
	servertest.Put(t, ts.URL, "ev/old", "1")
	puts := servertest.Open(t, ts.URL+"/watch/ev/**?events=put&snapshot=1", nil)
	deletes := servertest.Open(t, ts.URL+"/watch/ev/**?events=delete&snapshot=1", nil)
	if e := puts.Next(t); e.Event != "put" {
		t.Fatalf("events=put&snapshot=1 began with %q, want the snapshot's put", e.Event)
	}
	start := puts.Sync(t)
	if got := deletes.Sync(t); got != start {
		// events=delete leaves the snapshot's puts out.
		t.Fatalf("events=delete synced at %d, want %d with no snapshot items before", got, start)
	}

	servertest.Put(t, ts.URL, "ev/a", "1")
	servertest.Put(t, ts.URL, "ev/b", "1")
	servertest.Del(t, ts.URL, "ev/a")
	if code, _, b := servertest.Call(t, "PUT", ts.URL+"/kv/ev/ttl?ttl=1s", []byte("x")); code/100 != 2 {
		t.Fatalf("PUT with ttl: %d %s", code, b)
	}
	if code, _, b := servertest.Call(t, "POST", ts.URL+"/txn", []byte(`{"then": [{"put": "ev/c", "value": "1"}, {"delete": "ev/b"}]}`)); code != http.StatusOK {
		t.Fatalf("POST /txn: %d %s", code, b)
	}
	servertest.Put(t, ts.URL, "ev/end", "1") // a put after the expiry
	ttlGone := func(e servertest.Event) bool { return e.Data.Key == "ev/ttl" }

	type ev struct{ event, key string }
	seen := func(es []servertest.Event) (out []ev) {
		for _, e := range es {
			out = append(out, ev{e.Event, e.Data.Key})
		}
		return out
	}
	wantPuts := []ev{{"put", "ev/a"}, {"put", "ev/b"}, {"put", "ev/ttl"}, {"put", "ev/c"}, {"put", "ev/end"}}
	gotPuts := seen(puts.Until(t, func(e servertest.Event) bool { return e.Data.Key == "ev/end" }))
	if diff := cmp.Diff(wantPuts, gotPuts, cmp.AllowUnexported(ev{})); diff != "" {
		t.Errorf("events=put (-want +got):\n%s", diff)
	}
	wantDeletes := []ev{{"delete", "ev/a"}, {"delete", "ev/b"}, {"delete", "ev/ttl"}}
	gotDeletes := seen(deletes.Until(t, ttlGone))
	if diff := cmp.Diff(wantDeletes, gotDeletes, cmp.AllowUnexported(ev{})); diff != "" {
		t.Errorf("events=delete (-want +got):\n%s", diff)
	}

	// A replay keeps to the kinds asked for too.
	replay := servertest.Open(t, ts.URL+"/watch/ev/**?events=delete&since="+servertest.ID(start), nil)
	got := seen(replay.Until(t, ttlGone))
	if diff := cmp.Diff(wantDeletes, got, cmp.AllowUnexported(ev{})); diff != "" {
		t.Errorf("events=delete replay (-want +got):\n%s", diff)
	}
}

func TestWatchPrev(t *testing.T) { servertest.ForEachBackend(t, testWatchPrev) }

// prevRow is what a test of prev=1 compares of a change event.
type prevRow struct {
	Event, Key, Value    string
	PrevValue, PrevType  string
	PrevEncoding         string
	HasPrev, HasPrevType bool
}

func prevRowOf(event string, c servertest.Change) prevRow {
	r := prevRow{Event: event, Key: c.Key, PrevEncoding: c.PrevEncoding}
	if c.Value != nil {
		r.Value = *c.Value
	}
	if c.PrevValue != nil {
		r.PrevValue, r.HasPrev = *c.PrevValue, true
	}
	if c.PrevContentType != nil {
		r.PrevType, r.HasPrevType = *c.PrevContentType, true
	}
	return r
}

// testWatchPrev follows changes with prev=1, with a token that may read
// only the keys watched: live over SSE and NDJSON (HTTP/1.1, pooled), and
// replayed after a resume by since and by Last-Event-ID. Each put over a
// key and each delete (by a client, an expiry, a transaction) carries the
// value it replaced and its content type, in base64 when it is not UTF-8;
// a put that creates its key carries none; a stream without prev=1 never
// does.
func testWatchPrev(t *testing.T, be servertest.Backend) {
	const writer, reader = "prev-writer-secret", "prev-reader-secret"
	ts := be.Start(t, "-auth", servertest.AuthFile(t, "", `{"tokens": [
		{"name": "w", "token": "`+writer+`", "read": ["**"], "write": ["**"]},
		{"name": "r", "token": "`+reader+`", "read": ["pv/**"]}]}`))
	auth := http.Header{"Authorization": {"Bearer " + reader}}
	write := func(method, path, ctype string, body []byte) {
		t.Helper()
		code, _, b := servertest.Call(t, method, ts.URL+path, body, "Authorization", "Bearer "+writer, "Content-Type", ctype)
		if code/100 != 2 {
			t.Fatalf("%s %s: %d %s", method, path, code, b)
		}
	}
	write("PUT", "/kv/pv/a", "text/plain", []byte("one"))
	write("PUT", "/kv/pv/bin", "application/octet-stream", []byte{0xff, 0, 1})

	live := servertest.Open(t, ts.URL+"/watch/pv/**?prev=1", auth)
	plain := servertest.Open(t, ts.URL+"/watch/pv/**", auth)
	_, lines := sseOpenLines(t, ts.URL+"/watch/pv/**?prev=1&format=ndjson", auth)
	start := live.Sync(t)
	plain.Sync(t)
	if c, err := servertest.Decode(lines.next(t)); err != nil || c.Event != "sync" {
		t.Fatalf("NDJSON began with %+v, %v; want its sync", c, err)
	}

	write("PUT", "/kv/pv/a", "text/plain", []byte("two"))
	write("PUT", "/kv/pv/bin", "text/plain", []byte("x"))
	write("PUT", "/kv/pv/new", "text/plain", []byte("n"))
	write("DELETE", "/kv/pv/a", "", nil)
	write("PUT", fmt.Sprintf("/kv/pv/ttl?ttl=%ds", be.TTL), "text/plain", []byte("soon"))
	write("POST", "/txn", "application/json", []byte(`{"then": [{"put": "pv/new", "value": "m", "content_type": "text/plain"}, {"delete": "pv/bin"}]}`))
	write("PUT", "/kv/elsewhere", "text/plain", []byte("not watched"))

	want := []prevRow{
		{Event: "put", Key: "pv/a", Value: "two", PrevValue: "one", PrevType: "text/plain", HasPrev: true, HasPrevType: true},
		{Event: "put", Key: "pv/bin", Value: "x", PrevValue: base64.StdEncoding.EncodeToString([]byte{0xff, 0, 1}), PrevEncoding: "base64",
			PrevType: "application/octet-stream", HasPrev: true, HasPrevType: true},
		{Event: "put", Key: "pv/new", Value: "n"},
		{Event: "delete", Key: "pv/a", PrevValue: "two", PrevType: "text/plain", HasPrev: true, HasPrevType: true},
		{Event: "put", Key: "pv/ttl", Value: "soon"},
		{Event: "put", Key: "pv/new", Value: "m", PrevValue: "n", PrevType: "text/plain", HasPrev: true, HasPrevType: true},
		{Event: "delete", Key: "pv/bin", PrevValue: "x", PrevType: "text/plain", HasPrev: true, HasPrevType: true},
		{Event: "delete", Key: "pv/ttl", PrevValue: "soon", PrevType: "text/plain", HasPrev: true, HasPrevType: true},
	}
	// The expiry comes when it comes: compare in an order of their own.
	sorted := func(rows []prevRow) []prevRow {
		return slices.SortedFunc(slices.Values(rows), func(a, b prevRow) int {
			return strings.Compare(fmt.Sprint(a), fmt.Sprint(b))
		})
	}
	expired := func(event, key string) bool { return event == "delete" && key == "pv/ttl" }
	sseRows := func(s *servertest.Stream) (rows []prevRow) {
		for _, e := range s.Until(t, func(e servertest.Event) bool { return expired(e.Event, e.Data.Key) }) {
			rows = append(rows, prevRowOf(e.Event, e.Data))
		}
		return rows
	}
	ndjsonRows := func(l *sseLines) (rows []prevRow) {
		for {
			c, err := servertest.Decode(l.next(t))
			if err != nil {
				t.Fatal(err)
			}
			if c.Event == "heartbeat" {
				continue
			}
			rows = append(rows, prevRowOf(c.Event, c))
			if expired(c.Event, c.Key) {
				return rows
			}
		}
	}
	check := func(name string, got []prevRow) {
		t.Helper()
		if diff := cmp.Diff(sorted(want), sorted(got)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", name, diff)
		}
	}
	check("live SSE", sseRows(live))
	check("live NDJSON", ndjsonRows(lines))
	for _, e := range plain.Until(t, func(e servertest.Event) bool { return expired(e.Event, e.Data.Key) }) {
		if r := prevRowOf(e.Event, e.Data); r.HasPrev || r.HasPrevType || r.PrevEncoding != "" {
			t.Errorf("a stream without prev=1 got %+v", e)
		}
	}

	// A resume replays the changes from the history, previous values
	// included.
	replay := servertest.Open(t, ts.URL+"/watch/pv/**?prev=1&since="+servertest.ID(start), auth)
	check("replay SSE (since)", sseRows(replay))
	resumed := http.Header{"Authorization": auth["Authorization"], "Last-Event-Id": {servertest.ID(start)}}
	_, rlines := sseOpenLines(t, ts.URL+"/watch/pv/**?prev=1&format=ndjson", resumed)
	check("replay NDJSON (Last-Event-ID)", ndjsonRows(rlines))
}

// pollAnswer is a long poll's JSON answer.
type pollAnswer struct {
	Revision int64               `json:"revision"`
	Reset    string              `json:"reset,omitempty"`
	Events   []servertest.Change `json:"events"`
	Items    []struct {
		Key         string `json:"key"`
		Value       string `json:"value"`
		Revision    int64  `json:"revision"`
		ContentType string `json:"content_type"`
	} `json:"items"`
}

// longPoll sends the GET of a long poll and decodes its answer, which
// must be a 200 with a JSON body holding no unknown field.
func longPoll(t *testing.T, u string, hdr ...string) pollAnswer {
	t.Helper()
	code, h, b := servertest.Call(t, "GET", u, nil, hdr...)
	return decodePoll(t, u, code, h.Get("Content-Type"), b)
}

func decodePoll(t *testing.T, u string, code int, ctype string, b []byte) pollAnswer {
	t.Helper()
	if code != http.StatusOK || ctype != "application/json" {
		t.Fatalf("GET %s: %d %q %s, want 200 application/json", u, code, ctype, b)
	}
	var a pollAnswer
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil {
		t.Fatalf("GET %s: %v in %s", u, err, b)
	}
	if (a.Events == nil) == (a.Items == nil) && !bytes.Contains(b, []byte(`"items":[]`)) {
		t.Fatalf("GET %s: %s holds neither events nor items, or both", u, b)
	}
	return a
}

// pollOps are the changes of an answer as Ops, with "last" marked on
// the event.
func pollOps(es []servertest.Change) []servertest.Op {
	var out []servertest.Op
	for _, e := range es {
		ev := e.Event
		if e.Last {
			ev += " last"
		}
		out = append(out, servertest.Op{Rev: e.Revision, Event: ev, Key: e.Key})
	}
	return out
}

func TestLongPoll(t *testing.T) { servertest.ForEachBackend(t, testLongPoll) }

// testLongPoll: poll=1 answers at once with the matching changes after
// since, whole revisions within limit, and a revision that, passed back,
// never gives a change twice.
func testLongPoll(t *testing.T, be servertest.Backend) {
	ts := be.Start(t)
	w := ts.URL + "/watch/lp/**"
	first := longPoll(t, w+"?poll=1")
	if len(first.Events) != 0 {
		t.Fatalf("poll=1 without since answered %+v, want no event", first.Events)
	}
	start := first.Revision

	var want []servertest.Op
	rev := servertest.Put(t, ts.URL, "lp/a", "1")
	want = append(want, servertest.Op{Rev: rev, Event: "put last", Key: "lp/a"})
	other := servertest.Op{Rev: servertest.Put(t, ts.URL, "other", "x"), Event: "put last", Key: "other"}
	code, _, b := servertest.Call(t, "POST", ts.URL+"/txn", []byte(`{"then": [{"put": "lp/t1", "value": "1"}, {"put": "lp/t2", "value": "2"}, {"put": "lp/t3", "value": "3"}]}`))
	if code != http.StatusOK {
		t.Fatalf("POST /txn: %d %s", code, b)
	}
	var txn struct{ Revision int64 }
	if err := json.Unmarshal(b, &txn); err != nil {
		t.Fatal(err)
	}
	want = append(want, servertest.Op{Rev: txn.Revision, Event: "put", Key: "lp/t1"}, servertest.Op{Rev: txn.Revision, Event: "put", Key: "lp/t2"}, servertest.Op{Rev: txn.Revision, Event: "put last", Key: "lp/t3"})
	rev = servertest.Del(t, ts.URL, "lp/a")
	want = append(want, servertest.Op{Rev: rev, Event: "delete last", Key: "lp/a"})
	last := servertest.Put(t, ts.URL, "other", "y")

	all := longPoll(t, w+"?poll=1&since="+servertest.ID(start))
	if diff := cmp.Diff(want, pollOps(all.Events)); diff != "" {
		t.Errorf("poll=1 since %d (-want +got):\n%s", start, diff)
	}
	// Every matching change was sent: the revision is the store's, past
	// the non-matching write at the end.
	if all.Revision != be.StoreRev(last, all.Revision) {
		t.Errorf("poll=1 answered revision %d, want the store's %d", all.Revision, last)
	}
	if a := longPoll(t, w+"?poll=1&since="+servertest.ID(all.Revision)); len(a.Events) != 0 || a.Revision != all.Revision {
		t.Errorf("poll from the revision given back answered %+v, want nothing at %d", a, all.Revision)
	}
	if a := longPoll(t, w+"?poll=1", "Last-Event-ID", servertest.ID(start)); !cmp.Equal(pollOps(a.Events), want) {
		t.Errorf("poll=1 with Last-Event-ID %d answered %+v", start, a.Events)
	}

	tests := []struct {
		name  string
		since int64
		query string
		want  []servertest.Op
		rev   int64 // 0: the store's
	}{
		{"limit cuts before a transaction", start, "&limit=2", want[:1], want[0].Rev},
		{"limit cuts inside a transaction", start, "&limit=3", want[:1], want[0].Rev},
		{"a first transaction goes whole", want[0].Rev, "&limit=1", want[1:4], txn.Revision},
		{"limit holds all", start, "&limit=5", want, 0},
		{"events=delete", start, "&events=delete", want[4:], 0},
		{"events=put", start, "&events=put", want[:4], 0},
		{"several patterns", start, "&pattern=other", []servertest.Op{want[0], other, want[1], want[2], want[3], want[4], {Rev: last, Event: "put last", Key: "other"}}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := "?poll=1&since=" + servertest.ID(tt.since) + tt.query
			a := longPoll(t, w+q)
			if diff := cmp.Diff(tt.want, pollOps(a.Events)); diff != "" {
				t.Errorf("%s (-want +got):\n%s", q, diff)
			}
			wantRev := tt.rev
			if wantRev == 0 {
				wantRev = be.StoreRev(last, a.Revision)
			}
			if a.Revision != wantRev {
				t.Errorf("%s answered revision %d, want %d", q, a.Revision, wantRev)
			}
		})
	}

	// Passing the revision back, limit by limit, gives every change once.
	for _, limit := range []int{1, 2, 4} {
		var got []servertest.Op
		since := start
		for range 10 {
			a := longPoll(t, fmt.Sprintf("%s?poll=1&limit=%d&since=%d", w, limit, since))
			if len(a.Events) == 0 {
				break
			}
			got = append(got, pollOps(a.Events)...)
			since = a.Revision
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("limit=%d, since passed back (-want +got):\n%s", limit, diff)
		}
	}
}

func TestLongPollWait(t *testing.T) { servertest.ForEachBackend(t, testLongPollWait) }

// testLongPollWait: wait=D answers as soon as a matching change lands,
// not for one that does not match, and with no change once D is over.
func testLongPollWait(t *testing.T, be servertest.Backend) {
	ts := be.Start(t)
	w := ts.URL + "/watch/lw/**"
	start := longPoll(t, w+"?poll=1").Revision

	u := w + "?wait=300ms&since=" + servertest.ID(start)
	code, h, b := servertest.Call(t, "GET", u, nil)
	if a := decodePoll(t, u, code, h.Get("Content-Type"), b); !bytes.Contains(b, []byte(`"events":[]`)) || a.Revision < start {
		t.Errorf("a wait that ran out answered %s, want \"events\":[] at %d or later", b, start)
	}

	for _, tt := range []struct{ name, query string }{
		{"since", "?wait=1m&since=" + servertest.ID(start)},
		{"no since", "?wait=1m"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			type result struct {
				code  int
				ctype string
				body  []byte
				err   error
			}
			done := make(chan result, 1)
			go func() {
				resp, body, err := servertest.Do(context.Background(), servertest.Client, "GET", w+tt.query, "")
				if err != nil {
					done <- result{err: err}
					return
				}
				done <- result{resp.StatusCode, resp.Header.Get("Content-Type"), body, nil}
			}()
			waitSubscribers(t, ts.URL, 1)
			servertest.Put(t, ts.URL, "other", tt.name) // does not match: the wait goes on
			rev := servertest.Put(t, ts.URL, "lw/"+tt.name, "1")
			var r result
			select {
			case r = <-done:
			case <-time.After(servertest.Timeout):
				t.Fatalf("the wait did not answer within %v of a matching change", servertest.Timeout)
			}
			if r.err != nil {
				t.Fatal(r.err)
			}
			a := decodePoll(t, tt.query, r.code, r.ctype, r.body)
			want := []servertest.Op{{Rev: rev, Event: "put last", Key: "lw/" + tt.name}}
			if diff := cmp.Diff(want, pollOps(a.Events)); diff != "" {
				t.Errorf("wait answered (-want +got):\n%s", diff)
			}
			if a.Revision != be.StoreRev(rev, a.Revision) {
				t.Errorf("wait answered revision %d, want %d", a.Revision, rev)
			}
			start = a.Revision
			waitSubscribers(t, ts.URL, 0)
		})
	}

	// A client that gives up its wait frees its subscription.
	ctx, cancel := context.WithCancel(context.Background())
	gone := make(chan error, 1)
	go func() {
		_, _, err := servertest.Do(ctx, servertest.Client, "GET", w+"?wait=1m", "")
		gone <- err
	}()
	waitSubscribers(t, ts.URL, 1)
	cancel()
	if err := <-gone; err == nil {
		t.Error("a wait whose client gave up answered")
	}
	waitSubscribers(t, ts.URL, 0)
}

// waitSubscribers waits until the server's kvsse_subscribers gauge is n.
func waitSubscribers(t *testing.T, base string, n int) {
	t.Helper()
	want := fmt.Sprintf("\nkvsse_subscribers %d\n", n)
	deadline := time.Now().Add(servertest.Timeout)
	for {
		_, _, b := servertest.Call(t, "GET", base+"/metrics", nil)
		if bytes.Contains(b, []byte(want)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("kvsse_subscribers is not %d after %v", n, servertest.Timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestLongPollReset: a since the history no longer reaches, or one ahead
// of the store, answers the snapshot with "reset", as snapshot=1 does
// without it.
func TestLongPollReset(t *testing.T) {
	ts := servertest.Start(t, "-history", "10")
	var cur int64
	for i := range 30 {
		cur = servertest.Put(t, ts.URL, fmt.Sprintf("h/%d", i%4), fmt.Sprintf("v%d", i))
	}
	servertest.Put(t, ts.URL, "other", "x")
	cur = servertest.Put(t, ts.URL, "h/x", "last")
	listing := servertest.List(t, ts.URL, "h/")

	for _, tt := range []struct{ name, query, reset string }{
		{"history", "?poll=1&since=0", "history"},
		{"history with wait", "?wait=1m&since=2", "history"},
		{"future", "?poll=1&since=" + servertest.ID(cur+5), "future"},
		{"snapshot", "?poll=1&snapshot=1", ""},
		{"snapshot with wait", "?wait=1m&snapshot=1", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := longPoll(t, ts.URL+"/watch/h/**"+tt.query)
			if a.Reset != tt.reset || a.Revision != cur || a.Events != nil {
				t.Errorf("answered reset %q at %d with events %v, want reset %q at %d and items", a.Reset, a.Revision, a.Events, tt.reset, cur)
			}
			got := map[string]servertest.Entry{}
			for _, it := range a.Items {
				got[it.Key] = servertest.Entry{Value: it.Value, Revision: it.Revision}
			}
			if diff := cmp.Diff(listing, got); diff != "" {
				t.Errorf("items (-listing +poll):\n%s", diff)
			}
		})
	}
}

func TestLongPollShutdown(t *testing.T) { servertest.ForEachBackend(t, testLongPollShutdown) }

// testLongPollShutdown: a shutdown answers the waiting polls at once,
// with no change and the store's revision.
func testLongPollShutdown(t *testing.T, be servertest.Backend) {
	ts := be.Start(t)
	rev := servertest.Put(t, ts.URL, "other", "x")
	type result struct {
		body []byte
		err  error
	}
	done := make(chan result, 2)
	for _, q := range []string{"?wait=5m", "?wait=5m&format=ndjson&since=" + servertest.ID(rev)} {
		go func() {
			resp, body, err := servertest.Do(context.Background(), servertest.Client, "GET", ts.URL+"/watch/sd/**"+q, "")
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("%s: %s", resp.Status, body)
			}
			done <- result{body, err}
		}()
	}
	waitSubscribers(t, ts.URL, 2)
	start := time.Now()
	ts.Stop(t)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("shutdown with waiting polls took %v", d)
	}
	for range 2 {
		r := <-done
		want := fmt.Sprintf(`{"revision":%d,"events":[]}`, be.StoreRev(rev, rev))
		if r.err != nil || (be.Dense && string(r.body) != want) || !bytes.HasSuffix(r.body, []byte(`"events":[]}`)) {
			t.Errorf("a poll waiting at shutdown answered %s, %v; want %s", r.body, r.err, want)
		}
	}
}
