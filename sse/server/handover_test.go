package server_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"kvsse/sse"
	"kvsse/sse/server/servertest"
)

// These tests check the streams whose HTTP/1.1 connections the server
// takes over from net/http once the headers are out (sse.Pool), through
// the real binary: what a client reads is what the ordinary path (an h2c
// stream, served on its handler's goroutine) writes, heartbeats, a lagging
// client's end and resume, a closed client's slot, shutdown, logs and
// metrics. Whether a stream was taken over shows in the server's goroutine
// profile: an ordinary stream keeps its handler's goroutine, a taken-over
// one does not.

// hoWait bounds every wait for something the server does.
const hoWait = 10 * time.Second

// hoServer is the binary serving with -metrics-addr (for pprof) and JSON
// logs.
type hoServer struct {
	URL, metrics string
	cmd          *exec.Cmd
	log          *servertest.LockedBuffer
	exited       chan error
}

func hoStart(t *testing.T, args ...string) *hoServer {
	t.Helper()
	args = append([]string{"-addr", "127.0.0.1:0", "-metrics-addr", "127.0.0.1:0", "-log-format", "json", "-memory", "-sync", "none"}, args...)
	cmd := exec.Command(servertest.Binary(t), args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s := &hoServer{cmd: cmd, log: new(servertest.LockedBuffer), exited: make(chan error, 1)}
	cmd.Stderr = s.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-s.exited
		if t.Failed() {
			t.Logf("server log:\n%s", s.log.String())
		}
	})
	br := bufio.NewReader(stdout)
	for s.URL == "" || s.metrics == "" {
		line, err := br.ReadString('\n')
		if err != nil {
			cmd.Process.Kill()
			t.Fatalf("server did not start: %v\n%s", err, s.log.String())
		}
		if u, ok := strings.CutPrefix(strings.TrimSpace(line), sse.Banner); ok {
			s.URL = u
		}
		if u, ok := strings.CutPrefix(strings.TrimSpace(line), "kvsse metrics and pprof on "); ok {
			s.metrics = u
		}
	}
	go io.Copy(io.Discard, br)
	go func() { s.exited <- cmd.Wait() }()
	servertest.WaitReady(t, s.URL)
	return s
}

// handlers counts the goroutines running the watch handler.
func (s *hoServer) handlers(t *testing.T) int {
	t.Helper()
	_, b := servertest.Send(t, "GET", s.metrics+"/debug/pprof/goroutine?debug=1", nil)
	// debug=1 groups identical stacks: "N @ 0x..." then the frames.
	n := 0
	for _, group := range strings.Split(string(b), "\n\n") {
		if !strings.Contains(group, "kvsse/sse/server.(*api).handleWatch") {
			continue
		}
		count, _, _ := strings.Cut(group, " @ ")
		c, err := strconv.Atoi(strings.TrimSpace(count))
		if err != nil {
			t.Fatalf("goroutine profile: %q", group)
		}
		n += c
	}
	return n
}

// waitHandlers waits until want goroutines run the watch handler.
func (s *hoServer) waitHandlers(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(hoWait)
	for {
		n := s.handlers(t)
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines in the watch handler after %v, want %d", n, hoWait, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// metric returns the value of the sample named exactly (labels included)
// in /metrics, or 0.
func (s *hoServer) metric(t *testing.T, sample string) float64 {
	t.Helper()
	resp, err := http.Get(s.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return 0
}

// waitMetric waits until the sample has the value want.
func (s *hoServer) waitMetric(t *testing.T, sample string, want float64) {
	t.Helper()
	deadline := time.Now().Add(hoWait)
	for {
		v := s.metric(t, sample)
		if v == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is %v after %v, want %v", sample, v, hoWait, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *hoServer) put(t *testing.T, key, value string) int64 {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPut, s.URL+"/kv/"+key, strings.NewReader(value))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct{ Revision int64 }
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode/100 != 2 {
		t.Fatalf("PUT %s: %s, %v", key, resp.Status, err)
	}
	return body.Revision
}

func (s *hoServer) del(t *testing.T, key string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodDelete, s.URL+"/kv/"+key, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE %s: %s", key, resp.Status)
	}
}

// stop sends SIGTERM and waits for the process to exit 0.
func (s *hoServer) stop(t *testing.T) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-s.exited:
		s.exited <- err // for the cleanup
		if err != nil {
			t.Fatalf("after SIGTERM: %v, want exit 0", err)
		}
	case <-time.After(hoWait):
		t.Fatalf("not exited %v after SIGTERM", hoWait)
	}
}

// logLines returns the JSON log lines with the message msg.
func (s *hoServer) logLines(t *testing.T, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(s.log.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// hoStream is a stream read in the background: its messages, and the
// body bytes as they came.
type hoStream struct {
	resp   *http.Response
	msgs   chan sse.Message
	err    chan error // the reader's end: io.EOF for a clean one
	raw    servertest.LockedBuffer
	cancel context.CancelFunc
}

// hoOpen opens a stream with the client given (whose protocol decides
// the path) and reads it until its sync.
func hoOpen(t *testing.T, client *http.Client, url string) *hoStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := client.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		cancel()
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	st := &hoStream{resp: resp, msgs: make(chan sse.Message, 1024), err: make(chan error, 1), cancel: cancel}
	t.Cleanup(cancel)
	go func() {
		defer resp.Body.Close()
		rd := sse.NewReader(io.TeeReader(resp.Body, &st.raw))
		for {
			m, err := rd.Next()
			if err != nil {
				close(st.msgs)
				st.err <- err
				return
			}
			st.msgs <- m
		}
	}()
	st.until(t, func(m sse.Message) bool { return m.Event == "sync" })
	return st
}

// until returns the messages up to the first that stop accepts.
func (st *hoStream) until(t *testing.T, stop func(sse.Message) bool) []sse.Message {
	t.Helper()
	var out []sse.Message
	timeout := time.After(hoWait)
	for {
		select {
		case m, ok := <-st.msgs:
			if !ok {
				t.Fatalf("stream ended (%v) after %+v", <-st.err, out)
			}
			out = append(out, m)
			if stop(m) {
				return out
			}
		case <-timeout:
			t.Fatalf("nothing more in %v after %+v", hoWait, out)
		}
	}
}

// end waits for the stream to end and returns the reader's error.
func (st *hoStream) end(t *testing.T) error {
	t.Helper()
	timeout := time.After(hoWait)
	for {
		select {
		case _, ok := <-st.msgs:
			if !ok {
				return <-st.err
			}
		case <-timeout:
			t.Fatalf("stream still open %v later", hoWait)
		}
	}
}

func hoClient(t *testing.T, protocol string) *http.Client {
	tr := &http.Transport{Protocols: tlsProtocols(protocol), DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// TestHandOverSameBytes: an HTTP/1.1 stream is taken over (no handler
// goroutine stays) while an h2c stream keeps the ordinary path, and both
// clients read the same bytes: snapshot, sync, live puts and deletes of
// text and binary values, and the retry line at shutdown, after which
// both end cleanly. The server exits 0, logs a stream-end and an access
// line for each stream (the access line counting every body byte the
// client read) and counted the events sent.
func TestHandOverSameBytes(t *testing.T) {
	s := hoStart(t)
	s.put(t, "a/1", "one")
	s.put(t, "a/2", "two")
	const path = "/watch/a/**?snapshot=1"
	h1 := hoOpen(t, hoClient(t, "http1"), s.URL+path)
	h2 := hoOpen(t, hoClient(t, "h2c"), s.URL+path)
	if h1.resp.ProtoMajor != 1 || h2.resp.ProtoMajor != 2 {
		t.Fatalf("streams over %s and %s, want HTTP/1.1 and HTTP/2.0", h1.resp.Proto, h2.resp.Proto)
	}
	if !slices.Equal(h1.resp.TransferEncoding, []string{"chunked"}) || !h1.resp.Close {
		t.Errorf("HTTP/1.1 stream with Transfer-Encoding %q, Connection %q; want chunked, close (the connection is not reused)",
			h1.resp.TransferEncoding, h1.resp.Header.Get("Connection"))
	}
	for _, h := range []string{"Content-Type", "Cache-Control", "X-Accel-Buffering"} {
		if a, b := h1.resp.Header.Get(h), h2.resp.Header.Get(h); a != b || a == "" {
			t.Errorf("%s: %q over HTTP/1.1, %q over HTTP/2", h, a, b)
		}
	}
	s.waitHandlers(t, 1) // the h2c stream's
	if n := s.metric(t, "kvsse_subscribers"); n != 2 {
		t.Errorf("kvsse_subscribers %v with two streams", n)
	}

	s.put(t, "a/1", "uno")
	s.put(t, "b/1", "not watched")
	s.put(t, "a/3", "line 1\nline 2\r\n\"quoted\"")
	s.put(t, "a/4", "\xff\xfe binary")
	s.del(t, "a/2")
	last := s.put(t, "a/5", strings.Repeat("x", 100<<10)) // a write of many packets
	for _, st := range []*hoStream{h1, h2} {
		st.until(t, func(m sse.Message) bool { return m.ID == strconv.FormatInt(last, 10) })
	}
	if diff := cmp.Diff(h2.raw.String(), h1.raw.String()); diff != "" {
		t.Fatalf("HTTP/1.1 stream differs from HTTP/2 (-h2 +h1):\n%s", diff)
	}
	if s.handlers(t) != 1 {
		t.Errorf("%d watch handlers running, want the h2c stream's only", s.handlers(t))
	}

	s.stop(t)
	for name, st := range map[string]*hoStream{"HTTP/1.1": h1, "HTTP/2": h2} {
		if err := st.end(t); err != io.EOF {
			t.Errorf("%s stream ended with %v, want io.EOF", name, err)
		}
	}
	retry := regexp.MustCompile(`\n\nretry: [0-9]+\n\n$`)
	b1, b2 := h1.raw.String(), h2.raw.String()
	if !retry.MatchString(b1) || !retry.MatchString(b2) {
		t.Fatalf("streams do not end with a retry line:\n%q\n%q", hoTail(b1), hoTail(b2))
	}
	if a, b := retry.ReplaceAllString(b1, ""), retry.ReplaceAllString(b2, ""); a != b {
		t.Errorf("after the retry lines are cut the streams differ (-h2 +h1):\n%s", cmp.Diff(b, a))
	}

	ends := s.logLines(t, "stream ended")
	if len(ends) != 2 || ends[0]["why"] != sse.EndShutdown || ends[1]["why"] != sse.EndShutdown {
		t.Errorf("stream ended lines %v, want two with why %q", ends, sse.EndShutdown)
	}
	var sizes []float64
	for _, l := range s.logLines(t, "access") {
		if l["route"] == "GET /watch/{pattern...}" {
			if l["status"] != float64(200) {
				t.Errorf("access line %v, want status 200", l)
			}
			sizes = append(sizes, l["bytes"].(float64))
		}
	}
	want := []float64{float64(len(b1)), float64(len(b2))}
	slices.Sort(want)
	slices.Sort(sizes)
	if diff := cmp.Diff(want, sizes); diff != "" {
		t.Errorf("access lines' bytes of the streams (-read by the clients +logged):\n%s", diff)
	}
}

func hoTail(s string) string {
	if len(s) > 300 {
		return s[len(s)-300:]
	}
	return s
}

// TestHandOverHeartbeat: a taken-over stream beats, and each heartbeat
// carries the store's revision once every change up to it was written.
func TestHandOverHeartbeat(t *testing.T) {
	s := hoStart(t, "-heartbeat", "100ms")
	st := hoOpen(t, hoClient(t, "http1"), s.URL+"/watch/h/**")
	s.waitHandlers(t, 0)
	rev := s.put(t, "other/1", "a write the stream does not show")
	// A heartbeat dispatches no message: look for it in the bytes.
	deadline := time.Now().Add(hoWait)
	for !strings.Contains(st.raw.String(), fmt.Sprintf(": keep-alive\nid: %d\n\n", rev)) {
		if time.Now().After(deadline) {
			t.Fatalf("no heartbeat with id %d in %v:\n%s", rev, hoWait, hoTail(st.raw.String()))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Heartbeats keep coming; a put after them comes with its id.
	n := strings.Count(st.raw.String(), ": keep-alive\n")
	for strings.Count(st.raw.String(), ": keep-alive\n") < n+2 {
		if time.Now().After(deadline) {
			t.Fatalf("heartbeats stopped:\n%s", hoTail(st.raw.String()))
		}
		time.Sleep(20 * time.Millisecond)
	}
	put := s.put(t, "h/1", "v")
	if m := st.until(t, func(m sse.Message) bool { return m.Event == "put" }); m[len(m)-1].ID != strconv.FormatInt(put, 10) {
		t.Errorf("put after heartbeats: %+v, want id %d", m, put)
	}
}

// TestHandOverLag: a taken-over stream whose client reads nothing fills
// its queue and is disconnected as lagging, while writers never wait; the
// client then reads what was sent, a clean end, and resumes with
// Last-Event-ID without a gap or a duplicate. The client, which keeps
// connections for reuse, does not reuse the one the server closed.
func TestHandOverLag(t *testing.T) {
	s := hoStart(t, "-sub-buffer", "8")
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err == nil {
			c.(*net.TCPConn).SetReadBuffer(16 << 10) // no autotuning: the server's writes stall soon
		}
		return c, err
	}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	ctx, cancel := context.WithTimeout(context.Background(), hoWait)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/watch/lag/**", nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rd := sse.NewReaderSize(resp.Body, 1<<20)
	if m, err := rd.Next(); err != nil || m.Event != "sync" {
		t.Fatalf("got %+v, %v; want the sync", m, err)
	}
	s.waitHandlers(t, 0)

	value := strings.Repeat("v", 256<<10)
	var revs []int64
	for i := range 64 { // 16 MiB: far more than the socket buffers hold
		revs = append(revs, s.put(t, fmt.Sprintf("lag/%d", i), value))
	}
	var got []int64
	for {
		m, err := rd.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("after %d events: %v, want a clean end", len(got), err)
		}
		rev, _ := strconv.ParseInt(m.ID, 10, 64)
		got = append(got, rev)
	}
	if len(got) >= len(revs) {
		t.Fatalf("the stream delivered all %d events: it did not lag", len(got))
	}
	// The server closes the connection: it said so, and a PUT (which is
	// not retried on a dead kept connection) made at once gets through.
	if !resp.Close {
		t.Errorf("the stream's response has no Connection: close")
	}
	put, _ := http.NewRequest(http.MethodPut, s.URL+"/kv/other/1", strings.NewReader("v"))
	if resp, err := client.Do(put); err != nil {
		t.Fatalf("PUT with the client of the ended stream: %v", err)
	} else {
		resp.Body.Close()
	}
	s.waitMetric(t, `kvsse_stream_ends_total{why="lag"}`, 1)
	req, _ = http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/watch/lag/**", nil)
	req.Header.Set("Last-Event-ID", rd.LastEventID())
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rd = sse.NewReaderSize(resp.Body, 1<<20)
	for {
		m, err := rd.Next()
		if err != nil {
			t.Fatal(err)
		}
		if m.Event == "sync" {
			break
		}
		rev, _ := strconv.ParseInt(m.ID, 10, 64)
		got = append(got, rev)
	}
	if diff := cmp.Diff(revs, got); diff != "" {
		t.Errorf("lagging stream then resumed stream (-written +read):\n%s", diff)
	}
}

// TestHandOverClientGone: when the client of a taken-over stream goes
// away, the server notices without writing to it (no heartbeat comes
// within the test) and frees the subscriber slot.
func TestHandOverClientGone(t *testing.T) {
	s := hoStart(t, "-max-subscribers", "1", "-heartbeat", "1h")
	client := hoClient(t, "http1")
	st := hoOpen(t, client, s.URL+"/watch/g/**")
	s.waitHandlers(t, 0)
	resp, err := client.Get(s.URL + "/watch/g/**")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("second stream: %s, want 429", resp.Status)
	}
	st.cancel()
	s.waitMetric(t, `kvsse_stream_ends_total{why="client gone"}`, 1)
	s.waitMetric(t, "kvsse_subscribers", 0)
	next := hoOpen(t, client, s.URL+"/watch/g/**")
	rev := s.put(t, "g/1", "v")
	if m := next.until(t, func(m sse.Message) bool { return m.Event == "put" }); m[len(m)-1].ID != strconv.FormatInt(rev, 10) {
		t.Errorf("new stream got %+v, want the put at %d", m, rev)
	}
}

// TestHandOverShutdownStalled: a taken-over stream whose client reads
// nothing does not hold the shutdown up past -shutdown-timeout; a reading
// one still gets its retry line.
func TestHandOverShutdownStalled(t *testing.T) {
	s := hoStart(t, "-shutdown-timeout", "3s")
	reading := hoOpen(t, hoClient(t, "http1"), s.URL+"/watch/**")
	host := strings.TrimPrefix(s.URL, "http://")
	conn, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.(*net.TCPConn).SetReadBuffer(16 << 10)
	fmt.Fprintf(conn, "GET /watch/big/** HTTP/1.1\r\nHost: %s\r\n\r\n", host)
	s.waitMetric(t, "kvsse_subscribers", 2)
	s.waitHandlers(t, 0)
	value := bytes.Repeat([]byte("v"), 256<<10)
	for i := range 32 { // 8 MiB, fewer events than -sub-buffer: the stream stalls, it does not lag
		s.put(t, fmt.Sprintf("big/%d", i%4), string(value))
	}
	start := time.Now()
	s.stop(t)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutdown took %v with -shutdown-timeout 3s", d)
	}
	if err := reading.end(t); err != io.EOF || !regexp.MustCompile(`\n\nretry: [0-9]+\n\n$`).MatchString(reading.raw.String()) {
		t.Errorf("reading stream ended with %v, %q; want io.EOF after a retry line", err, hoTail(reading.raw.String()))
	}
}
