package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"kvsse/sse/server"
	"kvsse/sse/server/servertest"
)

// limitClient returns a client whose connections come from the local
// address ip (127.0.0.1, 127.0.0.2...: all are the loopback on Linux), so
// that one test can be several client addresses.
func limitClient(t testing.TB, ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	tr := &http.Transport{DialContext: d.DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// limitAnswer is what the tests compare of a response.
type limitAnswer struct {
	Status int
	Code   string // the JSON error's code
	Body   string // the body of a successful GET
}

// limitCall sends a request and returns its answer and Retry-After.
func limitCall(t testing.TB, client *http.Client, method, url, body string) (limitAnswer, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, b, err := servertest.Do(ctx, client, method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	a := limitAnswer{Status: resp.StatusCode}
	switch {
	case resp.StatusCode >= 400:
		var e struct{ Error, Code string }
		if err := json.Unmarshal(b, &e); err != nil || e.Error == "" || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
			t.Errorf("%s %s: %s %q: want a JSON error (%v)", method, url, resp.Status, b, err)
		}
		a.Code = e.Code
	case method == http.MethodGet:
		a.Body = string(b)
	}
	return a, resp.Header.Get("Retry-After")
}

// limitKeys lists the keys of the server at base.
func limitKeys(t testing.TB, client *http.Client, base string) []string {
	t.Helper()
	a, _ := limitCall(t, client, http.MethodGet, base+"/kv?limit=1000", "")
	var page struct{ Items []struct{ Key string } }
	if err := json.Unmarshal([]byte(a.Body), &page); err != nil {
		t.Fatalf("listing %q: %v", a.Body, err)
	}
	keys := []string{}
	for _, it := range page.Items {
		keys = append(keys, it.Key)
	}
	return keys
}

// limitStep is one request to the server and the answer it must get.
type limitStep struct {
	method, key, value string
	want               limitAnswer
}

func limitRun(t *testing.T, client *http.Client, base string, steps []limitStep) {
	t.Helper()
	for _, s := range steps {
		got, _ := limitCall(t, client, s.method, base+"/kv/"+s.key, s.value)
		if diff := cmp.Diff(s.want, got); diff != "" {
			t.Errorf("%s %s %q (-want +got):\n%s", s.method, s.key, s.value, diff)
		}
	}
}

var (
	ansCreated  = limitAnswer{Status: http.StatusCreated}
	ansReplaced = limitAnswer{Status: http.StatusOK}
	ansDeleted  = limitAnswer{Status: http.StatusNoContent}
	ansFull     = limitAnswer{Status: http.StatusInsufficientStorage, Code: "store_full"}
	ansMissing  = limitAnswer{Status: http.StatusNotFound, Code: "not_found"}
)

func ansValue(v string) limitAnswer { return limitAnswer{Status: http.StatusOK, Body: v} }

// atKeyLimit is what a store that holds its -max-keys keys answers: a put
// of the new key add is refused and stores nothing, a replace of the
// key old (by a longer value) is done, and its delete makes room for
// add, after which the store is full again and refuses next.
func atKeyLimit(add, old, next string) []limitStep {
	return []limitStep{
		{"PUT", add, "1", ansFull},
		{"GET", add, "", ansMissing},
		{"PUT", old, "a longer value: same number of keys", ansReplaced},
		{"DELETE", old, "", ansDeleted},
		{"PUT", add, "1", ansCreated},
		{"PUT", next, "1", ansFull},
	}
}

// TestLimitStoreFull fills the store up to -max-keys or -max-bytes, checks
// that a write past them gets 507 and stores nothing while the others go
// on, and that a restart keeps the count.
func TestLimitStoreFull(t *testing.T) {
	keysBefore := append([]limitStep{
		{"PUT", "a", "1", ansCreated},
		{"PUT", "b", "1", ansCreated},
		{"PUT", "c", "1", ansCreated},
	}, atKeyLimit("d", "a", "e")...)
	keysAfter := atKeyLimit("e", "b", "f")
	tests := []struct {
		name          string
		args          []string
		before, after []limitStep // the steps before and after a restart
		keys          []string    // the keys at the end
	}{
		{
			name:   "max-keys",
			args:   []string{"-max-keys", "3"},
			before: keysBefore,
			after:  keysAfter,
			keys:   []string{"c", "d", "e"},
		},
		{
			name:   "max-keys restored from a snapshot",
			args:   []string{"-max-keys", "3", "-compact-bytes", "64"},
			before: keysBefore,
			after:  keysAfter,
			keys:   []string{"c", "d", "e"},
		},
		{
			name: "max-bytes",
			args: []string{"-max-bytes", "10"},
			before: []limitStep{
				{"PUT", "a", "12345", ansCreated},
				{"PUT", "b", "1234", ansCreated},
				{"PUT", "c", "12", ansFull},
				{"GET", "c", "", ansMissing},
				{"PUT", "c", "1", ansCreated}, // 10 bytes: the limit is inclusive
				{"PUT", "a", "123456", ansFull},
				{"GET", "a", "", ansValue("12345")},
				{"PUT", "a", "123", ansReplaced}, // shrinks to 8
				{"PUT", "c", "123", ansReplaced}, // grows by 2 to 10
				{"PUT", "empty", "", ansCreated}, // no bytes
				{"PUT", "d", "1", ansFull},
			},
			after: []limitStep{
				{"PUT", "d", "1", ansFull},
				{"GET", "d", "", ansMissing},
				{"DELETE", "b", "", ansDeleted}, // frees 4
				{"PUT", "d", "1234", ansCreated},
				{"PUT", "d", "12345", ansFull},
				{"GET", "d", "", ansValue("1234")},
			},
			keys: []string{"a", "c", "d", "empty"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := limitClient(t, "127.0.0.1")
			ts := servertest.Start(t, tt.args...)
			limitRun(t, client, ts.URL, tt.before)
			ts.Stop(t)
			ts = servertest.Start(t, append(tt.args, "-data", ts.Dir)...)
			limitRun(t, client, ts.URL, tt.after)
			if diff := cmp.Diff(tt.keys, limitKeys(t, client, ts.URL)); diff != "" {
				t.Errorf("keys (-want +got):\n%s", diff)
			}
		})
	}
}

// TestLimitExpiryFreesRoom checks that a key's expiry gives its room back.
func TestLimitExpiryFreesRoom(t *testing.T) {
	client := limitClient(t, "127.0.0.1")
	ts := servertest.Start(t, "-max-keys", "1")
	limitRun(t, client, ts.URL, []limitStep{
		{"PUT", "brief?ttl=1s", "1", ansCreated},
		{"PUT", "next", "1", ansFull},
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, _ := limitCall(t, client, http.MethodPut, ts.URL+"/kv/next", "1")
		if got == ansCreated {
			break
		}
		if got != ansFull || time.Now().After(deadline) {
			t.Fatalf("PUT next after the expiry: %+v, want 201 (or 507 until the expiry)", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if diff := cmp.Diff([]string{"next"}, limitKeys(t, client, ts.URL)); diff != "" {
		t.Errorf("keys (-want +got):\n%s", diff)
	}
}

// TestLimitSubscribersPerIP opens streams from one address up to
// -max-subscribers-per-ip: one more gets 429 while another address and
// other requests are served, and a stream that ends frees its slot.
func TestLimitSubscribersPerIP(t *testing.T) {
	ts := servertest.Start(t, "-max-subscribers-per-ip", "2")
	one, two := limitClient(t, "127.0.0.1"), limitClient(t, "127.0.0.2")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	open := func(client *http.Client, pattern string) *tlsStream {
		t.Helper()
		s, err := tlsOpen(ctx, client, ts.URL+"/watch/"+pattern)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.close)
		if _, err := s.until("sync", ""); err != nil {
			t.Fatal(err)
		}
		return s
	}
	first := open(one, "a")
	open(one, "b")

	for _, path := range []string{"/watch/c", "/watch?pattern=c&pattern=d&snapshot=1&format=ndjson"} {
		got, _ := limitCall(t, one, http.MethodGet, ts.URL+path, "")
		if want := (limitAnswer{Status: http.StatusTooManyRequests, Code: "too_many_subscribers"}); got != want {
			t.Errorf("a third stream %s: %+v, want %+v", path, got, want)
		}
	}
	other := open(two, "a")
	limitRun(t, one, ts.URL, []limitStep{{"PUT", "a", "1", ansCreated}, {"GET", "a", "", ansValue("1")}})
	for _, s := range []*tlsStream{first, other} {
		if e, err := s.until("put", "a"); err != nil || e.Value != "1" {
			t.Errorf("stream got %+v, %v; want the put of a", e, err)
		}
	}

	// The slot frees once the server sees the stream gone.
	first.close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := tlsOpen(ctx, one, ts.URL+"/watch/c")
		if err == nil {
			s.close()
			break
		}
		if !strings.Contains(err.Error(), "too_many_subscribers") || time.Now().After(deadline) {
			t.Fatalf("a new stream after one ended: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLimitMaxPatterns checks -max-patterns and its default.
func TestLimitMaxPatterns(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		patterns int
		want     limitAnswer
	}{
		{"default 64", nil, 64, limitAnswer{Status: http.StatusOK}},
		{"default, 65", nil, 65, limitAnswer{Status: http.StatusBadRequest, Code: "bad_parameter"}},
		{"2", []string{"-max-patterns", "2"}, 2, limitAnswer{Status: http.StatusOK}},
		{"2, 3", []string{"-max-patterns", "2"}, 3, limitAnswer{Status: http.StatusBadRequest, Code: "bad_parameter"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := servertest.Start(t, tt.args...)
			q := url.Values{}
			for i := range tt.patterns {
				q.Add("pattern", fmt.Sprintf("p%d/**", i))
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+"/watch?"+q.Encode(), nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			got := limitAnswer{Status: resp.StatusCode}
			if resp.StatusCode != http.StatusOK {
				var e struct{ Code string }
				b, _ := io.ReadAll(resp.Body)
				json.Unmarshal(b, &e)
				got.Code = e.Code
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("%d patterns (-want +got):\n%s", tt.patterns, diff)
			}
		})
	}
}

// TestLimitWriteRate spends one address's burst of writes: the next write
// gets 429 with Retry-After and changes nothing, while reads and another
// address's writes are served.
func TestLimitWriteRate(t *testing.T) {
	// One write every 5 s: the burst's tokens do not come back during
	// the test.
	ts := servertest.Start(t, "-write-rate", "0.2", "-write-burst", "3", "-sync", "none")
	one, two := limitClient(t, "127.0.0.1"), limitClient(t, "127.0.0.2")
	limited := limitAnswer{Status: http.StatusTooManyRequests, Code: "rate_limited"}
	limitRun(t, one, ts.URL, []limitStep{
		{"PUT", "a", "1", ansCreated},
		{"PUT", "b", "1", ansCreated},
		{"DELETE", "b", "", ansDeleted},
	})
	for _, s := range []limitStep{{"PUT", "c", "1", limited}, {"DELETE", "a", "", limited}, {"PUT", "a", "2", limited}} {
		got, retry := limitCall(t, one, s.method, ts.URL+"/kv/"+s.key, s.value)
		if diff := cmp.Diff(s.want, got); diff != "" {
			t.Errorf("%s %s (-want +got):\n%s", s.method, s.key, diff)
		}
		if n, err := strconv.Atoi(retry); err != nil || n < 1 || n > 5 {
			t.Errorf("%s %s: Retry-After %q, want 1 to 5 seconds", s.method, s.key, retry)
		}
	}
	limitRun(t, one, ts.URL, []limitStep{
		{"GET", "a", "", ansValue("1")},
		{"GET", "c", "", ansMissing},
	})
	limitRun(t, two, ts.URL, []limitStep{
		{"PUT", "c", "from another address", ansCreated},
	})
	if diff := cmp.Diff([]string{"a", "c"}, limitKeys(t, one, ts.URL)); diff != "" {
		t.Errorf("keys (-want +got):\n%s", diff)
	}
}

// TestLimitFlagErrors checks that the server refuses limits out of
// range.
func TestLimitFlagErrors(t *testing.T) {
	tests := [][]string{
		{"-max-keys", "-1"},
		{"-max-bytes", "-1"},
		{"-max-subscribers-per-ip", "-1"},
		{"-max-patterns", "0"},
		{"-write-rate", "-1"},
		{"-write-rate", "NaN"},
		{"-write-burst", "0"},
		{"-read-header-timeout", "0s"},
	}
	for _, args := range tests {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // were the flags accepted, the server would stop at once and return nil
			err := servertest.Serve(ctx, append([]string{"-addr", "127.0.0.1:0", "-memory"}, args...), io.Discard, io.Discard)
			if _, ok := err.(*server.ConfigError); !ok || !strings.Contains(err.Error(), args[0]) {
				t.Errorf("server.Serve returned %v, want a usage error naming %s", err, args[0])
			}
		})
	}
}

// TestLimitErrorsNameTheFlag: every limit's error says the limit and the
// flag that sets it, so that whoever meets it knows what to change.
func TestLimitErrorsNameTheFlag(t *testing.T) {
	tests := []struct {
		name, flag string
		args       []string
		reqs       [][3]string // method, path, body; the last one meets the limit
		status     int
	}{
		{name: "keys", flag: "-max-keys", args: []string{"-max-keys", "1"},
			reqs: [][3]string{{"PUT", "/kv/a", "1"}, {"PUT", "/kv/b", "1"}}, status: http.StatusInsufficientStorage},
		{name: "bytes", flag: "-max-bytes", args: []string{"-max-bytes", "4"},
			reqs: [][3]string{{"PUT", "/kv/a", "12345"}}, status: http.StatusInsufficientStorage},
		{name: "value", flag: "-max-value", args: []string{"-max-value", "3"},
			reqs: [][3]string{{"PUT", "/kv/a", "1234"}}, status: http.StatusRequestEntityTooLarge},
		{name: "patterns", flag: "-max-patterns", args: []string{"-max-patterns", "1"},
			reqs: [][3]string{{"GET", "/watch?pattern=a&pattern=b", ""}}, status: http.StatusBadRequest},
		{name: "pattern bytes", flag: "-max-pattern-bytes", args: []string{"-max-pattern-bytes", "10"},
			reqs: [][3]string{{"GET", "/watch?pattern=abcdef&pattern=ghijk", ""}}, status: http.StatusBadRequest},
		{name: "globs", flag: "-max-globs-per-ip", args: []string{"-max-globs-per-ip", "2"},
			reqs: [][3]string{{"GET", "/watch?pattern=a*/b*/a*&pattern=c*", ""}}, status: http.StatusTooManyRequests},
		{name: "write rate", flag: "-write-rate", args: []string{"-write-rate", "0.001", "-write-burst", "1"},
			reqs: [][3]string{{"PUT", "/kv/a", "1"}, {"PUT", "/kv/a", "2"}}, status: http.StatusTooManyRequests},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := servertest.Start(t, tt.args...)
			var resp *http.Response
			var b []byte
			for _, r := range tt.reqs {
				resp, b = servertest.Send(t, r[0], ts.URL+r[1], strings.NewReader(r[2]))
			}
			e := servertest.DecodeError(t, b)
			if resp.StatusCode != tt.status || !strings.Contains(e.Error, tt.flag) {
				t.Errorf("%d %s: want %d and an error naming %s", resp.StatusCode, b, tt.status, tt.flag)
			}
		})
	}
	// The stream limits: the stream that meets them.
	for _, tt := range []struct{ flag, limit string }{{"-max-subscribers", "1"}, {"-max-subscribers-per-ip", "1"}} {
		t.Run(tt.flag, func(t *testing.T) {
			ts := servertest.Start(t, tt.flag, tt.limit)
			s := servertest.Open(t, ts.URL+"/watch/a", nil)
			s.Sync(t)
			resp, b := servertest.Send(t, "GET", ts.URL+"/watch/b", nil)
			if e := servertest.DecodeError(t, b); resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(e.Error, tt.flag+" ") {
				t.Errorf("%d %s: want 429 and an error naming %s", resp.StatusCode, b, tt.flag)
			}
		})
	}
}

// TestLimitGlobsPerIP: the distinct glob segments of an address's open
// streams are counted together, a glob held by two streams once, and a
// stream's end gives its globs back.
func TestLimitGlobsPerIP(t *testing.T) {
	ts := servertest.Start(t, "-max-globs-per-ip", "2")
	s1 := servertest.Open(t, ts.URL+"/watch?pattern=x/a*&pattern=b*/**", nil)
	s1.Sync(t)
	s2 := servertest.Open(t, ts.URL+"/watch?pattern=a*", nil) // a* again: not new
	s2.Sync(t)
	if resp, b := servertest.Send(t, "GET", ts.URL+"/watch?pattern=c*", nil); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("a third distinct glob: %d %s, want 429", resp.StatusCode, b)
	}
	s1.Close() // b* goes; a* stays with s2
	deadline := time.Now().Add(servertest.Timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), servertest.Timeout)
		resp, err := servertest.Get(ctx, ts.URL+"/watch?pattern=c*", nil) // the headers only
		cancel()
		if err == nil && resp.StatusCode == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("c* still refused %v after the stream holding b* ended: %v %v", servertest.Timeout, resp, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestHostileGlobsDoNotSlowWrites: one address opens 100 streams of 64
// long, distinct glob patterns (*q*q*...*q00001*, the limits that would
// refuse them turned off), and another client's PUTs take about as long
// as before: matching a write costs what its key and its matching streams
// cost, not what is registered. The server then still shuts down in time.
func TestHostileGlobsDoNotSlowWrites(t *testing.T) {
	ts := servertest.Start(t, "-max-pattern-bytes", "0", "-max-globs-per-ip", "0", "-write-rate", "0", "-shutdown-timeout", "5s")
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	median := func() time.Duration {
		var ds []time.Duration
		for i := range 101 {
			start := time.Now()
			a, _ := limitCall(t, client, "PUT", ts.URL+fmt.Sprintf("/kv/config/app/feature-%d", i), "on")
			ds = append(ds, time.Since(start))
			if a.Status/100 != 2 {
				t.Fatalf("victim PUT: %+v", a)
			}
		}
		slices.Sort(ds)
		return ds[len(ds)/2]
	}
	before := median()

	const streams, patterns = 100, 64
	for i := range streams {
		var q []string // not escaped: "*" may stand in a query, and escaped the request would pass 64 KiB
		for j := range patterns {
			q = append(q, "pattern="+strings.Repeat("*q", 390)+fmt.Sprintf("*q%05d*", i*patterns+j)) // ~790 bytes
		}
		s := servertest.Open(t, ts.URL+"/watch?"+strings.Join(q, "&"), nil)
		s.Sync(t)
	}
	during := median()
	t.Logf("victim PUT p50: %v before, %v with %d hostile streams of %d globs", before, during, streams, patterns)
	if during > 3*before {
		t.Errorf("victim PUT p50 %v with the hostile streams, over 3× the %v before", during, before)
	}

	start := time.Now()
	ts.Stop(t)
	if d := time.Since(start); d > 5*time.Second+2*time.Second {
		t.Errorf("shutdown took %v with the hostile streams open, -shutdown-timeout is 5s", d)
	}
}
