package server_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"kvsse/kv"
	"kvsse/sse/server/servertest"
)

// TestRoutesAnswerJSON walks every route with every method and the
// paths next to them (trailing slashes, a missing key or pattern,
// unclean paths): each answer is the route's own or a JSON error with
// its status, 405 with Allow for a method a path does not serve, and
// never a redirect.
func TestRoutesAnswerJSON(t *testing.T) {
	ts := servertest.Start(t)
	servertest.Put(t, ts.URL, "a/b", "v")
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	tests := []struct {
		method, path string
		status       int
		code, allow  string // code "": a success
	}{
		{"GET", "/kv", 200, "", ""},
		{"GET", "/kv/", 200, "", ""},
		{"HEAD", "/kv", 200, "", ""},
		{"PUT", "/kv", 405, "method_not_allowed", "GET, HEAD, DELETE"},
		{"DELETE", "/kv", 400, "bad_parameter", ""},
		{"DELETE", "/kv?prefix=none/", 200, "", ""},
		{"POST", "/kv", 405, "method_not_allowed", "GET, HEAD, DELETE"},
		{"PATCH", "/kv", 405, "method_not_allowed", "GET, HEAD, DELETE"},
		{"POST", "/txn", 400, "bad_parameter", ""},
		{"GET", "/txn", 405, "method_not_allowed", "POST"},
		{"PUT", "/txn/", 404, "no_route", ""},
		{"PUT", "/kv/", 400, "invalid_key", ""},
		{"DELETE", "/kv/", 400, "invalid_key", ""},
		{"POST", "/kv/", 405, "method_not_allowed", "GET, HEAD, PUT, DELETE"},
		{"GET", "/kv/a/b", 200, "", ""},
		{"GET", "/kv/a/b/", 400, "invalid_key", ""},
		{"GET", "/kv//a", 400, "invalid_key", ""},
		{"GET", "/kv/a/./b", 400, "invalid_key", ""},
		{"GET", "/kv/a/../b", 400, "invalid_key", ""},
		{"GET", "/kv/..", 400, "invalid_key", ""},
		{"POST", "/kv/a/b", 405, "method_not_allowed", "GET, HEAD, PUT, DELETE"},
		{"PATCH", "/kv/a/b", 405, "method_not_allowed", "GET, HEAD, PUT, DELETE"},
		{"GET", "/watch", 400, "bad_parameter", ""},
		{"GET", "/watch/", 400, "bad_parameter", ""},
		{"POST", "/watch", 405, "method_not_allowed", "GET, HEAD"},
		{"POST", "/watch/a", 405, "method_not_allowed", "GET, HEAD"},
		{"GET", "/watch//a", 400, "invalid_pattern", ""},
		{"GET", "/watch/a/../b", 400, "invalid_pattern", ""},
		{"GET", "/backup", 200, "", ""},
		{"POST", "/backup", 405, "method_not_allowed", "GET, HEAD"},
		{"GET", "/kv?format=ndjson", 200, "", ""},
		{"GET", "/kv?format=xml", 400, "bad_parameter", ""},
		{"GET", "/kv?format=ndjson&limit=5", 400, "bad_parameter", ""},
		{"GET", "/healthz", 200, "", ""},
		{"POST", "/healthz", 405, "method_not_allowed", "GET, HEAD"},
		{"GET", "/healthz/", 404, "no_route", ""},
		{"GET", "/auth/session", 405, "method_not_allowed", "POST, DELETE"},
		{"POST", "/auth/session", 404, "no_route", ""}, // no -auth
		{"POST", "/metrics", 405, "method_not_allowed", "GET, HEAD"},
		{"GET", "/", 200, "", ""},
		{"POST", "/", 404, "no_route", ""},
		{"GET", "/nothing", 404, "no_route", ""},
		{"GET", "/nothing/../kv", 404, "no_route", ""},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			resp, b, err := servertest.Do(context.Background(), client, tt.method, ts.URL+tt.path, "")
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.status {
				t.Errorf("%d %s, want %d", resp.StatusCode, b, tt.status)
			}
			if tt.code != "" {
				if e := servertest.DecodeError(t, b); e.Code != tt.code || resp.Header.Get("Content-Type") != "application/json" {
					t.Errorf("%s (%s), want a JSON error with code %s", b, resp.Header.Get("Content-Type"), tt.code)
				}
			}
			if got := resp.Header.Get("Allow"); got != tt.allow {
				t.Errorf("Allow %q, want %q", got, tt.allow)
			}
		})
	}
}

// TestBackupRoute: GET /backup is a backup file at the revision of its
// Kvsse-Revision header, which restores to the store's keys; with -auth
// it needs a token that may read **; with etcd it is a 501 naming
// etcdctl snapshot save.
func TestBackupRoute(t *testing.T) {
	servertest.ForEachBackend(t, func(t *testing.T, be servertest.Backend) {
		auth := servertest.AuthFile(t, "", `{"tokens": [
			{"name": "all", "token": "all-secret", "read": ["**"]},
			{"name": "some", "token": "some-secret", "read": ["a/**"], "write": ["**"]}]}`)
		ts := be.Start(t, "-auth", auth)
		bearer := func(tok string) []string { return []string{"Authorization", "Bearer " + tok} }
		servertest.Call(t, "PUT", ts.URL+"/kv/a/x", []byte{0, 0xff}, bearer("some-secret")...)
		_, h, _ := servertest.Call(t, "PUT", ts.URL+"/kv/b", []byte("v"), bearer("some-secret")...)
		last, _ := strconv.ParseInt(h.Get("Kvsse-Revision"), 10, 64)
		for _, tt := range []struct {
			name   string
			hdr    []string
			status int
		}{{"no token", nil, 401}, {"a token that may not read **", bearer("some-secret"), 403}} {
			status, _, body := servertest.Call(t, "GET", ts.URL+"/backup", nil, tt.hdr...)
			if status != tt.status {
				t.Errorf("%s: %d %s, want %d", tt.name, status, body, tt.status)
			}
		}
		status, h, body := servertest.Call(t, "GET", ts.URL+"/backup", nil, bearer("all-secret")...)
		if !be.Dense {
			e := servertest.DecodeError(t, body)
			if status != http.StatusNotImplemented || e.Code != "not_implemented" || !strings.Contains(e.Error, "etcdctl snapshot save") {
				t.Errorf("etcd: %d %s, want 501 not_implemented naming etcdctl snapshot save", status, body)
			}
			return
		}
		if status != http.StatusOK || h.Get("Kvsse-Revision") != strconv.FormatInt(last, 10) {
			t.Fatalf("%d, Kvsse-Revision %q, want 200 at %d: %.200s", status, h.Get("Kvsse-Revision"), last, body)
		}
		dir := filepath.Join(t.TempDir(), "restored")
		rev, keys, err := kv.Restore(bytes.NewReader(body), dir)
		if err != nil || rev != last || keys != 2 {
			t.Fatalf("Restore = %d, %d keys, %v; want %d, 2 keys", rev, keys, err, last)
		}
	})
}

// TestExportRoute: GET /kv?format=ndjson (or Accept: application/x-ndjson)
// streams every key under the prefix at one revision, as listings show
// them, and with -auth only those the token may read.
func TestExportRoute(t *testing.T) {
	servertest.ForEachBackend(t, func(t *testing.T, be servertest.Backend) {
		auth := servertest.AuthFile(t, "", `{"tokens": [
			{"name": "all", "token": "all-secret", "read": ["**"], "write": ["**"]},
			{"name": "some", "token": "some-secret", "read": ["a/x/**", "a/y"]}]}`)
		ts := be.Start(t, "-auth", auth)
		all := []string{"Authorization", "Bearer all-secret"}
		var last int64
		for _, k := range []string{"a/x/1", "a/x/2", "a/y", "a/z", "b"} {
			_, h, _ := servertest.Call(t, "PUT", ts.URL+"/kv/"+k, []byte("v-"+k), append(all, "Content-Type", "text/x-"+k[:1])...)
			last, _ = strconv.ParseInt(h.Get("Kvsse-Revision"), 10, 64)
		}
		for _, tt := range []struct {
			name, query string
			hdr         []string
			want        []string
		}{
			{"format", "?prefix=a/&format=ndjson", all, []string{"a/x/1", "a/x/2", "a/y", "a/z"}},
			{"accept", "?prefix=a/x", append(all, "Accept", "application/x-ndjson"), []string{"a/x/1", "a/x/2"}},
			{"token", "?format=ndjson", []string{"Authorization", "Bearer some-secret"}, []string{"a/x/1", "a/x/2", "a/y"}},
		} {
			status, h, body := servertest.Call(t, "GET", ts.URL+"/kv"+tt.query, nil, tt.hdr...)
			if status != http.StatusOK || h.Get("Content-Type") != "application/x-ndjson" {
				t.Fatalf("%s: %d %s %s", tt.name, status, h.Get("Content-Type"), body)
			}
			if rev, _ := strconv.ParseInt(h.Get("Kvsse-Revision"), 10, 64); rev != be.StoreRev(last, rev) {
				t.Errorf("%s: Kvsse-Revision %d, want %d", tt.name, rev, last)
			}
			var got []string
			sc := bufio.NewScanner(bytes.NewReader(body))
			for sc.Scan() {
				var e struct {
					Key         string `json:"key"`
					Value       string `json:"value"`
					ContentType string `json:"content_type"`
				}
				if err := json.Unmarshal(sc.Bytes(), &e); err != nil || e.Value != "v-"+e.Key || e.ContentType != "text/x-"+e.Key[:1] {
					t.Errorf("%s: line %s (%v)", tt.name, sc.Bytes(), err)
				}
				got = append(got, e.Key)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("%s: keys (-want +got):\n%s", tt.name, diff)
			}
		}
	})
}
