package hub_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"kvsse/sse/bench/hub"
)

// subscribe subscribes to h with patterns, which must be valid.
func subscribe(t *testing.T, h *hub.Hub, patterns ...string) *hub.Subscription {
	t.Helper()
	s, err := h.Subscribe(patterns...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestPublishDropsFullSubscriber(t *testing.T) {
	h := hub.New()
	slow := subscribe(t, h, "**")
	for i := range hub.Buffer + 1 {
		h.Publish(fmt.Sprintf("k/%d", i), []byte("v"))
	}
	n := 0
	for range slow.C {
		n++
	}
	if n != hub.Buffer || h.Subscribers() != 0 {
		t.Errorf("queued %d before the close, %d subscribers left; want %d, 0", n, h.Subscribers(), hub.Buffer)
	}
	h.Unsubscribe(slow) // after a drop: no second close
}

func TestPublishMatches(t *testing.T) {
	h := hub.New()
	defer h.Close()
	patterns := [][]string{{"**"}, {"a/**"}, {"a/b"}, {"b/**", "a/c"}}
	subs := make([]*hub.Subscription, len(patterns))
	for i, p := range patterns {
		subs[i] = subscribe(t, h, p...)
	}
	for _, key := range []string{"a/b", "a/c", "b/x/y", "ab"} {
		h.Publish(key, []byte(`x"`))
	}
	want := []int{4, 2, 1, 2}
	for i, s := range subs {
		if got := len(s.C); got != want[i] {
			t.Errorf("%q got %d messages, want %d", patterns[i], got, want[i])
		}
	}
	m := <-subs[2].C
	if diff := cmp.Diff("id: 1\nevent: put\ndata: {\"key\":\"a/b\",\"value\":\"x\\\"\",\"revision\":1}\n\n", string(m)); diff != "" {
		t.Errorf("event (-want +got):\n%s", diff)
	}
	for _, p := range []string{"a/*", "a**", "a/**/b", ""} {
		if _, err := h.Subscribe(p); err == nil {
			t.Errorf("Subscribe(%q) succeeded, want an error", p)
		}
	}
}

func TestBare(t *testing.T) {
	srv := httptest.NewServer(hub.Bare())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/kv/a/b")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || len(body) != 64 {
		t.Errorf("GET: %s, %d bytes; want 200, 64 bytes", resp.Status, len(body))
	}
	req, _ := http.NewRequest(http.MethodPut, srv.URL+"/kv/a/b", strings.NewReader("value"))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("PUT: %s, want 200", resp.Status)
	}
}

func TestSynced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := hub.NewSynced(f)
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()

	put := func(body string) int {
		req, _ := http.NewRequest(http.MethodPut, srv.URL+"/kv/k", strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// Concurrent PUTs share syncs; each is on disk when it is answered.
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := fmt.Sprintf("<%d>", i)
			if code := put(body); code != http.StatusOK {
				t.Errorf("PUT %s: %d, want 200", body, code)
				return
			}
			data, err := os.ReadFile(path)
			if err != nil {
				t.Error(err)
				return
			}
			if n := strings.Count(string(data), body); n != 1 {
				t.Errorf("PUT %s answered with the body %d times in the file, want once", body, n)
			}
		}()
	}
	wg.Wait()

	s.Close()
	if code := put("<late>"); code != http.StatusServiceUnavailable {
		t.Errorf("PUT after Close: %d, want 503", code)
	}
	data, _ := os.ReadFile(path)
	if strings.Contains(string(data), "<late>") {
		t.Error("a PUT after Close was written")
	}
}
