package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"kvsse/sse/server/servertest"
)

func revision(t testing.TB, h http.Header) int64 {
	t.Helper()
	n, err := strconv.ParseInt(h.Get("Kvsse-Revision"), 10, 64)
	if err != nil {
		t.Fatalf("Kvsse-Revision %q: %v", h.Get("Kvsse-Revision"), err)
	}
	return n
}

func TestKVRoutes(t *testing.T) { servertest.ForEachBackend(t, testKVRoutes) }

func testKVRoutes(t *testing.T, be servertest.Backend) {
	ts := be.Start(t)
	u := ts.URL + "/kv/config/app"
	etag := func(rev int64) string { return fmt.Sprintf(`"%d"`, rev) }

	// create
	st, h, b := servertest.Call(t, "PUT", u, []byte("on"), "Content-Type", "text/plain")
	if st != 201 || !be.After(0, revision(t, h)) || h.Get("ETag") != etag(revision(t, h)) {
		t.Fatalf("create: %d %v %s", st, h, b)
	}
	r1 := revision(t, h)
	if diff := cmp.Diff(fmt.Sprintf(`{"key":"config/app","revision":%d}`, r1), strings.TrimSpace(string(b))); diff != "" {
		t.Errorf("create body (-want +got):\n%s", diff)
	}
	// read
	st, h, b = servertest.Call(t, "GET", u, nil)
	if st != 200 || string(b) != "on" || h.Get("Content-Type") != "text/plain" || h.Get("ETag") != etag(r1) {
		t.Fatalf("get: %d %v %q", st, h, b)
	}
	st, h, b = servertest.Call(t, "HEAD", u, nil)
	if st != 200 || len(b) != 0 || h.Get("Content-Length") != "2" || h.Get("ETag") != etag(r1) {
		t.Fatalf("head: %d %v %q", st, h, b)
	}
	if st, _, _ = servertest.Call(t, "GET", u, nil, "If-None-Match", etag(r1)); st != 304 {
		t.Errorf("If-None-Match current: %d, want 304", st)
	}
	if st, _, _ = servertest.Call(t, "GET", u, nil, "If-None-Match", etag(r1+8)); st != 200 {
		t.Errorf("If-None-Match stale: %d, want 200", st)
	}
	// A bare revision, as people type it, counts as the quoted one.
	if st, _, _ = servertest.Call(t, "GET", u, nil, "If-None-Match", strconv.FormatInt(r1, 10)); st != 304 {
		t.Errorf("If-None-Match bare current: %d, want 304", st)
	}
	// replace, default content type
	st, h, _ = servertest.Call(t, "PUT", u, []byte("off"))
	if st != 200 || !be.After(r1, revision(t, h)) {
		t.Fatalf("replace: %d %v", st, h)
	}
	r2 := revision(t, h)
	if _, h, _ = servertest.Call(t, "GET", u, nil); h.Get("Content-Type") != "application/octet-stream" {
		t.Errorf("default content type %q", h.Get("Content-Type"))
	}
	// compare-and-set
	st, _, b = servertest.Call(t, "PUT", u, []byte("x"), "If-Match", etag(r1))
	if e := servertest.DecodeError(t, b); st != 412 || e.Code != "precondition_failed" || e.Revision == nil || *e.Revision != r2 {
		t.Fatalf("stale If-Match: %d %s", st, b)
	}
	st, _, b = servertest.Call(t, "PUT", u, []byte("x"), "If-Match", strconv.FormatInt(r1, 10))
	if e := servertest.DecodeError(t, b); st != 412 || e.Code != "precondition_failed" {
		t.Fatalf("stale bare If-Match: %d %s", st, b)
	}
	if st, h, _ = servertest.Call(t, "PUT", u, []byte("x"), "If-Match", strconv.FormatInt(r2, 10)); st != 200 || !be.After(r2, revision(t, h)) {
		t.Fatalf("bare If-Match current: %d %v", st, h)
	}
	r3 := revision(t, h)
	st, _, b = servertest.Call(t, "PUT", ts.URL+"/kv/missing", []byte("x"), "If-Match", etag(r3))
	if e := servertest.DecodeError(t, b); st != 412 || e.Revision == nil || *e.Revision != 0 {
		t.Fatalf("If-Match on a missing key: %d %s", st, b)
	}
	// create only
	st, _, b = servertest.Call(t, "PUT", u, []byte("y"), "If-None-Match", "*")
	if e := servertest.DecodeError(t, b); st != 412 || *e.Revision != r3 {
		t.Fatalf("If-None-Match * on existing: %d %s", st, b)
	}
	if st, h, _ = servertest.Call(t, "PUT", ts.URL+"/kv/new", []byte("y"), "If-None-Match", "*"); st != 201 || !be.After(r3, revision(t, h)) {
		t.Fatalf("If-None-Match * on absent: %d %v", st, h)
	}
	r4 := revision(t, h)
	// delete
	st, _, b = servertest.Call(t, "DELETE", u, nil, "If-Match", etag(r2))
	if st != 412 {
		t.Fatalf("stale delete: %d %s", st, b)
	}
	st, h, _ = servertest.Call(t, "DELETE", u, nil, "If-Match", etag(r3))
	if st != 204 || !be.After(r4, revision(t, h)) {
		t.Fatalf("delete: %d %v", st, h)
	}
	r5 := revision(t, h)
	st, _, b = servertest.Call(t, "GET", u, nil)
	if e := servertest.DecodeError(t, b); st != 404 || e.Code != "not_found" {
		t.Fatalf("get deleted: %d %s", st, b)
	}
	st, _, b = servertest.Call(t, "DELETE", u, nil)
	if e := servertest.DecodeError(t, b); st != 404 || e.Code != "not_found" {
		t.Fatalf("delete missing: %d %s", st, b)
	}
	// health
	st, _, b = servertest.Call(t, "GET", ts.URL+"/healthz", nil)
	var health struct{ Revision int64 }
	if err := json.Unmarshal(b, &health); st != 200 || err != nil || health.Revision != be.StoreRev(r5, health.Revision) {
		t.Fatalf("healthz: %d %s", st, b)
	}
}

// TestKVBadInput sends requests that break a rule: each gets its status
// and code, and nothing is stored.
func TestKVBadInput(t *testing.T) { servertest.ForEachBackend(t, testKVBadInput) }

func testKVBadInput(t *testing.T, be servertest.Backend) {
	ts := be.Start(t, "-max-value", "16")
	rev := list(t, ts.URL, url.Values{}).Revision
	if be.Dense && rev != 0 {
		t.Errorf("a new store at revision %d", rev)
	}
	long := strings.Repeat("a", 1025)
	tests := []struct {
		name, method, path string
		body               string
		hdr                []string
		status             int
		code               string
	}{
		{"double slash", "PUT", "/kv/a//b", "v", nil, 400, "invalid_key"},
		{"leading slash", "PUT", "/kv//a", "v", nil, 400, "invalid_key"},
		{"trailing slash", "PUT", "/kv/a/", "v", nil, 400, "invalid_key"},
		{"dot segment", "PUT", "/kv/a/./b", "v", nil, 400, "invalid_key"},
		{"dot dot segment", "PUT", "/kv/a/../b", "v", nil, 400, "invalid_key"},
		{"dot dot get", "GET", "/kv/..", "", nil, 400, "invalid_key"},
		{"star", "PUT", "/kv/a*", "v", nil, 400, "invalid_key"},
		{"control char", "PUT", "/kv/a%01b", "v", nil, 400, "invalid_key"},
		{"DEL char", "PUT", "/kv/a%7Fb", "v", nil, 400, "invalid_key"},
		{"invalid UTF-8", "PUT", "/kv/a%FFb", "v", nil, 400, "invalid_key"},
		{"too long", "PUT", "/kv/" + long, "v", nil, 400, "invalid_key"},
		{"bad ttl", "PUT", "/kv/k?ttl=soon", "v", nil, 400, "bad_parameter"},
		{"negative ttl", "PUT", "/kv/k?ttl=-5s", "v", nil, 400, "bad_parameter"},
		{"zero ttl", "PUT", "/kv/k?ttl=0", "v", nil, 400, "bad_parameter"},
		{"bad If-Match", "PUT", "/kv/k", "v", []string{"If-Match", "twelve"}, 400, "bad_parameter"},
		{"weak If-Match", "PUT", "/kv/k", "v", []string{"If-Match", `W/"12"`}, 400, "bad_parameter"},
		{"both preconditions", "PUT", "/kv/k", "v", []string{"If-Match", `"1"`, "If-None-Match", "*"}, 400, "bad_parameter"},
		{"If-None-Match etag on PUT", "PUT", "/kv/k", "v", []string{"If-None-Match", `"1"`}, 400, "bad_parameter"},
		{"bad content type", "PUT", "/kv/k", "v", []string{"Content-Type", "a b c"}, 400, "bad_parameter"},
		{"value too large", "PUT", "/kv/k", strings.Repeat("x", 17), nil, 413, "too_large"},
		{"limit zero", "GET", "/kv?limit=0", "", nil, 400, "bad_parameter"},
		{"limit negative", "GET", "/kv?limit=-1", "", nil, 400, "bad_parameter"},
		{"limit not a number", "GET", "/kv?limit=ten", "", nil, 400, "bad_parameter"},
		{"method", "POST", "/kv/k", "v", nil, 405, "method_not_allowed"},
		{"no route", "GET", "/nothing", "", nil, 404, "no_route"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body []byte
			if tt.body != "" {
				body = []byte(tt.body)
			}
			st, h, b := servertest.Call(t, tt.method, ts.URL+tt.path, body, tt.hdr...)
			e := servertest.DecodeError(t, b)
			if st != tt.status || e.Code != tt.code {
				t.Errorf("got %d %s, want %d %s", st, b, tt.status, tt.code)
			}
			if ct := h.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
		})
	}
	// Nothing was stored by any of them.
	_, _, b := servertest.Call(t, "GET", ts.URL+"/kv", nil)
	var after servertest.Page
	if json.Unmarshal(b, &after) == nil {
		rev = be.StoreRev(rev, after.Revision)
	}
	if diff := cmp.Diff(fmt.Sprintf(`{"revision":%d,"items":[]}`, rev), strings.TrimSpace(string(b))); diff != "" {
		t.Errorf("store after bad input (-want +got):\n%s", diff)
	}
}

// TestKVValueLimitStreamed checks that a body without Content-Length over
// the limit is refused with 413 and not stored.
func TestKVValueLimitStreamed(t *testing.T) { servertest.ForEachBackend(t, testKVValueLimitStreamed) }

func testKVValueLimitStreamed(t *testing.T, be servertest.Backend) {
	ts := be.Start(t, "-max-value", "1024")
	pr, pw := io.Pipe()
	go func() {
		chunk := bytes.Repeat([]byte("x"), 512)
		for range 8 {
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("PUT", ts.URL+"/kv/big", pr)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	pr.Close()
	if resp.StatusCode != 413 {
		t.Fatalf("status %d, want 413", resp.StatusCode)
	}
	if st, _, _ := servertest.Call(t, "GET", ts.URL+"/kv/big", nil); st != 404 {
		t.Fatalf("oversized value was stored: %d", st)
	}
}

// TestKVCASRace runs 100 read-modify-write increments on one counter with
// If-Match, retrying on 412: the counter ends at exactly 100.
func TestKVCASRace(t *testing.T) { servertest.ForEachBackend(t, testKVCASRace) }

func testKVCASRace(t *testing.T, be servertest.Backend) {
	ts := be.Start(t)
	u := ts.URL + "/kv/counter"
	servertest.Call(t, "PUT", u, []byte("0"))
	errc := make(chan error, 100)
	var wg sync.WaitGroup
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- servertest.Increment(u)
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, _, b := servertest.Call(t, "GET", u, nil); string(b) != "100" {
		t.Fatalf("counter = %s, want 100", b)
	}
}

func TestKVTTL(t *testing.T) { servertest.ForEachBackend(t, testKVTTL) }

func testKVTTL(t *testing.T, be servertest.Backend) {
	ts := be.Start(t)
	st, _, _ := servertest.Call(t, "PUT", ts.URL+"/kv/session?ttl="+strconv.Itoa(be.TTL), []byte("x"))
	if st != 201 {
		t.Fatalf("put with ttl: %d", st)
	}
	servertest.Call(t, "PUT", ts.URL+"/kv/kept?ttl=300ms", []byte("x"))
	servertest.Call(t, "PUT", ts.URL+"/kv/kept", []byte("y")) // a later PUT without ttl clears it
	_, _, b := servertest.Call(t, "GET", ts.URL+"/kv", nil)
	if !strings.Contains(string(b), `"expires":"`) {
		t.Errorf("listing does not show the expiry: %s", b)
	}
	wait := time.Duration(be.TTL)*time.Second + 4*time.Second
	deadline := time.Now().Add(wait)
	for {
		st, _, _ := servertest.Call(t, "GET", ts.URL+"/kv/session", nil)
		if st == 404 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("key with ttl=%d still there after %v", be.TTL, wait)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st, _, b := servertest.Call(t, "GET", ts.URL+"/kv/kept", nil); st != 200 || string(b) != "y" {
		t.Fatalf("key whose ttl was cleared: %d %q", st, b)
	}
	_, _, b = servertest.Call(t, "GET", ts.URL+"/kv?prefix=session", nil)
	if strings.Contains(string(b), `"session"`) {
		t.Fatalf("expired key listed: %s", b)
	}
}

func list(t testing.TB, base string, q url.Values) servertest.Page {
	t.Helper()
	st, _, b := servertest.Call(t, "GET", base+"/kv?"+q.Encode(), nil)
	if st != 200 {
		t.Fatalf("list: %d %s", st, b)
	}
	var l servertest.Page
	if err := json.Unmarshal(b, &l); err != nil {
		t.Fatalf("list: %v: %s", err, b)
	}
	return l
}

// TestKVListPages walks a listing page by page: every key with the prefix
// comes exactly once, in byte order.
func TestKVListPages(t *testing.T) { servertest.ForEachBackend(t, testKVListPages) }

func testKVListPages(t *testing.T, be servertest.Backend) {
	ts := be.Start(t)
	var want []string
	for i := range 250 {
		k := fmt.Sprintf("app/%d/x", i)
		want = append(want, k)
		servertest.Call(t, "PUT", ts.URL+"/kv/"+k, []byte(strconv.Itoa(i)))
	}
	servertest.Call(t, "PUT", ts.URL+"/kv/apple", []byte("not in app/"))
	_, h, _ := servertest.Call(t, "PUT", ts.URL+"/kv/app/bin", []byte{0xff, 0x00})
	last := revision(t, h)
	if be.Dense && last != 252 {
		t.Errorf("252nd write at revision %d", last)
	}
	want = append(want, "app/bin")
	sort.Strings(want)

	var got []string
	q := url.Values{"prefix": {"app/"}, "limit": {"7"}}
	for pages := 0; ; pages++ {
		l := list(t, ts.URL, q)
		if l.Revision != be.StoreRev(last, l.Revision) {
			t.Fatalf("page revision %d, want %d", l.Revision, last)
		}
		for _, it := range l.Items {
			got = append(got, it.Key)
			if it.Key == "app/bin" && (it.Encoding != "base64" || it.Value != "/wA=") {
				t.Errorf("binary value listed as %q %q", it.Value, it.Encoding)
			}
		}
		if l.Next == nil {
			break
		}
		if len(l.Items) != 7 || *l.Next != l.Items[6].Key {
			t.Fatalf("page of %d items, next %q", len(l.Items), *l.Next)
		}
		q.Set("after", *l.Next)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("keys listed (-want +got):\n%s", diff)
	}
	if n := len(list(t, ts.URL, url.Values{"limit": {"5000"}}).Items); n != 252 {
		t.Errorf("limit 5000 gave %d items, want all 252 (cut to 1000)", n)
	}
	if n := len(list(t, ts.URL, url.Values{}).Items); n != 100 {
		t.Errorf("default limit gave %d items, want 100", n)
	}
	if l := list(t, ts.URL, url.Values{"prefix": {"zzz"}}); len(l.Items) != 0 || l.Next != nil {
		t.Errorf("empty listing: %+v", l)
	}
}

// TestKVMaxLimitCut checks that limits above 1000 are cut to 1000.
func TestKVMaxLimitCut(t *testing.T) { servertest.ForEachBackend(t, testKVMaxLimitCut) }

func testKVMaxLimitCut(t *testing.T, be servertest.Backend) {
	ts := be.Start(t, "-sync", "none")
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < 1005; i += 8 {
				req, _ := http.NewRequest("PUT", fmt.Sprintf("%s/kv/k/%04d", ts.URL, i), strings.NewReader("v"))
				if resp, err := http.DefaultClient.Do(req); err == nil {
					resp.Body.Close()
				}
			}
		}()
	}
	wg.Wait()
	l := list(t, ts.URL, url.Values{"limit": {"5000"}})
	if len(l.Items) != 1000 || l.Next == nil || *l.Next != "k/0999" {
		t.Fatalf("got %d items, next %v", len(l.Items), l.Next)
	}
}

// TestMain stops the etcd cluster that the tests on both backends share.
func TestMain(m *testing.M) { servertest.Main(m) }
