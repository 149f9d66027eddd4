package bench_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"kvsse/sse"
	"kvsse/sse/bench"
	"kvsse/sse/bench/hub"
	"kvsse/sse/server/servertest"
)

// hubEvent is what a test reads of one event of a hub's stream.
type hubEvent struct {
	ID, Event, Data string
}

// TestHubDeliversInOrder runs several streams on the baseline hub and
// checks that each gets the sync, then every published message in
// revision order, with the revisions the PUTs were answered with.
func TestHubDeliversInOrder(t *testing.T) {
	srv := httptest.NewServer(hub.New().Handler())
	defer srv.Close()
	const subs, puts = 5, 300
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	type result struct {
		got []hubEvent
		err error
	}
	synced := make(chan error, subs)
	results := make(chan result, subs)
	for i := range subs {
		path := []string{"/watch", "/watch/**", "/watch?pattern=h/**", "/watch?pattern=x/**&pattern=h/**", "/watch"}[i]
		go func() {
			var res result
			live := false
			defer func() {
				if !live {
					synced <- fmt.Errorf("%s: no sync: %v", path, res.err)
				}
				results <- res
			}()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+path, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				res.err = err
				return
			}
			defer resp.Body.Close()
			r := sse.NewReader(resp.Body)
			for len(res.got) < puts+1 {
				m, err := r.Next()
				if err != nil {
					res.err = err
					return
				}
				if m.Event == "sync" && !live {
					live = true
					synced <- nil
				}
				res.got = append(res.got, hubEvent{m.ID, m.Event, m.Data})
			}
		}()
	}
	for range subs {
		if err := <-synced; err != nil {
			t.Fatalf("subscriber: %v", err)
		}
	}

	want := []hubEvent{{"0", "sync", `{"revision":0}`}}
	for i := range puts {
		key, value := "h/"+strconv.Itoa(i%7), fmt.Sprintf("v%d \"quoted\"", i)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPut, srv.URL+"/kv/"+key, strings.NewReader(value))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		rev := resp.Header.Get("Kvsse-Revision")
		if resp.StatusCode != http.StatusOK || rev != strconv.Itoa(i+1) {
			t.Fatalf("PUT %d: %s, Kvsse-Revision %q; want 200, %d", i, resp.Status, rev, i+1)
		}
		data, _ := json.Marshal(map[string]any{"key": key, "value": value, "revision": i + 1})
		want = append(want, hubEvent{rev, "put", string(data)})
	}
	for range subs {
		res := <-results
		if res.err != nil {
			t.Errorf("subscriber ended after %d events: %v", len(res.got), res.err)
		}
		// Data is compared as decoded JSON: the hub's field order is
		// key, value, revision; json.Marshal of a map sorts them.
		for i := range res.got {
			var v map[string]any
			if json.Unmarshal([]byte(res.got[i].Data), &v) == nil {
				b, _ := json.Marshal(v)
				res.got[i].Data = string(b)
			}
		}
		if diff := cmp.Diff(want, res.got); diff != "" {
			t.Errorf("events (-want +got):\n%s", diff)
		}
	}
}

// TestHubDropsStalledSubscriber checks that a stream that stops reading
// is dropped, its queue closed, without slowing the publisher, and that
// the stream then ends.
func TestHubDropsStalledSubscriber(t *testing.T) {
	h := hub.New()
	srv := httptest.NewServer(h.Handler())
	defer srv.Close()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/watch", nil)
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := sse.NewReader(resp.Body).Next(); err != nil || m.Event != "sync" {
		t.Fatalf("first event %+v, %v; want sync", m, err)
	}

	// Stop reading: the socket buffers fill, then the hub's queue.
	value := bytes.Repeat([]byte("x"), 16<<10)
	published := 0
	for h.Subscribers() > 0 {
		if published == 100_000 {
			t.Fatalf("still subscribed after %d messages of %d bytes", published, len(value))
		}
		h.Publish("k", value) // never blocks, or the test hangs here
		published++
	}
	if published <= hub.Buffer {
		t.Errorf("dropped after %d messages, want more than the queue (%d)", published, hub.Buffer)
	}
	// Reading again, the stream delivers what was queued and ends.
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Errorf("the dropped stream did not end cleanly: %v", err)
	}
}

// TestHubCommand runs "kvsse hub", "kvsse hub -bare" and "kvsse hub -bare
// -log FILE" (bench.RunHub): each prints its address, serves, and stops
// when ctx ends, an open stream included; with -log, a PUT's body is in
// the file when the PUT is answered.
func TestHubCommand(t *testing.T) {
	for _, mode := range []string{"hub", "bare", "bare-log"} {
		t.Run(mode, func(t *testing.T) {
			bare := mode != "hub"
			args := []string{"-addr", "127.0.0.1:0"}
			if bare {
				args = append(args, "-bare")
			}
			logPath := filepath.Join(t.TempDir(), "log")
			if mode == "bare-log" {
				args = append(args, "-log", logPath)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			url, done, err := servertest.RunInProcess(func(stdout io.Writer) error {
				return bench.RunHub(ctx, args, "127.0.0.1:8080", stdout, io.Discard)
			})
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.Get(url + "/healthz")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("healthz: %s", resp.Status)
			}
			req, _ := http.NewRequest(http.MethodPut, url+"/kv/a/b", strings.NewReader("v"))
			resp, err = http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			wantRev := "1"
			if bare {
				wantRev = ""
			}
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Kvsse-Revision") != wantRev {
				t.Errorf("PUT: %s, Kvsse-Revision %q; want 200, %q", resp.Status, resp.Header.Get("Kvsse-Revision"), wantRev)
			}
			if mode == "bare-log" {
				if data, err := os.ReadFile(logPath); err != nil || string(data) != "v" {
					t.Errorf("-log file after the PUT: %q, %v; want %q", data, err, "v")
				}
			}
			if !bare {
				resp, err := http.Get(url + "/watch")
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				if m, err := sse.NewReader(resp.Body).Next(); err != nil || m.ID != "1" || m.Event != "sync" {
					t.Errorf("first event %+v, %v; want sync with id 1", m, err)
				}
			}
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("RunHub: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("hub did not stop")
			}
		})
	}
}
