package server_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"kvsse/sse/server/servertest"
)

// tlsClient returns a client with transport tr that counts the
// connections it dials in dials.
func tlsClient(t testing.TB, tr *http.Transport, dials *atomic.Int64) *http.Client {
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// tlsProtocols returns the Protocols with those named set: "http1", "http2",
// "h2c".
func tlsProtocols(names ...string) *http.Protocols {
	var p http.Protocols
	for _, n := range names {
		switch n {
		case "http1":
			p.SetHTTP1(true)
		case "http2":
			p.SetHTTP2(true)
		case "h2c":
			p.SetUnencryptedHTTP2(true)
		}
	}
	return &p
}

// tlsEvent is one object of an NDJSON stream.
type tlsEvent struct {
	Event    string `json:"event"`
	Key      string `json:"key"`
	Value    string `json:"value"`
	Revision int64  `json:"revision"`
	Prev     string `json:"prev_value"` // with prev=1
}

// tlsStream is an open NDJSON stream of /watch.
type tlsStream struct {
	resp *http.Response
	sc   *bufio.Scanner
}

// tlsOpen opens url (a /watch URL; format=ndjson is added) with
// client. The stream ends when ctx does. A status other than 200 is an
// error that holds the body.
func tlsOpen(ctx context.Context, client *http.Client, url string) (*tlsStream, error) {
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+sep+"format=ndjson", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: %s %s", url, resp.Status, b)
	}
	return &tlsStream{resp: resp, sc: bufio.NewScanner(resp.Body)}, nil
}

// next reads the stream's next event.
func (s *tlsStream) next() (tlsEvent, error) {
	var e tlsEvent
	if !s.sc.Scan() {
		return e, fmt.Errorf("stream ended: %v", s.sc.Err())
	}
	err := json.Unmarshal(s.sc.Bytes(), &e)
	return e, err
}

// until reads events until one is event ev (and, if key is not "", of
// key), and returns it.
func (s *tlsStream) until(ev, key string) (tlsEvent, error) {
	for {
		e, err := s.next()
		if err != nil || (e.Event == ev && (key == "" || e.Key == key)) {
			return e, err
		}
	}
}

func (s *tlsStream) close() { s.resp.Body.Close() }

func TestTLSProtocols(t *testing.T) {
	cert, key, roots := servertest.TLSCert(t)
	ts := servertest.Start(t, "-tls-cert", cert, "-tls-key", key)
	if !strings.HasPrefix(ts.URL, "https://") {
		t.Fatalf("the server printed %q, want an https:// URL", ts.URL)
	}
	tests := []struct {
		name      string
		transport *http.Transport
		wantProto string
		wantALPN  string
	}{
		{"HTTP/2", &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true}, "HTTP/2.0", "h2"},
		// Go's client offers no ALPN when it speaks HTTP/1 only.
		{"HTTP/1.1 only", &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, Protocols: tlsProtocols("http1")}, "HTTP/1.1", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var dials atomic.Int64
			client := tlsClient(t, tt.transport, &dials)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			resp, _, err := servertest.Do(ctx, client, http.MethodPut, ts.URL+"/kv/tls/proto", "v")
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode/100 != 2 || resp.Proto != tt.wantProto || resp.TLS == nil || resp.TLS.NegotiatedProtocol != tt.wantALPN {
				t.Errorf("PUT: %s over %s, ALPN %q; want 2xx over %s, ALPN %q", resp.Status, resp.Proto, tlsALPN(resp), tt.wantProto, tt.wantALPN)
			}
			resp, b, err := servertest.Do(ctx, client, http.MethodGet, ts.URL+"/kv/tls/proto", "")
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusOK || string(b) != "v" || resp.Proto != tt.wantProto {
				t.Errorf("GET: %s %q over %s; want 200 \"v\" over %s", resp.Status, b, resp.Proto, tt.wantProto)
			}
			if n := dials.Load(); n != 1 {
				t.Errorf("%d connections, want 1", n)
			}
		})
	}
}

func tlsALPN(resp *http.Response) string {
	if resp.TLS == nil {
		return "(no TLS)"
	}
	return resp.TLS.NegotiatedProtocol
}

// TestTLSStreamsShareOneConnection opens 100 streams over HTTP/2 and writes
// a key for each through the same client: one connection carries it all.
func TestTLSStreamsShareOneConnection(t *testing.T) {
	const n = 100
	cert, key, roots := servertest.TLSCert(t)
	ts := servertest.Start(t, "-tls-cert", cert, "-tls-key", key, "-sync", "none")
	var dials atomic.Int64
	client := tlsClient(t, &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true}, &dials)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The first request opens the connection and learns the server's
	// stream limit; the streams then all go on it.
	if resp, _, err := servertest.Do(ctx, client, http.MethodGet, ts.URL+"/healthz", ""); err != nil || resp.Proto != "HTTP/2.0" {
		t.Fatalf("GET /healthz: %v, %v", err, resp)
	}
	live := make(chan error, n)
	errc := make(chan error, n)
	for i := range n {
		go func() {
			key := fmt.Sprintf("tls/%d", i)
			s, err := tlsOpen(ctx, client, ts.URL+"/watch/"+key+"?prev=1")
			if err == nil && s.resp.Proto != "HTTP/2.0" {
				err = fmt.Errorf("stream %d over %s", i, s.resp.Proto)
			}
			if err == nil {
				defer s.close()
				_, err = s.until("sync", "")
			}
			live <- err
			if err != nil {
				return
			}
			e, err := s.until("put", key)
			if err == nil && e.Value != "v"+key {
				err = fmt.Errorf("stream %d got %+v, want the value %q", i, e, "v"+key)
			}
			errc <- err
		}()
	}
	for range n {
		if err := <-live; err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		go func() {
			key := fmt.Sprintf("tls/%d", i)
			resp, b, err := servertest.Do(ctx, client, http.MethodPut, ts.URL+"/kv/"+key, "v"+key)
			if err == nil && resp.StatusCode != http.StatusCreated {
				err = fmt.Errorf("PUT %s: %s %s", key, resp.Status, b)
			}
			if err != nil {
				errc <- err
			}
		}()
	}
	for range n {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if got := dials.Load(); got != 1 {
		t.Errorf("%d streams and %d writes took %d connections, want 1", n, n, got)
	}
}

// TestH2C checks that, without TLS, HTTP/2 with prior knowledge is served,
// streams included (with prev=1: a put carries the value it replaced),
// and HTTP/1.1 still is.
func TestH2C(t *testing.T) {
	ts := servertest.Start(t)
	tests := []struct {
		name      string
		protocols *http.Protocols
		wantProto string
	}{
		{"h2c prior knowledge", tlsProtocols("h2c"), "HTTP/2.0"},
		{"HTTP/1.1", tlsProtocols("http1"), "HTTP/1.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var dials atomic.Int64
			client := tlsClient(t, &http.Transport{Protocols: tt.protocols}, &dials)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			key := "h2c/" + tt.wantProto
			s, err := tlsOpen(ctx, client, ts.URL+"/watch/"+key+"?prev=1")
			if err != nil {
				t.Fatal(err)
			}
			defer s.close()
			if s.resp.Proto != tt.wantProto {
				t.Errorf("stream over %s, want %s", s.resp.Proto, tt.wantProto)
			}
			if _, err := s.until("sync", ""); err != nil {
				t.Fatal(err)
			}
			resp, b, err := servertest.Do(ctx, client, http.MethodPut, ts.URL+"/kv/"+key, "on")
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusCreated || resp.Proto != tt.wantProto {
				t.Errorf("PUT: %s %s over %s, want 201 over %s", resp.Status, b, resp.Proto, tt.wantProto)
			}
			if e, err := s.until("put", key); err != nil || e.Value != "on" {
				t.Errorf("stream got %+v, %v; want the put of %s", e, err, key)
			}
			if _, _, err := servertest.Do(ctx, client, http.MethodPut, ts.URL+"/kv/"+key, "off"); err != nil {
				t.Fatal(err)
			}
			if e, err := s.until("put", key); err != nil || e.Value != "off" || e.Prev != "on" {
				t.Errorf("stream got %+v, %v; want the put of %s over on", e, err, key)
			}
		})
	}
}

// TestTLSShutdownWithStreams stops a server while HTTP/2 streams are open:
// every stream ends and server.Serve returns nil.
func TestTLSShutdownWithStreams(t *testing.T) {
	const n = 50
	cert, key, roots := servertest.TLSCert(t)
	ts := servertest.Start(t, "-tls-cert", cert, "-tls-key", key)
	var dials atomic.Int64
	client := tlsClient(t, &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true}, &dials)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var streams []*tlsStream
	for i := range n {
		s, err := tlsOpen(ctx, client, fmt.Sprintf("%s/watch/stop/%d", ts.URL, i))
		if err != nil {
			t.Fatal(err)
		}
		defer s.close()
		if _, err := s.until("sync", ""); err != nil {
			t.Fatal(err)
		}
		streams = append(streams, s)
	}
	ts.Stop(t) // fails the test unless server.Serve returns nil
	for i, s := range streams {
		for {
			if _, err := s.next(); err != nil {
				break // the stream ended
			}
		}
		if i == 0 && s.resp.Proto != "HTTP/2.0" {
			t.Errorf("streams over %s, want HTTP/2.0", s.resp.Proto)
		}
	}
}

// TestLongPollProtocols: a long poll answers over HTTP/2 (TLS and h2c)
// and HTTP/1.1 over TLS on the handler's goroutine, keeping the
// connection; over HTTP/1.1 in clear a waiting poll is taken over by the
// pool and its connection closes after the answer.
func TestLongPollProtocols(t *testing.T) {
	cert, key, roots := servertest.TLSCert(t)
	tlsSrv := servertest.Start(t, "-tls-cert", cert, "-tls-key", key)
	clear := servertest.Start(t)
	tests := []struct {
		name      string
		url       string
		transport *http.Transport
		wantProto string
		wantDials int64
	}{
		{"HTTP/2", tlsSrv.URL, &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true}, "HTTP/2.0", 1},
		{"HTTP/1.1 over TLS", tlsSrv.URL, &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, Protocols: tlsProtocols("http1")}, "HTTP/1.1", 1},
		{"h2c", clear.URL, &http.Transport{Protocols: tlsProtocols("h2c")}, "HTTP/2.0", 1},
		{"HTTP/1.1 pooled", clear.URL, &http.Transport{Protocols: tlsProtocols("http1")}, "HTTP/1.1", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var dials, writerDials atomic.Int64
			client := tlsClient(t, tt.transport, &dials)
			writer := tlsClient(t, &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}, &writerDials)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			prefix := "lp/" + strings.NewReplacer("/", "", " ", "", ".", "").Replace(tt.name)
			type answer struct {
				rev    int64
				events []tlsEvent
				err    error
			}
			poll := func(query string) (a answer) {
				resp, b, err := servertest.Do(ctx, client, http.MethodGet, tt.url+"/watch/"+prefix+"/*"+query, "")
				if err != nil {
					return answer{err: err}
				}
				var body struct {
					Revision int64      `json:"revision"`
					Events   []tlsEvent `json:"events"`
				}
				if err := json.Unmarshal(b, &body); resp.StatusCode != http.StatusOK || resp.Proto != tt.wantProto || err != nil {
					return answer{err: fmt.Errorf("GET %s: %s over %s, %s (%v); want 200 over %s", query, resp.Status, resp.Proto, b, err, tt.wantProto)}
				}
				return answer{body.Revision, body.Events, nil}
			}
			first := poll("?poll=1")
			if first.err != nil {
				t.Fatal(first.err)
			}
			got := make(chan answer, 1)
			go func() { got <- poll(fmt.Sprintf("?wait=1m&since=%d", first.rev)) }()
			// The write must find the poll waiting: one that came after it
			// would be answered at once, and its connection kept.
			for {
				_, m, err := servertest.Do(ctx, writer, http.MethodGet, tt.url+"/metrics", "")
				if err != nil {
					t.Fatal(err)
				}
				if strings.Contains(string(m), "\nkvsse_subscribers 1\n") {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			resp, b, err := servertest.Do(ctx, writer, http.MethodPut, tt.url+"/kv/"+prefix+"/k", "v")
			if err != nil || resp.StatusCode != http.StatusCreated {
				t.Fatalf("PUT: %v %s", err, b)
			}
			var put struct{ Revision int64 }
			if err := json.Unmarshal(b, &put); err != nil {
				t.Fatal(err)
			}
			rev := put.Revision
			a := <-got
			if a.err != nil {
				t.Fatal(a.err)
			}
			if want := []tlsEvent{{Event: "put", Key: prefix + "/k", Value: "v", Revision: rev}}; a.rev != rev || len(a.events) != 1 || a.events[0] != want[0] {
				t.Errorf("the wait answered %d %+v, want %d %+v", a.rev, a.events, rev, want)
			}
			if again := poll(fmt.Sprintf("?poll=1&since=%d", a.rev)); again.err != nil || again.rev != rev || len(again.events) != 0 {
				t.Errorf("poll=1 from %d answered %+v, want nothing at %d", a.rev, again, rev)
			}
			if n := dials.Load(); n != tt.wantDials {
				t.Errorf("%d connections, want %d", n, tt.wantDials)
			}
		})
	}
}

// TestH2CCoalesce follows keys with coalesce=1 over HTTP/2, where the
// stream is written from its handler's goroutine rather than by the pool,
// while the client reads nothing and the keys are flooded: the stream is
// merged instead of ended, sent a chunk at a time once the client reads
// again, and the state it builds equals the listing.
func TestH2CCoalesce(t *testing.T) {
	ts := servertest.Start(t, "-sub-buffer", "64", "-sync", "none", "-write-rate", "0")
	var dials atomic.Int64
	client := tlsClient(t, &http.Transport{Protocols: tlsProtocols("h2c")}, &dials)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := tlsOpen(ctx, client, ts.URL+"/watch/co/**?coalesce=1")
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	s.sc.Buffer(nil, 1<<20)
	if s.resp.Proto != "HTTP/2.0" {
		t.Fatalf("stream over %s, want HTTP/2.0", s.resp.Proto)
	}
	if _, err := s.until("sync", ""); err != nil {
		t.Fatal(err)
	}
	// 20 MB, far more than HTTP/2's flow-control windows let through
	// while the client reads nothing.
	const writes = 20_000
	if err := servertest.Flood(ts.URL, "co/", 20, 4, writes/4); err != nil {
		t.Fatal(err)
	}
	end := servertest.Put(t, ts.URL, "co/end", "1")

	// The backlog goes out at once, not a chunk per heartbeat.
	timer := time.AfterFunc(servertest.Timeout, cancel)
	defer timer.Stop()
	state := map[string]string{}
	events := 0
	for {
		e, err := s.next()
		if err != nil {
			t.Fatalf("after %d events: %v (the stream must reach co/end within %v)", events, err, servertest.Timeout)
		}
		switch e.Event {
		case "put":
			state[e.Key] = e.Value
		case "delete":
			delete(state, e.Key)
		default:
			continue
		}
		events++
		if e.Revision == end {
			break
		}
	}
	servertest.CheckCoalesced(t, ts.URL, "co/", state, events, writes)
}
