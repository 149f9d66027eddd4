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
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"kvsse/sse"
)

// Black-box tests of the event stream (API.md, "The event stream"): each
// starts the real server through run, writes over HTTP and reads /watch
// streams with sse.Reader or bufio.

// sseWait bounds every wait for something the server must send.
const sseWait = 10 * time.Second

// sseHTTP is the client of these tests. It keeps idle connections for
// concurrent writers, and does not follow redirects: a redirect is an
// answer to check, not to hide.
var sseHTTP = &http.Client{
	Transport: &http.Transport{MaxIdleConnsPerHost: 64},
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

// sseChange is the data object of an event (and, with Event, an NDJSON
// line). Value is a pointer so that a missing value differs from "".
type sseChange struct {
	Event        string  `json:"event,omitempty"`
	Key          string  `json:"key,omitempty"`
	Value        *string `json:"value,omitempty"`
	Encoding     string  `json:"encoding,omitempty"`
	Revision     int64   `json:"revision"`
	PrevRevision int64   `json:"prev_revision,omitempty"`
	Reason       string  `json:"reason,omitempty"`
}

// sseEvent is a dispatched SSE message with its data decoded.
type sseEvent struct {
	ID    string
	Event string
	Data  sseChange
}

func sseStr(s string) *string { return &s }

func sseID(rev int64) string { return strconv.FormatInt(rev, 10) }

// sseDecode decodes one JSON object of the stream, refusing unknown fields.
func sseDecode(data string) (sseChange, error) {
	var c sseChange
	dec := json.NewDecoder(strings.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("decoding %q: %v", data, err)
	}
	if dec.More() {
		return c, fmt.Errorf("more than one JSON value in %q", data)
	}
	return c, nil
}

func sseEventOf(t *testing.T, m sse.Message) sseEvent {
	t.Helper()
	c, err := sseDecode(m.Data)
	if err != nil {
		t.Fatalf("event %q id %q: %v", m.Event, m.ID, err)
	}
	return sseEvent{ID: m.ID, Event: m.Event, Data: c}
}

// sseKeyURL is the /kv URL of key, each segment escaped.
func sseKeyURL(base, key string) string {
	segs := strings.Split(key, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return base + "/kv/" + strings.Join(segs, "/")
}

// sseWrite sends a write and returns the revision of its Kvsse-Revision
// header. It does not touch a testing.T: writer goroutines call it.
func sseWrite(method, u string, body []byte) (int64, error) {
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	resp, err := sseHTTP.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return 0, fmt.Errorf("%s %s: %s: %s", method, u, resp.Status, b)
	}
	rev, err := strconv.ParseInt(resp.Header.Get("Kvsse-Revision"), 10, 64)
	if err != nil || rev <= 0 {
		return 0, fmt.Errorf("%s %s: bad Kvsse-Revision %q", method, u, resp.Header.Get("Kvsse-Revision"))
	}
	return rev, nil
}

func ssePutBytes(t *testing.T, base, key string, value []byte) int64 {
	t.Helper()
	rev, err := sseWrite(http.MethodPut, sseKeyURL(base, key), value)
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

func ssePut(t *testing.T, base, key, value string) int64 {
	t.Helper()
	return ssePutBytes(t, base, key, []byte(value))
}

func sseDel(t *testing.T, base, key string) int64 {
	t.Helper()
	rev, err := sseWrite(http.MethodDelete, sseKeyURL(base, key), nil)
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

// sseEntry is an item of a listing.
type sseEntry struct {
	Value    string
	Encoding string
	Revision int64
}

// sseList returns every key starting with prefix, following the pages.
func sseList(t *testing.T, base, prefix string) map[string]sseEntry {
	t.Helper()
	out := map[string]sseEntry{}
	after := ""
	for {
		q := url.Values{"prefix": {prefix}, "limit": {"1000"}}
		if after != "" {
			q.Set("after", after)
		}
		resp, err := sseHTTP.Get(base + "/kv?" + q.Encode())
		if err != nil {
			t.Fatal(err)
		}
		var page struct {
			Items []struct {
				Key      string `json:"key"`
				Value    string `json:"value"`
				Encoding string `json:"encoding"`
				Revision int64  `json:"revision"`
			} `json:"items"`
			Next string `json:"next"`
		}
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("listing %q: %s, %v", prefix, resp.Status, err)
		}
		for _, it := range page.Items {
			out[it.Key] = sseEntry{Value: it.Value, Encoding: it.Encoding, Revision: it.Revision}
		}
		if page.Next == "" {
			return out
		}
		after = page.Next
	}
}

// sseGet sends a GET with the given headers; ctx ends the request.
func sseGet(ctx context.Context, u string, header http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	return sseHTTP.Do(req)
}

// sseStream is an open SSE stream, read by a goroutine through sse.Reader
// into a channel, and recorded raw. Only the test goroutine calls its
// methods.
type sseStream struct {
	Header http.Header
	cancel context.CancelFunc
	items  chan sseItem
	stop   chan struct{}
	once   sync.Once
	raw    lockedBuffer
}

// sseItem is what the reading goroutine reports: a message, or the error
// that ended the stream (io.EOF when the server ended it).
type sseItem struct {
	msg sse.Message
	err error
}

// sseOpen opens the stream at u (a full URL), fails the test unless it
// answers 200, and closes it at the end of the test.
func sseOpen(t *testing.T, u string, header http.Header) *sseStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := sseGet(ctx, u, header)
	if err != nil {
		cancel()
		t.Fatalf("GET %s: %v", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		t.Fatalf("GET %s: %s: %s", u, resp.Status, b)
	}
	return sseWrap(t, resp, cancel)
}

// sseWrap starts reading the stream of resp; cancel ends its request.
func sseWrap(t *testing.T, resp *http.Response, cancel context.CancelFunc) *sseStream {
	s := &sseStream{Header: resp.Header, cancel: cancel, items: make(chan sseItem), stop: make(chan struct{})}
	go s.read(resp.Body)
	t.Cleanup(s.close)
	return s
}

func (s *sseStream) read(body io.ReadCloser) {
	defer body.Close()
	rd := sse.NewReader(io.TeeReader(body, &s.raw))
	for {
		m, err := rd.Next()
		select {
		case s.items <- sseItem{msg: m, err: err}:
		case <-s.stop:
			return
		}
		if err != nil {
			return
		}
	}
}

// close cancels the request: the client goes away. It is idempotent.
func (s *sseStream) close() {
	s.once.Do(func() {
		s.cancel()
		close(s.stop)
	})
}

// next returns the next message, failing the test if the stream ends or
// nothing comes within sseWait.
func (s *sseStream) next(t *testing.T) sse.Message {
	t.Helper()
	select {
	case it := <-s.items:
		if it.err != nil {
			t.Fatalf("stream ended: %v\nraw stream:\n%s", it.err, sseTail(s.raw.String()))
		}
		return it.msg
	case <-time.After(sseWait):
		t.Fatalf("no event within %v\nraw stream:\n%s", sseWait, sseTail(s.raw.String()))
	}
	panic("unreachable")
}

// events reads n messages and decodes them.
func (s *sseStream) events(t *testing.T, n int) []sseEvent {
	t.Helper()
	var out []sseEvent
	for range n {
		out = append(out, sseEventOf(t, s.next(t)))
	}
	return out
}

// until reads messages up to and including the first one for which stop
// returns true.
func (s *sseStream) until(t *testing.T, stop func(sseEvent) bool) []sseEvent {
	t.Helper()
	var out []sseEvent
	for {
		e := sseEventOf(t, s.next(t))
		out = append(out, e)
		if stop(e) {
			return out
		}
	}
}

// end waits for the stream to end and returns the messages that came
// before the end and the error that ended it.
func (s *sseStream) end(t *testing.T) ([]sse.Message, error) {
	t.Helper()
	var out []sse.Message
	deadline := time.After(sseWait)
	for {
		select {
		case it := <-s.items:
			if it.err != nil {
				return out, it.err
			}
			out = append(out, it.msg)
		case <-deadline:
			t.Fatalf("stream still open after %v", sseWait)
		}
	}
}

// sync reads the sync event that must come next and returns its revision.
func (s *sseStream) sync(t *testing.T) int64 {
	t.Helper()
	e := sseEventOf(t, s.next(t))
	if e.Event != "sync" || e.ID != sseID(e.Data.Revision) {
		t.Fatalf("got %+v, want a sync event whose id is its revision", e)
	}
	return e.Data.Revision
}

// sseTail is the end of a raw stream, for failure messages.
func sseTail(s string) string {
	if len(s) > 2000 {
		return "..." + s[len(s)-2000:]
	}
	return s
}

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

func TestSSEPutDelete(t *testing.T) { forEachBackend(t, testSSEPutDelete) }

func testSSEPutDelete(t *testing.T, be testBackend) {
	ts := be.start(t)
	s := sseOpen(t, ts.URL+"/watch/t/**", nil)
	s.sync(t)

	bin := []byte{0xff, 0x00, 0xfe, 'a', 0x80, '\n'}
	tricky := "line1\r\nline2\rline3\n\"quoted\" \\back\\ \x00 \t tab \u2028 é"
	r1 := ssePut(t, ts.URL, "t/a", "v1")
	r2 := ssePut(t, ts.URL, "t/a", "v2")
	r3 := ssePutBytes(t, ts.URL, "t/bin", bin)
	r4 := ssePut(t, ts.URL, `t/"q" é`, tricky)
	r5 := sseDel(t, ts.URL, "t/a")
	want := []sseEvent{
		{ID: sseID(r1), Event: "put", Data: sseChange{Key: "t/a", Value: sseStr("v1"), Revision: r1}},
		{ID: sseID(r2), Event: "put", Data: sseChange{Key: "t/a", Value: sseStr("v2"), Revision: r2, PrevRevision: r1}},
		{ID: sseID(r3), Event: "put", Data: sseChange{Key: "t/bin", Value: sseStr(base64.StdEncoding.EncodeToString(bin)), Encoding: "base64", Revision: r3}},
		{ID: sseID(r4), Event: "put", Data: sseChange{Key: `t/"q" é`, Value: sseStr(tricky), Revision: r4}},
		{ID: sseID(r5), Event: "delete", Data: sseChange{Key: "t/a", Revision: r5, PrevRevision: r2, Reason: "deleted"}},
	}
	got := s.events(t, len(want))
	if got[4].Data.PrevRevision == 0 {
		// The contract's example delete has no prev_revision; when one is
		// sent it must be the key's revision before the delete.
		want[4].Data.PrevRevision = 0
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	s.close()
	sseCheckLines(t, s.raw.String())
}

func TestSSERetryThenSync(t *testing.T) { forEachBackend(t, testSSERetryThenSync) }

func testSSERetryThenSync(t *testing.T, be testBackend) {
	ts := be.start(t)
	ssePut(t, ts.URL, "a", "1")
	ssePut(t, ts.URL, "other", "x")
	rev := sseDel(t, ts.URL, "a")

	s := sseOpen(t, ts.URL+"/watch/**", nil)
	got0 := s.next(t)
	if id, err := strconv.ParseInt(got0.ID, 10, 64); err == nil {
		rev = be.storeRev(rev, id)
	}
	// Retry set means the retry line came first.
	want0 := sse.Message{ID: sseID(rev), Event: "sync", Data: fmt.Sprintf(`{"revision":%d}`, rev), Retry: 2 * time.Second}
	if diff := cmp.Diff(want0, got0); diff != "" {
		t.Errorf("first message (-want +got):\n%s", diff)
	}
	r1 := ssePut(t, ts.URL, "a", "2")
	r2 := ssePut(t, ts.URL, "b/c", "3")
	got := s.events(t, 2)
	want := []sseEvent{
		{ID: sseID(r1), Event: "put", Data: sseChange{Key: "a", Value: sseStr("2"), Revision: r1}},
		{ID: sseID(r2), Event: "put", Data: sseChange{Key: "b/c", Value: sseStr("3"), Revision: r2}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("live events (-want +got):\n%s", diff)
	}
	s.close()
	raw := s.raw.String()
	if !strings.HasPrefix(raw, "retry: 2000\n") {
		t.Errorf("stream starts with %q, want the line retry: 2000", sseTail(raw[:min(len(raw), 40)]))
	}
	if n := strings.Count(raw, "event: sync\n"); n != 1 {
		t.Errorf("%d sync events, want 1:\n%s", n, raw)
	}
}

func TestSSEHeaders(t *testing.T) { forEachBackend(t, testSSEHeaders) }

func testSSEHeaders(t *testing.T, be testBackend) {
	ts := be.start(t)
	rev := ssePut(t, ts.URL, "h/a", "1")
	for _, tt := range []struct {
		path   string
		header http.Header
	}{
		{"/watch/h/**", nil},
		{"/watch?pattern=h/*&pattern=x", nil},
		{"/watch/h/**?snapshot=1", nil},
		{"/watch/h/**?since=" + sseID(rev-1), nil},
		{"/watch/h/**", http.Header{"Last-Event-Id": {sseID(rev + 1)}}}, // reset
		{"/watch/h/**", http.Header{"Accept": {"text/event-stream"}}},   // as EventSource asks
	} {
		t.Run(tt.path, func(t *testing.T) {
			s := sseOpen(t, ts.URL+tt.path, tt.header)
			defer s.close()
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

func TestSSEPatterns(t *testing.T) { forEachBackend(t, testSSEPatterns) }

func testSSEPatterns(t *testing.T, be testBackend) {
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
			ts := be.start(t, "-sync", "none")
			u := ts.URL + "/watch/" + tt.patterns[0]
			if len(tt.patterns) > 1 {
				u = ts.URL + "/watch?" + url.Values{"pattern": tt.patterns}.Encode()
			}
			s := sseOpen(t, u, nil)
			s.sync(t)
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
					ssePut(t, ts.URL, tt.other[i], "no")
				}
				if i < len(tt.match) {
					k := tt.match[i]
					want = append(want, delivered{k, ssePut(t, ts.URL, k, "yes")})
				}
			}
			readUpTo := func(s *sseStream, rev int64) []delivered {
				t.Helper()
				var got []delivered
				for _, e := range s.until(t, func(e sseEvent) bool { return e.Data.Revision >= rev }) {
					got = append(got, delivered{e.Data.Key, e.Data.Revision})
				}
				return got
			}
			fenceRev := ssePut(t, ts.URL, tt.match[0], "fence")
			want = append(want, delivered{tt.match[0], fenceRev})
			if diff := cmp.Diff(want, readUpTo(s, fenceRev)); diff != "" {
				t.Errorf("live (-want +got):\n%s", diff)
			}

			// The snapshot and the replay filter the same keys.
			wantSnap := map[string]int64{}
			for _, d := range want {
				wantSnap[d.Key] = d.Rev
			}
			snap := sseOpen(t, u+sep+"snapshot=1", nil)
			gotSnap := map[string]int64{}
			for _, e := range snap.until(t, func(e sseEvent) bool { return e.Event == "sync" }) {
				if e.Event == "put" {
					gotSnap[e.Data.Key] = e.Data.Revision
				}
			}
			snap.close()
			if diff := cmp.Diff(wantSnap, gotSnap); diff != "" {
				t.Errorf("snapshot (-want +got):\n%s", diff)
			}
			replay := sseOpen(t, u+sep+"since=0", nil)
			if diff := cmp.Diff(want, readUpTo(replay, fenceRev)); diff != "" {
				t.Errorf("replay (-want +got):\n%s", diff)
			}
			replay.close()

			// Deletes of other keys are not delivered either.
			for _, k := range tt.other {
				sseDel(t, ts.URL, k)
			}
			fenceRev = ssePut(t, ts.URL, tt.match[0], "fence")
			if diff := cmp.Diff([]delivered{{tt.match[0], fenceRev}}, readUpTo(s, fenceRev)); diff != "" {
				t.Errorf("live after deleting other keys (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSSEBadRequest(t *testing.T) { forEachBackend(t, testSSEBadRequest) }

func testSSEBadRequest(t *testing.T, be testBackend) {
	ts := be.start(t)
	ssePut(t, ts.URL, "a/b", "1")
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
	}
	codeRE := regexp.MustCompile(`^[a-z]+(_[a-z]+)*$`)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), sseWait)
			defer cancel()
			resp, err := sseGet(ctx, ts.URL+tt.path, tt.header)
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
		})
	}

	t.Run("64 patterns accepted", func(t *testing.T) {
		q := url.Values{}
		for i := range 64 {
			q.Add("pattern", fmt.Sprintf("p%d/**", i))
		}
		s := sseOpen(t, ts.URL+"/watch?"+q.Encode(), nil)
		s.sync(t)
		rev := ssePut(t, ts.URL, "p63/x", "1")
		if e := sseEventOf(t, s.next(t)); e.ID != sseID(rev) {
			t.Errorf("got %+v, want the put of p63/x at %d", e, rev)
		}
	})
}

func TestSSESnapshotConcurrentWriter(t *testing.T) {
	forEachBackend(t, testSSESnapshotConcurrentWriter)
}

func testSSESnapshotConcurrentWriter(t *testing.T, be testBackend) {
	ts := be.start(t, "-sync", "none")
	const keys = 300
	errc := make(chan error, 8)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < keys; i += 4 {
				if _, err := sseWrite(http.MethodPut, sseKeyURL(ts.URL, fmt.Sprintf("s/%03d", i)), []byte("init")); err != nil {
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
			k := sseKeyURL(ts.URL, fmt.Sprintf("s/%03d", (i*7)%keys))
			method, body := http.MethodPut, []byte(fmt.Sprintf("v%d", i))
			if i%3 == 2 {
				method, body = http.MethodDelete, nil
			}
			rev, err := sseWrite(method, k, body)
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

	s := sseOpen(t, ts.URL+"/watch/s/**?snapshot=1", nil)
	state := map[string]sseEntry{}
	var syncRev int64
	for syncRev == 0 {
		e := sseEventOf(t, s.next(t))
		switch {
		case e.Event == "sync":
			syncRev = e.Data.Revision
			if e.ID != sseID(syncRev) {
				t.Fatalf("sync %+v: id is not its revision", e)
			}
		case e.Event == "put" && e.ID == "" && e.Data.Value != nil:
			if _, dup := state[e.Data.Key]; dup {
				t.Errorf("snapshot sends %q twice", e.Data.Key)
			}
			state[e.Data.Key] = sseEntry{Value: *e.Data.Value, Revision: e.Data.Revision}
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
	case <-time.After(sseWait):
		t.Fatal("writer did not finish")
	}
	if last <= syncRev {
		t.Fatalf("writer's last revision %d is not after the sync at %d", last, syncRev)
	}
	prev := syncRev
	for _, e := range s.until(t, func(e sseEvent) bool { return e.Data.Revision >= last }) {
		if e.ID != sseID(e.Data.Revision) || e.Data.Revision <= prev {
			t.Fatalf("live event %+v after revision %d: want id = revision, increasing", e, prev)
		}
		prev = e.Data.Revision
		switch e.Event {
		case "put":
			state[e.Data.Key] = sseEntry{Value: *e.Data.Value, Revision: e.Data.Revision}
		case "delete":
			delete(state, e.Data.Key)
		default:
			t.Fatalf("unexpected live event %+v", e)
		}
	}
	s.close()
	if diff := cmp.Diff(sseList(t, ts.URL, "s/"), state); diff != "" {
		t.Errorf("state rebuilt from the stream (-listing +stream):\n%s", diff)
	}
}

// sseOp is an acknowledged write, as the stream must show it.
type sseOp struct {
	Rev   int64
	Event string
	Key   string
}

func TestSSESince(t *testing.T) { forEachBackend(t, testSSESince) }

func testSSESince(t *testing.T, be testBackend) {
	ts := be.start(t)
	first := ssePut(t, ts.URL, "w/a", "1")
	r0 := ssePut(t, ts.URL, "w/b", "1")
	var want []sseOp
	add := func(rev int64, event, key string) { want = append(want, sseOp{rev, event, key}) }
	add(ssePut(t, ts.URL, "w/a", "2"), "put", "w/a")
	ssePut(t, ts.URL, "x/a", "no")
	add(sseDel(t, ts.URL, "w/b"), "delete", "w/b")
	add(ssePut(t, ts.URL, "w/c/d", "3"), "put", "w/c/d")
	ssePut(t, ts.URL, "wx", "no")
	add(ssePut(t, ts.URL, "w/a", "4"), "put", "w/a")
	cur := ssePut(t, ts.URL, "y", "no")

	tests := []struct {
		name   string
		query  string
		header http.Header
		from   int64 // the revision the replay starts after
	}{
		{"since", "?since=" + sseID(r0), nil, r0},
		{"since ignores snapshot", "?snapshot=1&since=" + sseID(r0), nil, r0},
		{"Last-Event-ID", "", http.Header{"Last-Event-Id": {sseID(r0)}}, r0},
		{"Last-Event-ID wins over since", "?since=1", http.Header{"Last-Event-Id": {sseID(r0)}}, r0},
		{"Last-Event-ID wins over a bad since", "?since=abc", http.Header{"Last-Event-Id": {sseID(r0)}}, r0},
		{"Last-Event-ID ignores snapshot", "?snapshot=1", http.Header{"Last-Event-Id": {sseID(r0)}}, r0},
		{"since 0 replays everything", "?since=0", nil, 0},
		{"since the current revision", "?since=" + sseID(cur), nil, cur},
	}
	all := append([]sseOp{{first, "put", "w/a"}, {r0, "put", "w/b"}}, want...)
	storeRev := cur
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := sseOpen(t, ts.URL+"/watch/w/**"+tt.query, tt.header)
			var replay []sseOp
			for _, op := range all {
				if op.Rev > tt.from {
					replay = append(replay, op)
				}
			}
			replay = append(replay, sseOp{storeRev, "sync", ""})
			var got []sseOp
			for _, e := range s.until(t, func(e sseEvent) bool { return e.Event == "sync" }) {
				if e.ID != sseID(e.Data.Revision) {
					t.Errorf("replayed %+v: id is not the revision", e)
				}
				got = append(got, sseOp{e.Data.Revision, e.Event, e.Data.Key})
			}
			replay[len(replay)-1].Rev = be.storeRev(storeRev, got[len(got)-1].Rev)
			if diff := cmp.Diff(replay, got); diff != "" {
				t.Errorf("replay then sync (-want +got):\n%s", diff)
			}
			key := "w/live/" + strings.ReplaceAll(tt.name, " ", "-")
			live := ssePut(t, ts.URL, key, "x")
			all = append(all, sseOp{live, "put", key}) // later cases replay it
			storeRev = live
			if e := sseEventOf(t, s.next(t)); e.ID != sseID(live) || e.Event != "put" {
				t.Errorf("after sync got %+v, want the live put at %d", e, live)
			}
		})
	}
}

// sseConn makes writes over one keep-alive HTTP/1.1 connection of its
// own: about half the cost of http.Client under the race detector, for
// the tests that make thousands of writes.
type sseConn struct {
	conn net.Conn
	br   *bufio.Reader
	host string
	buf  []byte
}

func sseDialConn(base string) (*sseConn, error) {
	host := strings.TrimPrefix(base, "http://")
	conn, err := net.Dial("tcp", host)
	if err != nil {
		return nil, err
	}
	return &sseConn{conn: conn, br: bufio.NewReader(conn), host: host}, nil
}

// write sends a PUT (body) or a DELETE (nil body) of key and returns the
// revision of its Kvsse-Revision header.
func (c *sseConn) write(method, key string, body []byte) (int64, error) {
	c.buf = fmt.Appendf(c.buf[:0], "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n%s",
		method, sseKeyURL("", key), c.host, len(body), body)
	c.conn.SetDeadline(time.Now().Add(time.Minute))
	if _, err := c.conn.Write(c.buf); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return 0, fmt.Errorf("%s %s: %v", method, key, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode/100 != 2 {
		return 0, fmt.Errorf("%s %s: %s: %q %v", method, key, resp.Status, b, err)
	}
	return strconv.ParseInt(resp.Header.Get("Kvsse-Revision"), 10, 64)
}

// sseWriters runs n writers that each make count writes to keys of their
// own under prefix (mostly puts, some deletes), and returns every
// acknowledged write, in revision order, once they are done, or the first
// error. Between the first and second halves of its writes, each writer
// waits for halfway to be closed (nil: no wait). progress (if not nil)
// counts the acknowledged writes as they come.
func sseWriters(base, prefix string, n, count int, value string, halfway <-chan struct{}, progress *atomic.Int64) ([]sseOp, error) {
	var (
		mu   sync.Mutex // guards ops
		ops  []sseOp
		errc = make(chan error, n)
		wg   sync.WaitGroup
	)
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := sseDialConn(base)
			if err != nil {
				errc <- err
				return
			}
			defer c.conn.Close()
			var mine []sseOp
			for i := range count {
				if i == count/2 && halfway != nil {
					<-halfway
				}
				key := fmt.Sprintf("%s%d/%d", prefix, w, (i/2)%5)
				method, event, body := http.MethodPut, "put", []byte(value)
				if i%2 == 1 && (i/2)%3 == 0 {
					method, event, body = http.MethodDelete, "delete", nil // the key put just before
				}
				rev, err := c.write(method, key, body)
				if err != nil {
					errc <- err
					return
				}
				mine = append(mine, sseOp{rev, event, key})
				if progress != nil {
					progress.Add(1)
				}
			}
			mu.Lock()
			ops = append(ops, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return nil, err
	}
	sort.Slice(ops, func(i, j int) bool { return ops[i].Rev < ops[j].Rev })
	return ops, nil
}

// sseResult is what writers started in a goroutine report.
type sseResult struct {
	ops []sseOp
	err error
}

func TestSSEResumeLastEventID(t *testing.T) { forEachBackend(t, testSSEResumeLastEventID) }

func testSSEResumeLastEventID(t *testing.T, be testBackend) {
	ts := be.start(t)
	s1 := sseOpen(t, ts.URL+"/watch/r/**", nil)
	s1.sync(t)

	halfway := make(chan struct{})
	done := make(chan sseResult, 1)
	go func() {
		ops, err := sseWriters(ts.URL, "r/", 4, 200, "v", halfway, nil)
		done <- sseResult{ops, err}
	}()

	// The first client reads part of the first half, then drops.
	var got []sseOp
	var lastID string
	for _, e := range s1.events(t, 150) {
		got = append(got, sseOp{e.Data.Revision, e.Event, e.Data.Key})
		lastID = e.ID
	}
	s1.close()
	close(halfway)

	s2 := sseOpen(t, ts.URL+"/watch/r/**", http.Header{"Last-Event-ID": {lastID}})
	acked, resumed := sseResumed(t, s2, done, 2*sseWait)
	if diff := cmp.Diff(acked, append(got, resumed...)); diff != "" {
		t.Errorf("both streams together (-acknowledged +delivered):\n%s", diff)
	}
}

// sseResumed waits for the writers to report on done, then reads the
// resumed stream s up to their last write and returns what they
// acknowledged and the changes s sent. It fails the test unless s sends
// exactly one sync, no reset, and every change with its revision as id.
func sseResumed(t *testing.T, s *sseStream, done <-chan sseResult, wait time.Duration) (acked, got []sseOp) {
	t.Helper()
	var res sseResult
	select {
	case res = <-done:
	case <-time.After(wait):
		t.Fatal("writers did not finish")
	}
	if res.err != nil {
		t.Fatal(res.err)
	}
	final := res.ops[len(res.ops)-1].Rev
	// After the sync, or at it when the replay reached the last write.
	syncs := 0
	synced := false
	for _, e := range s.until(t, func(e sseEvent) bool {
		if e.Event == "sync" {
			synced = true
		}
		return synced && e.Data.Revision >= final
	}) {
		if e.Event == "sync" {
			syncs++
			continue
		}
		if e.Event == "reset" || e.ID != sseID(e.Data.Revision) {
			t.Fatalf("resumed stream sent %+v", e)
		}
		got = append(got, sseOp{e.Data.Revision, e.Event, e.Data.Key})
	}
	if syncs != 1 {
		t.Errorf("resumed stream sent %d syncs, want 1", syncs)
	}
	return res.ops, got
}

func TestSSEReset(t *testing.T) {
	ts := startServer(t, "-history", "10")
	var ops []sseOp
	for i := range 30 {
		k := fmt.Sprintf("h/%d", i%4)
		if i%5 == 4 {
			ops = append(ops, sseOp{sseDel(t, ts.URL, k), "delete", k})
		} else {
			ops = append(ops, sseOp{ssePut(t, ts.URL, k, fmt.Sprintf("v%d", i)), "put", k})
		}
	}
	ssePut(t, ts.URL, "other", "x")
	cur := ssePut(t, ts.URL, "h/x", "last")
	ops = append(ops, sseOp{cur, "put", "h/x"})
	listing := sseList(t, ts.URL, "h/")

	tests := []struct {
		name   string
		query  string
		header http.Header
		reason string // "" for a replay
	}{
		{"history", "", http.Header{"Last-Event-Id": {"2"}}, "history"},
		{"history from 0", "?since=0", nil, "history"},
		{"history just too old", "?since=" + sseID(cur-11), nil, "history"},
		{"oldest kept", "?since=" + sseID(cur-10), nil, ""},
		{"future", "", http.Header{"Last-Event-Id": {sseID(cur + 1)}}, "future"},
		{"future since", "?since=" + sseID(cur+100), nil, "future"},
		{"future wins over snapshot", "?snapshot=1", http.Header{"Last-Event-Id": {sseID(cur + 5)}}, "future"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := sseOpen(t, ts.URL+"/watch/h/**"+tt.query, tt.header)
			if tt.reason == "" {
				// The 10 changes kept are the 9 last of ops and "other".
				want := append(ops[len(ops)-9:len(ops):len(ops)], sseOp{cur, "sync", ""})
				var got []sseOp
				for _, e := range s.until(t, func(e sseEvent) bool { return e.Event == "sync" }) {
					got = append(got, sseOp{e.Data.Revision, e.Event, e.Data.Key})
				}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("replay then sync (-want +got):\n%s", diff)
				}
				return
			}
			first := sseEventOf(t, s.next(t))
			want := sseEvent{Event: "reset", Data: sseChange{Revision: cur, Reason: tt.reason}}
			if diff := cmp.Diff(want, first); diff != "" {
				t.Fatalf("first event (-want +got):\n%s", diff)
			}
			got := map[string]sseEntry{}
			e := sseEventOf(t, s.next(t))
			for ; e.Event != "sync"; e = sseEventOf(t, s.next(t)) {
				if e.Event != "put" || e.ID != "" || e.Data.Value == nil {
					t.Fatalf("got %+v, want snapshot puts with no id", e)
				}
				got[e.Data.Key] = sseEntry{Value: *e.Data.Value, Revision: e.Data.Revision}
			}
			if diff := cmp.Diff(listing, got); diff != "" {
				t.Errorf("snapshot after reset (-listing +stream):\n%s", diff)
			}
			if want := (sseEvent{ID: sseID(cur), Event: "sync", Data: sseChange{Revision: cur}}); e != want {
				t.Errorf("got %+v after the snapshot, want %+v", e, want)
			}
		})
	}
}

func TestSSEResumeAfterRestart(t *testing.T) {
	ts := startServer(t)
	dir := ts.Dir
	s := sseOpen(t, ts.URL+"/watch/rs/**", nil)
	s.sync(t)
	var want []sseOp
	for i := range 3 {
		ssePut(t, ts.URL, fmt.Sprintf("rs/%d", i), "before")
	}
	got := s.events(t, 3)
	lastID := got[2].ID
	s.close()

	want = append(want, sseOp{ssePut(t, ts.URL, "rs/0", "after"), "put", "rs/0"})
	ssePut(t, ts.URL, "zz", "not watched")
	want = append(want, sseOp{sseDel(t, ts.URL, "rs/1"), "delete", "rs/1"})
	want = append(want, sseOp{ssePut(t, ts.URL, "rs/new/key", "after"), "put", "rs/new/key"})
	last := ssePut(t, ts.URL, "zz", "not watched")
	ts.stop(t)

	ts2 := startServer(t, "-data", dir)
	s2 := sseOpen(t, ts2.URL+"/watch/rs/**", http.Header{"Last-Event-ID": {lastID}})
	want = append(want, sseOp{last, "sync", ""})
	var replay []sseOp
	for _, e := range s2.until(t, func(e sseEvent) bool { return e.Event == "sync" }) {
		if e.ID != sseID(e.Data.Revision) {
			t.Errorf("replayed %+v: id is not the revision", e)
		}
		replay = append(replay, sseOp{e.Data.Revision, e.Event, e.Data.Key})
	}
	if diff := cmp.Diff(want, replay); diff != "" {
		t.Errorf("replay then sync after restart (-want +got):\n%s", diff)
	}
	next := ssePut(t, ts2.URL, "rs/0", "restarted")
	if next <= last {
		t.Errorf("revision %d after the restart, want above %d", next, last)
	}
	if e := sseEventOf(t, s2.next(t)); e.ID != sseID(next) {
		t.Errorf("live event %+v, want the put at %d", e, next)
	}
}

func TestSSESlowSubscriber(t *testing.T) {
	// -sync none: this is about the feed, not the log; it saves an fsync
	// per batch of the 20,000 writes.
	ts := startServer(t, "-sub-buffer", "64", "-sync", "none")
	host := strings.TrimPrefix(ts.URL, "http://")
	conn, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /watch/slow/** HTTP/1.1\r\nHost: %s\r\n\r\n", host)
	conn.SetReadDeadline(time.Now().Add(sseWait))
	br := bufio.NewReaderSize(conn, 512)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	rd := sse.NewReaderSize(resp.Body, 1<<20)
	m, err := rd.Next()
	if err != nil || m.Event != "sync" {
		t.Fatalf("got %+v, %v; want the sync", m, err)
	}
	// From here on the client reads nothing until every write is done.

	const writers, total = 8, 20_000
	value := strings.Repeat("v", 1000) // 20 MB of events: far more than socket buffers hold
	done := make(chan sseResult, 1)
	start := time.Now()
	var progress atomic.Int64
	go func() {
		ops, err := sseWriters(ts.URL, "slow/", writers, total/writers, value, nil, &progress)
		done <- sseResult{ops, err}
	}()
	// Writers that never block keep making progress, however slow the
	// machine: fail when none completes a write for sseWait.
	var res sseResult
	tick := time.NewTicker(sseWait)
	defer tick.Stop()
	for seen := int64(-1); res.ops == nil; {
		select {
		case res = <-done:
			if res.err != nil {
				t.Fatal(res.err)
			}
		case <-tick.C:
			n := progress.Load()
			if n == seen {
				t.Fatalf("writers blocked: stuck at %d writes for %v", n, sseWait)
			}
			seen = n
		}
	}
	t.Logf("%d writes in %v", len(res.ops), time.Since(start))

	var got []sseOp
	conn.SetReadDeadline(time.Now().Add(sseWait))
	for {
		m, err := rd.Next()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("the server did not close the slow stream (%d events read)", len(got))
			}
			break
		}
		e := sseEventOf(t, m)
		got = append(got, sseOp{e.Data.Revision, e.Event, e.Data.Key})
	}
	if len(got) >= total {
		t.Fatalf("the slow stream delivered all %d events: it was not disconnected", len(got))
	}
	lastID := rd.LastEventID()
	t.Logf("slow stream dropped after %d events, last id %s", len(got), lastID)

	s := sseOpen(t, ts.URL+"/watch/slow/**", http.Header{"Last-Event-ID": {lastID}})
	final := res.ops[len(res.ops)-1].Rev
	for _, e := range s.until(t, func(e sseEvent) bool { return e.Event == "sync" }) {
		if e.Event == "sync" {
			if e.Data.Revision != final {
				t.Errorf("sync at %d, want %d", e.Data.Revision, final)
			}
			continue
		}
		got = append(got, sseOp{e.Data.Revision, e.Event, e.Data.Key})
	}
	// slices.Equal first: cmp.Diff of 20,000 items is slow under -race.
	if !slices.Equal(res.ops, got) {
		t.Errorf("slow stream then resumed stream (-acknowledged +delivered):\n%s", cmp.Diff(res.ops, got))
	}
}

func TestSSEExpiry(t *testing.T) { forEachBackend(t, testSSEExpiry) }

func testSSEExpiry(t *testing.T, be testBackend) {
	ts := be.start(t)
	s := sseOpen(t, ts.URL+"/watch/e/**", nil)
	s.sync(t)
	rev, err := sseWrite(http.MethodPut, sseKeyURL(ts.URL, "e/k")+fmt.Sprintf("?ttl=%ds", be.ttl), []byte("soon gone"))
	if err != nil {
		t.Fatal(err)
	}
	put := sseEventOf(t, s.next(t))
	if put.ID != sseID(rev) || put.Event != "put" {
		t.Fatalf("got %+v, want the put at %d", put, rev)
	}
	start := time.Now()
	got := sseEventOf(t, s.next(t)) // next fails after sseWait
	del := rev + 1
	if be.after(rev, got.Data.Revision) {
		del = got.Data.Revision
	}
	want := sseEvent{ID: sseID(del), Event: "delete", Data: sseChange{Key: "e/k", Revision: del, PrevRevision: rev, Reason: "expired"}}
	if got.Data.PrevRevision == 0 {
		want.Data.PrevRevision = 0 // see TestSSEPutDelete
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("expiry (-want +got):\n%s", diff)
	}
	if d := time.Since(start); d > time.Duration(be.ttl)*time.Second+4*time.Second {
		t.Errorf("expired after %v, want about %ds", d, be.ttl)
	}
	resp, err := sseHTTP.Get(sseKeyURL(ts.URL, "e/k"))
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
		t.Fatalf("reading the stream: %v\nread so far:\n%s", err, sseTail(l.raw.String()))
	}
	return strings.TrimSuffix(line, "\n")
}

// sseOpenLines opens a stream read by the test goroutine itself; the
// request ends after sseWait at the latest, so that no read blocks longer.
func sseOpenLines(t *testing.T, u string, header http.Header) (*http.Response, *sseLines) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sseWait)
	t.Cleanup(cancel)
	resp, err := sseGet(ctx, u, header)
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

func TestSSEHeartbeat(t *testing.T) { forEachBackend(t, testSSEHeartbeat) }

func testSSEHeartbeat(t *testing.T, be testBackend) {
	ts := be.start(t, "-heartbeat", "200ms")
	r1 := ssePut(t, ts.URL, "hb/a", "1")

	t.Run("sse", func(t *testing.T) {
		_, l := sseOpenLines(t, ts.URL+"/watch/hb/**", nil)
		// A write the stream does not show: only a heartbeat tells the
		// client that the store moved on.
		rev := ssePut(t, ts.URL, "elsewhere/sse", "x")
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
			if id == "id: "+sseID(rev) {
				break
			}
			if id != "id: "+sseID(r1) {
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
		want := []sse.Message{{ID: sseID(r1), Event: "sync", Data: fmt.Sprintf(`{"revision":%d}`, r1), Retry: 2 * time.Second}}
		if diff := cmp.Diff(want, msgs); diff != "" {
			t.Errorf("messages dispatched (-want +got):\n%s", diff)
		}
		if got := rd.LastEventID(); got != sseID(rev) {
			t.Errorf("LastEventID %q after the heartbeat, want %d", got, rev)
		}
	})

	t.Run("ndjson", func(t *testing.T) {
		base := ssePut(t, ts.URL, "elsewhere/base", "x")
		_, l := sseOpenLines(t, ts.URL+"/watch/hb/**?format=ndjson", nil)
		first, err := sseDecode(l.next(t))
		if diff := cmp.Diff(sseChange{Event: "sync", Revision: base}, first); err != nil || diff != "" {
			t.Fatalf("first line (-want +got): %v\n%s", err, diff)
		}
		rev := ssePut(t, ts.URL, "elsewhere/ndjson", "x")
		for {
			c, err := sseDecode(l.next(t))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(sseChange{Event: "heartbeat", Revision: rev}, c); diff == "" {
				break
			} else if c.Event != "heartbeat" || c.Revision != base || c.Key != "" {
				t.Fatalf("heartbeat (-want +got):\n%s", diff)
			}
		}
	})
}

func TestSSENDJSON(t *testing.T) { forEachBackend(t, testSSENDJSON) }

func testSSENDJSON(t *testing.T, be testBackend) {
	bin := []byte{0xc3, 0x28, 0x00}
	syncAt := func(rev int64) sseChange { return sseChange{Event: "sync", Revision: rev} }
	tests := []struct {
		name   string
		query  string
		header func(cur int64) http.Header
		// want is the catch-up, given the puts of n/a and n/b (as a
		// snapshot shows them) and the store's revision.
		want func(a, b sseChange, cur int64) []sseChange
	}{
		{"format", "?format=ndjson", nil,
			func(a, b sseChange, cur int64) []sseChange { return []sseChange{syncAt(cur)} }},
		{"Accept", "", func(int64) http.Header { return http.Header{"Accept": {"application/x-ndjson"}} },
			func(a, b sseChange, cur int64) []sseChange { return []sseChange{syncAt(cur)} }},
		{"snapshot", "?format=ndjson&snapshot=1", nil,
			func(a, b sseChange, cur int64) []sseChange { return []sseChange{a, b, syncAt(cur)} }},
		{"since", "?format=ndjson&since={r1}", nil,
			func(a, b sseChange, cur int64) []sseChange { return []sseChange{b, syncAt(cur)} }},
		{"reset", "?format=ndjson", func(cur int64) http.Header { return http.Header{"Last-Event-Id": {sseID(cur + 1)}} },
			func(a, b sseChange, cur int64) []sseChange {
				return []sseChange{{Event: "reset", Revision: cur, Reason: "future"}, a, b, syncAt(cur)}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := be.start(t, "-sync", "none")
			r1 := ssePut(t, ts.URL, "n/a", "1\n2")
			r2 := ssePutBytes(t, ts.URL, "n/b", bin)
			ssePut(t, ts.URL, "x", "other")
			cur := ssePut(t, ts.URL, "x", "other")
			a := sseChange{Event: "put", Key: "n/a", Value: sseStr("1\n2"), Revision: r1}
			b := sseChange{Event: "put", Key: "n/b", Value: sseStr(base64.StdEncoding.EncodeToString(bin)), Encoding: "base64", Revision: r2}
			var header http.Header
			if tt.header != nil {
				header = tt.header(cur)
			}
			resp, l := sseOpenLines(t, ts.URL+"/watch/n/**"+strings.ReplaceAll(tt.query, "{r1}", sseID(r1)), header)
			if ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); ct != "application/x-ndjson" {
				t.Errorf("Content-Type %q, want application/x-ndjson", resp.Header.Get("Content-Type"))
			}
			var got []sseChange
			read := func(n int) {
				for range n {
					line := l.next(t)
					c, err := sseDecode(line)
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
					want[i].Revision = be.storeRev(cur, got[i].Revision)
				}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("catch-up (-want +got):\n%s", diff)
			}
			p1 := ssePut(t, ts.URL, "n/live", "x")
			p2 := ssePut(t, ts.URL, "n/live", "\"y\"\r\n")
			d := sseDel(t, ts.URL, "n/live")
			got = got[:0]
			read(3)
			live := []sseChange{
				{Event: "put", Key: "n/live", Value: sseStr("x"), Revision: p1},
				{Event: "put", Key: "n/live", Value: sseStr("\"y\"\r\n"), Revision: p2, PrevRevision: p1},
				{Event: "delete", Key: "n/live", Revision: d, PrevRevision: p2, Reason: "deleted"},
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

func TestSSEShutdown(t *testing.T) { forEachBackend(t, testSSEShutdown) }

func testSSEShutdown(t *testing.T, be testBackend) {
	ts := be.start(t)
	s := sseOpen(t, ts.URL+"/watch/**", nil)
	s.sync(t)
	nd := sseOpen(t, ts.URL+"/watch/**?format=ndjson", nil)
	rev := ssePut(t, ts.URL, "a", "1")
	if e := sseEventOf(t, s.next(t)); e.ID != sseID(rev) {
		t.Fatalf("got %+v, want the put at %d", e, rev)
	}

	start := time.Now()
	ts.stop(t) // fails the test unless run returns nil
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("shutdown with open streams took %v", d)
	}
	msgs, err := s.end(t)
	if len(msgs) != 0 || err != io.EOF {
		t.Errorf("stream ended with %v after %+v, want io.EOF after nothing more", err, msgs)
	}
	raw := s.raw.String()
	if !regexp.MustCompile(`\n\nretry: [0-9]+\n\n$`).MatchString(raw) {
		t.Errorf("the stream does not end with a retry line:\n%s", sseTail(raw))
	}
	// The NDJSON stream ends too; sse.Reader sees no message in it.
	if _, err := nd.end(t); err != io.EOF {
		t.Errorf("NDJSON stream ended with %v, want io.EOF", err)
	}
	if !strings.HasSuffix(nd.raw.String(), fmt.Sprintf(`"revision":%d}`+"\n", rev)) {
		t.Errorf("NDJSON stream ends with %q", sseTail(nd.raw.String()))
	}
}

// A client that stops reading must not hold the shutdown up: the server
// ends every stream and run returns nil within -shutdown-timeout.
func TestSSEShutdownStalledClient(t *testing.T) {
	ts := startServer(t, "-sync", "none", "-shutdown-timeout", "2s")
	host := strings.TrimPrefix(ts.URL, "http://")
	conn, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /watch/big/** HTTP/1.1\r\nHost: %s\r\n\r\n", host)
	conn.SetReadDeadline(time.Now().Add(sseWait))
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
	c, err := sseDialConn(ts.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.conn.Close()
	value := bytes.Repeat([]byte("v"), 64<<10)
	for i := range 256 {
		if _, err := c.write(http.MethodPut, fmt.Sprintf("big/%d", i%8), value); err != nil {
			t.Fatal(err)
		}
	}
	c.conn.Close()

	start := time.Now()
	ts.stop(t) // fails the test unless run returns nil
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("shutdown took %v with -shutdown-timeout 2s", d)
	}
}

func TestSSEMaxSubscribers(t *testing.T) {
	ts := startServer(t, "-max-subscribers", "2")
	s1 := sseOpen(t, ts.URL+"/watch/a", nil)
	s1.sync(t)
	s2 := sseOpen(t, ts.URL+"/watch/b?format=ndjson", nil)

	for _, path := range []string{"/watch/c", "/watch/c?format=ndjson", "/watch?pattern=a&pattern=b&snapshot=1"} {
		ctx, cancel := context.WithTimeout(context.Background(), sseWait)
		resp, err := sseGet(ctx, ts.URL+path, nil)
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
	s1.close()
	deadline := time.Now().Add(sseWait)
	var s3 *sseStream
	for s3 == nil {
		ctx, cancel := context.WithCancel(context.Background())
		resp, err := sseGet(ctx, ts.URL+"/watch/c", nil)
		switch {
		case err != nil:
			cancel()
			t.Fatal(err)
		case resp.StatusCode == http.StatusOK:
			s3 = sseWrap(t, resp, cancel)
		case resp.StatusCode != http.StatusTooManyRequests:
			t.Fatalf("new stream: %s", resp.Status)
		case time.Now().After(deadline):
			t.Fatalf("still 429 %v after a stream ended", sseWait)
		default:
			resp.Body.Close()
			cancel()
			time.Sleep(10 * time.Millisecond)
		}
	}
	s3.sync(t)
	rev := ssePut(t, ts.URL, "c", "1")
	if e := sseEventOf(t, s3.next(t)); e.ID != sseID(rev) {
		t.Errorf("new stream got %+v, want the put at %d", e, rev)
	}
	s2.close()
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
	ts := startServer(t, "-sync", "none", "-flush-interval", interval.String())
	for range streams - 1 {
		idle := sseOpen(t, ts.URL+"/watch/idle/**", nil)
		idle.sync(t)
		defer idle.close()
	}
	s := sseOpen(t, ts.URL+"/watch/p/**", nil)
	defer s.close()
	s.sync(t)
	flushed := time.Now() // the sync was flushed at the latest now
	var revs []int64
	for i := range 3 {
		revs = append(revs, ssePut(t, ts.URL, fmt.Sprintf("p/%d", i), "v"))
	}
	evs := s.events(t, 3)
	// The sync reached us after it was flushed, so the events may seem to
	// come a little early; without pacing they would come within
	// milliseconds, with the whole -flush-interval after 1 s.
	if waited := time.Since(flushed); waited < pace/2 || waited > interval/2 {
		t.Errorf("events arrived %v after the previous flush, want about %v", waited, pace)
	}
	for i, ev := range evs {
		if ev.ID != sseID(revs[i]) {
			t.Errorf("event %d has id %s, want %d", i, ev.ID, revs[i])
		}
	}
}
