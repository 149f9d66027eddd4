package servertest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"kvsse/sse"
)

// Timeout bounds every wait for something the server must send.
const Timeout = 10 * time.Second

// Client is the client of Write, Put, Del, List, Get and Open. It keeps
// idle connections for concurrent writers, and does not follow
// redirects: a redirect is an answer to check, not to hide.
var Client = &http.Client{
	Transport: &http.Transport{MaxIdleConnsPerHost: 64},
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

// Change is the data object of an event (and, with Event, an NDJSON
// line). Value is a pointer so that a missing value differs from "".
type Change struct {
	Event        string  `json:"event,omitempty"`
	Key          string  `json:"key,omitempty"`
	Value        *string `json:"value,omitempty"`
	Encoding     string  `json:"encoding,omitempty"`
	Revision     int64   `json:"revision"`
	PrevRevision int64   `json:"prev_revision,omitempty"`
	Expires      string  `json:"expires,omitempty"`
	Reason       string  `json:"reason,omitempty"`
	// The previous value, with prev=1.
	PrevValue       *string `json:"prev_value,omitempty"`
	PrevEncoding    string  `json:"prev_encoding,omitempty"`
	PrevContentType *string `json:"prev_content_type,omitempty"`
	Last            bool    `json:"last,omitempty"` // NDJSON: the last change of its revision on the stream
}

// Event is a dispatched SSE message with its data decoded.
type Event struct {
	ID    string
	Event string
	Data  Change
}

// ID is the event id of revision rev.
func ID(rev int64) string { return strconv.FormatInt(rev, 10) }

// Decode decodes one JSON object of the stream, refusing unknown fields.
func Decode(data string) (Change, error) {
	var c Change
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

// EventOf decodes the data of m, failing the test if it is not a Change.
func EventOf(t testing.TB, m sse.Message) Event {
	t.Helper()
	c, err := Decode(m.Data)
	if err != nil {
		t.Fatalf("event %q id %q: %v", m.Event, m.ID, err)
	}
	return Event{ID: m.ID, Event: m.Event, Data: c}
}

// KeyURL is the /kv URL of key, each segment escaped.
func KeyURL(base, key string) string {
	segs := strings.Split(key, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return base + "/kv/" + strings.Join(segs, "/")
}

// Write sends a write (a PUT with body, a DELETE with none) to the /kv
// URL u and returns the revision of its Kvsse-Revision header. It does
// not touch a testing.T: writer goroutines call it.
func Write(method, u string, body []byte) (int64, error) {
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	resp, err := Client.Do(req)
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

// PutBytes puts key on the server at base and returns the revision.
func PutBytes(t testing.TB, base, key string, value []byte) int64 {
	t.Helper()
	rev, err := Write(http.MethodPut, KeyURL(base, key), value)
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

// Put is PutBytes with a string.
func Put(t testing.TB, base, key, value string) int64 {
	t.Helper()
	return PutBytes(t, base, key, []byte(value))
}

// Del deletes key on the server at base and returns the revision.
func Del(t testing.TB, base, key string) int64 {
	t.Helper()
	rev, err := Write(http.MethodDelete, KeyURL(base, key), nil)
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

// Entry is an item of a listing.
type Entry struct {
	Value    string
	Encoding string
	Revision int64
}

// Page is a page of a listing, GET /kv, as the server answers it.
type Page struct {
	Revision int64   `json:"revision"`
	Items    []Item  `json:"items"`
	Next     *string `json:"next"` // nil on the last page
}

// Item is one key of a listing.
type Item struct {
	Key         string `json:"key"`
	Value       string `json:"value"`
	Encoding    string `json:"encoding"`
	Revision    int64  `json:"revision"`
	ContentType string `json:"content_type"`
	Expires     string `json:"expires"`
}

// List returns every key starting with prefix on the server at base,
// following the pages.
func List(t testing.TB, base, prefix string) map[string]Entry {
	t.Helper()
	out := map[string]Entry{}
	after := ""
	for {
		q := url.Values{"prefix": {prefix}, "limit": {"1000"}}
		if after != "" {
			q.Set("after", after)
		}
		resp, err := Client.Get(base + "/kv?" + q.Encode())
		if err != nil {
			t.Fatal(err)
		}
		var page Page
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("listing %q: %s, %v", prefix, resp.Status, err)
		}
		for _, it := range page.Items {
			out[it.Key] = Entry{Value: it.Value, Encoding: it.Encoding, Revision: it.Revision}
		}
		if page.Next == nil {
			return out
		}
		after = *page.Next
	}
}

// Get sends a GET of u with the given headers; ctx ends the request.
func Get(ctx context.Context, u string, header http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	return Client.Do(req)
}

// Stream is an open SSE stream, read by a goroutine through sse.Reader
// into a channel, and recorded raw. Only the test goroutine calls its
// methods.
type Stream struct {
	Header http.Header
	cancel context.CancelFunc
	items  chan item
	stop   chan struct{}
	once   sync.Once
	raw    LockedBuffer
}

// item is what the reading goroutine reports: a message, or the error
// that ended the stream (io.EOF when the server ended it).
type item struct {
	msg sse.Message
	err error
}

// Open opens the stream at u (a full URL), fails the test unless it
// answers 200, and closes it at the end of the test.
func Open(t testing.TB, u string, header http.Header) *Stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := Get(ctx, u, header)
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
	return Wrap(t, resp, cancel)
}

// Wrap starts reading the stream of resp, and closes it at the end of
// the test; cancel ends its request.
func Wrap(t testing.TB, resp *http.Response, cancel context.CancelFunc) *Stream {
	s := &Stream{Header: resp.Header, cancel: cancel, items: make(chan item), stop: make(chan struct{})}
	go s.read(resp.Body)
	t.Cleanup(s.Close)
	return s
}

func (s *Stream) read(body io.ReadCloser) {
	defer body.Close()
	rd := sse.NewReader(io.TeeReader(body, &s.raw))
	for {
		m, err := rd.Next()
		select {
		case s.items <- item{msg: m, err: err}:
		case <-s.stop:
			return
		}
		if err != nil {
			return
		}
	}
}

// Close cancels the request: the client goes away. It is idempotent.
func (s *Stream) Close() {
	s.once.Do(func() {
		s.cancel()
		close(s.stop)
	})
}

// Next returns the next message, failing the test if the stream ends or
// nothing comes within Timeout.
func (s *Stream) Next(t testing.TB) sse.Message {
	t.Helper()
	select {
	case it := <-s.items:
		if it.err != nil {
			t.Fatalf("stream ended: %v\nraw stream:\n%s", it.err, Tail(s.raw.String()))
		}
		return it.msg
	case <-time.After(Timeout):
		t.Fatalf("no event within %v\nraw stream:\n%s", Timeout, Tail(s.raw.String()))
	}
	panic("unreachable")
}

// Events reads n messages and decodes them.
func (s *Stream) Events(t testing.TB, n int) []Event {
	t.Helper()
	var out []Event
	for range n {
		out = append(out, EventOf(t, s.Next(t)))
	}
	return out
}

// Until reads messages up to and including the first one for which stop
// returns true.
func (s *Stream) Until(t testing.TB, stop func(Event) bool) []Event {
	t.Helper()
	var out []Event
	for {
		e := EventOf(t, s.Next(t))
		out = append(out, e)
		if stop(e) {
			return out
		}
	}
}

// End waits for the stream to end and returns the messages that came
// before the end and the error that ended it.
func (s *Stream) End(t testing.TB) ([]sse.Message, error) {
	t.Helper()
	var out []sse.Message
	deadline := time.After(Timeout)
	for {
		select {
		case it := <-s.items:
			if it.err != nil {
				return out, it.err
			}
			out = append(out, it.msg)
		case <-deadline:
			t.Fatalf("stream still open after %v", Timeout)
		}
	}
}

// Raw is what the stream sent so far, as it came.
func (s *Stream) Raw() string { return s.raw.String() }

// Sync reads the sync event that must come next and returns its revision.
func (s *Stream) Sync(t testing.TB) int64 {
	t.Helper()
	e := EventOf(t, s.Next(t))
	if e.Event != "sync" || e.ID != ID(e.Data.Revision) {
		t.Fatalf("got %+v, want a sync event whose id is its revision", e)
	}
	return e.Data.Revision
}

// OpenAtSync opens the stream at path of the server at base (an http://
// URL) on a connection of its own, for a client that stops reading, and
// reads up to its sync, within Timeout; the caller sets the connection's
// deadline for what it reads next. Lines may be up to 2 MiB long.
//
// rcvBuf, when not 0, sets the connection's receive buffer before the
// request, which turns off its autotuning: the server's writes then block
// soon. Otherwise it keeps the system's default, which on loopback is the
// safer choice for small events: a window smaller than a segment opens
// again only when the sender probes it, seconds later.
func OpenAtSync(t testing.TB, base, path string, rcvBuf int) (net.Conn, *sse.Reader) {
	t.Helper()
	host := strings.TrimPrefix(base, "http://")
	conn, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if rcvBuf != 0 {
		conn.(*net.TCPConn).SetReadBuffer(rcvBuf)
	}
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, host)
	conn.SetReadDeadline(time.Now().Add(Timeout))
	resp, err := http.ReadResponse(bufio.NewReaderSize(conn, 512), nil)
	if err != nil {
		t.Fatal(err)
	}
	rd := sse.NewReaderSize(resp.Body, 2<<20)
	if m, err := rd.Next(); err != nil || m.Event != "sync" {
		t.Fatalf("got %+v, %v; want the sync", m, err)
	}
	return conn, rd
}

// Tail is the end of a raw stream, for failure messages.
func Tail(s string) string {
	if len(s) > 2000 {
		return "..." + s[len(s)-2000:]
	}
	return s
}

// Op is an acknowledged write, as the stream must show it.
type Op struct {
	Rev   int64
	Event string
	Key   string
}

// Conn makes writes over one keep-alive HTTP/1.1 connection of its own:
// about half the cost of http.Client under the race detector, for the
// tests that make thousands of writes. One goroutine at a time uses it.
type Conn struct {
	conn net.Conn
	br   *bufio.Reader
	host string
	buf  []byte
}

// Dial connects to the server at base, an http:// URL.
func Dial(base string) (*Conn, error) {
	host := strings.TrimPrefix(base, "http://")
	conn, err := net.Dial("tcp", host)
	if err != nil {
		return nil, err
	}
	return &Conn{conn: conn, br: bufio.NewReader(conn), host: host}, nil
}

// Write sends a PUT (body) or a DELETE (nil body) of key and returns the
// revision of its Kvsse-Revision header.
func (c *Conn) Write(method, key string, body []byte) (int64, error) {
	c.buf = fmt.Appendf(c.buf[:0], "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n%s",
		method, KeyURL("", key), c.host, len(body), body)
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

// Close closes the connection.
func (c *Conn) Close() error { return c.conn.Close() }

// GoWriters runs Writers in a goroutine whose writers wait, half way,
// until halfway is closed, and returns the channel its Result comes on.
func GoWriters(base, prefix string, n, count int, value string) (halfway chan struct{}, done <-chan Result) {
	halfway = make(chan struct{})
	res := make(chan Result, 1)
	go func() {
		ops, err := Writers(base, prefix, n, count, value, halfway, nil)
		res <- Result{Ops: ops, Err: err}
	}()
	return halfway, res
}

// Writers runs n writers that each make count writes to keys of their
// own under prefix (mostly puts, some deletes), and returns every
// acknowledged write, in revision order, once they are done, or the first
// error. Between the first and second halves of its writes, each writer
// waits for halfway to be closed (nil: no wait). progress (if not nil)
// counts the acknowledged writes as they come.
func Writers(base, prefix string, n, count int, value string, halfway <-chan struct{}, progress *atomic.Int64) ([]Op, error) {
	var (
		mu   sync.Mutex // guards ops
		ops  []Op
		errc = make(chan error, n)
		wg   sync.WaitGroup
	)
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := Dial(base)
			if err != nil {
				errc <- err
				return
			}
			defer c.Close()
			var mine []Op
			for i := range count {
				if i == count/2 && halfway != nil {
					<-halfway
				}
				key := fmt.Sprintf("%s%d/%d", prefix, w, (i/2)%5)
				method, event, body := http.MethodPut, "put", []byte(value)
				if i%2 == 1 && (i/2)%3 == 0 {
					method, event, body = http.MethodDelete, "delete", nil // the key put just before
				}
				rev, err := c.Write(method, key, body)
				if err != nil {
					errc <- err
					return
				}
				mine = append(mine, Op{rev, event, key})
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

// Values returns the value of every key starting with prefix on the
// server at base.
func Values(t testing.TB, base, prefix string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for k, e := range List(t, base, prefix) {
		out[k] = e.Value
	}
	return out
}

// CheckCoalesced fails t unless state, the value of each key that a
// client of a coalescing stream built from its events, is the listing of
// prefix, and unless the client got fewer events than there were writes,
// as from a stream that merged them.
func CheckCoalesced(t testing.TB, base, prefix string, state map[string]string, events, writes int) {
	t.Helper()
	want := Values(t, base, prefix)
	var differ []string
	for k := range want {
		if v, ok := state[k]; !ok || v != want[k] {
			differ = append(differ, k)
		}
	}
	for k := range state {
		if _, ok := want[k]; !ok {
			differ = append(differ, k)
		}
	}
	if len(differ) > 0 {
		slices.Sort(differ)
		t.Errorf("the state built from the events differs from the listing at %q (of %d keys listed)", differ, len(want))
	}
	if events >= writes {
		t.Errorf("%d events for %d writes: the stream never merged", events, writes)
	}
	t.Logf("%d writes reached the client as %d events", writes, events)
}

// Flood makes writers×each writes of distinct values of about 1 KiB to
// the keys prefix0 to prefix{keys-1}, in turn, from writers connections of
// their own, as fast as the server answers, and returns the first error.
// The first writer's last write is a delete, so that a key ends deleted.
// It is for tests whose clients must fall behind.
func Flood(base, prefix string, keys, writers, each int) error {
	pad := strings.Repeat("x", 1000)
	errc := make(chan error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			c, err := Dial(base)
			if err != nil {
				errc <- err
				return
			}
			defer c.Close()
			for i := range each {
				method, key, body := http.MethodPut, fmt.Sprintf("%s%d", prefix, (w*each+i)%keys), fmt.Sprintf("%d-%d %s", w, i, pad)
				if w == 0 && i == each-1 {
					method, body = http.MethodDelete, ""
				}
				if _, err := c.Write(method, key, []byte(body)); err != nil {
					errc <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	return <-errc
}

// Result is what Writers started in a goroutine report.
type Result struct {
	Ops []Op
	Err error
}

// Resumed waits for the writers to report on done, then reads the
// resumed stream s up to their last write and returns what they
// acknowledged and the changes s sent. It fails the test unless s sends
// exactly one sync, no reset, and every change with its revision as id.
func Resumed(t testing.TB, s *Stream, done <-chan Result, wait time.Duration) (acked, got []Op) {
	t.Helper()
	var res Result
	select {
	case res = <-done:
	case <-time.After(wait):
		t.Fatal("writers did not finish")
	}
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	final := res.Ops[len(res.Ops)-1].Rev
	// After the sync, or at it when the replay reached the last write.
	syncs := 0
	synced := false
	for _, e := range s.Until(t, func(e Event) bool {
		if e.Event == "sync" {
			synced = true
		}
		return synced && e.Data.Revision >= final
	}) {
		if e.Event == "sync" {
			syncs++
			continue
		}
		if e.Event == "reset" || e.ID != ID(e.Data.Revision) {
			t.Fatalf("resumed stream sent %+v", e)
		}
		got = append(got, Op{e.Data.Revision, e.Event, e.Data.Key})
	}
	if syncs != 1 {
		t.Errorf("resumed stream sent %d syncs, want 1", syncs)
	}
	return res.Ops, got
}
