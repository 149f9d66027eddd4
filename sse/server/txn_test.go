package server_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"kvsse/sse/server/servertest"
)

// txnAnswer is the JSON answer of POST /txn.
type txnAnswer struct {
	Revision int64 `json:"revision"`
	Changes  []struct {
		Key          string `json:"key"`
		Event        string `json:"event"`
		PrevRevision int64  `json:"prev_revision"`
	} `json:"changes"`
	Error  string `json:"error"`
	Code   string `json:"code"`
	Failed []struct {
		Key      string `json:"key"`
		Revision int64  `json:"revision"`
	} `json:"failed"`
}

// postTxn sends a transaction and decodes its answer.
func postTxn(t *testing.T, base, body string) (int, http.Header, txnAnswer) {
	t.Helper()
	st, h, b := servertest.Call(t, "POST", base+"/txn", []byte(body), "Content-Type", "application/json")
	var a txnAnswer
	if err := json.Unmarshal(b, &a); err != nil {
		t.Fatalf("POST /txn %s: %d %q: %v", body, st, b, err)
	}
	return st, h, a
}

// storeRevision is the revision /healthz reports.
func storeRevision(t *testing.T, base string) int64 {
	t.Helper()
	_, _, b := servertest.Call(t, "GET", base+"/healthz", nil)
	var h struct{ Revision int64 }
	if err := json.Unmarshal(b, &h); err != nil {
		t.Fatal(err)
	}
	return h.Revision
}

func TestTxnOps(t *testing.T) { servertest.ForEachBackend(t, testTxnOps) }

func testTxnOps(t *testing.T, be servertest.Backend) {
	ts := be.Start(t)
	ra := servertest.Put(t, ts.URL, "cfg/a", "1")
	rb := servertest.Put(t, ts.URL, "cfg/b", "gone soon")
	rp1 := servertest.Put(t, ts.URL, "cfg/tmp/1", "x")
	rp2 := servertest.Put(t, ts.URL, "cfg/tmp/2", "y")
	bytesValue := []byte{0xff, 0x00, 0x80}
	body := fmt.Sprintf(`{"if": [{"key": "cfg/a", "revision": %d}, {"key": "cfg/lock", "revision": 0},
			{"key": "cfg/b", "exists": true}, {"key": "cfg/none", "exists": false}],
		"then": [{"put": "cfg/a", "value": "2", "content_type": "text/plain"},
			{"put": "cfg/logo", "value": %q, "encoding": "base64", "content_type": "image/png"},
			{"put": "cfg/lease", "value": "me", "ttl": "%ds"},
			{"delete": "cfg/b"},
			{"delete": "cfg/missing"},
			{"delete_prefix": "cfg/tmp/"}]}`, ra, base64.StdEncoding.EncodeToString(bytesValue), 10*be.TTL)
	st, h, a := postTxn(t, ts.URL, body)
	if st != http.StatusOK || !be.After(rp2, a.Revision) || h.Get("Kvsse-Revision") != strconv.FormatInt(a.Revision, 10) {
		t.Fatalf("txn: %d %+v, Kvsse-Revision %q; want 200 at the next revision after %d", st, a, h.Get("Kvsse-Revision"), rp2)
	}
	type change struct {
		Key, Event string
		Prev       int64
	}
	var got []change
	for _, c := range a.Changes {
		got = append(got, change{c.Key, c.Event, c.PrevRevision})
	}
	want := []change{{"cfg/a", "put", ra}, {"cfg/logo", "put", 0}, {"cfg/lease", "put", 0},
		{"cfg/b", "delete", rb}, {"cfg/tmp/1", "delete", rp1}, {"cfg/tmp/2", "delete", rp2}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
	etag := `"` + strconv.FormatInt(a.Revision, 10) + `"`
	for _, k := range []struct{ key, value, ctype string }{
		{"cfg/a", "2", "text/plain"}, {"cfg/logo", string(bytesValue), "image/png"}, {"cfg/lease", "me", "application/octet-stream"},
	} {
		st, h, b := servertest.Call(t, "GET", ts.URL+"/kv/"+k.key, nil)
		if st != 200 || string(b) != k.value || h.Get("Content-Type") != k.ctype || h.Get("ETag") != etag {
			t.Errorf("GET %s: %d %q %s %s; want %q %s %s", k.key, st, b, h.Get("Content-Type"), h.Get("ETag"), k.value, k.ctype, etag)
		}
	}
	for _, key := range []string{"cfg/b", "cfg/tmp/1", "cfg/tmp/2"} {
		if st, _, _ := servertest.Call(t, "GET", ts.URL+"/kv/"+key, nil); st != 404 {
			t.Errorf("GET %s after its delete: %d", key, st)
		}
	}
	if page := servertest.List(t, ts.URL, "cfg/lease"); page["cfg/lease"].Value != "me" {
		t.Errorf("listing of the lease: %+v", page)
	}
	m := metricsScrape(t, ts.URL+"/metrics")
	if n, c := m.val("kvsse_transactions_total"), m.val("kvsse_transaction_changes_total"); n != 1 || c != 6 {
		t.Errorf("metrics: %v transactions, %v changes; want 1 and 6", n, c)
	}
}

func TestTxnFailed(t *testing.T) { servertest.ForEachBackend(t, testTxnFailed) }

func testTxnFailed(t *testing.T, be servertest.Backend) {
	ts := be.Start(t)
	ra := servertest.Put(t, ts.URL, "f/a", "1")
	rb := servertest.Put(t, ts.URL, "f/b", "1")
	before := storeRevision(t, ts.URL)
	body := fmt.Sprintf(`{"if": [{"key": "f/a", "revision": %d}, {"key": "f/b", "revision": 0}, {"key": "f/c", "exists": true},
		{"key": "f/a", "exists": true}],
		"then": [{"put": "f/a", "value": "2"}, {"delete": "f/b"}]}`, ra+100)
	st, _, a := postTxn(t, ts.URL, body)
	type failure struct {
		Key string
		Rev int64
	}
	var got []failure
	for _, f := range a.Failed {
		got = append(got, failure{f.Key, f.Revision})
	}
	want := []failure{{"f/a", ra}, {"f/b", rb}, {"f/c", 0}}
	if st != http.StatusPreconditionFailed || a.Code != "precondition_failed" {
		t.Fatalf("%d %+v, want 412 precondition_failed", st, a)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("failed conditions (-want +got):\n%s", diff)
	}
	if after := storeRevision(t, ts.URL); be.Dense && after != before {
		t.Errorf("the store's revision moved from %d to %d", before, after)
	}
	if v := servertest.List(t, ts.URL, "f/"); v["f/a"].Value != "1" || v["f/b"].Value != "1" {
		t.Errorf("keys after a failed txn: %+v", v)
	}
}

// TestTxnBadInput: each malformed transaction gets a JSON error naming
// the op at fault, and nothing is written, on both backends.
func TestTxnBadInput(t *testing.T) { servertest.ForEachBackend(t, testTxnBadInput) }

func testTxnBadInput(t *testing.T, be servertest.Backend) {
	ts := be.Start(t, "-max-value", "8", "-max-txn-ops", "4")
	servertest.Put(t, ts.URL, "p/1", "x")
	before := storeRevision(t, ts.URL)
	tests := []struct {
		name, body string
		status     int
		code, says string
	}{
		{"not JSON", `{"then": [`, 400, "bad_parameter", "JSON"},
		{"unknown field", `{"then": [{"put": "a", "value": "1"}], "else": []}`, 400, "bad_parameter", "else"},
		{"unknown op field", `{"then": [{"put": "a", "value": "1", "vlaue": "2"}]}`, 400, "bad_parameter", "vlaue"},
		{"no then", `{"if": []}`, 400, "bad_parameter", "then"},
		{"empty then", `{"then": []}`, 400, "bad_parameter", "then"},
		{"two values", `{"then": [{"put": "a", "value": "1"}]}{}`, 400, "bad_parameter", "more than one"},
		{"invalid key", `{"then": [{"put": "a", "value": "1"}, {"put": "a//b", "value": "1"}]}`, 400, "invalid_key", "then[1]"},
		{"invalid condition key", `{"if": [{"key": "a/", "revision": 0}], "then": [{"put": "a", "value": "1"}]}`, 400, "invalid_key", "if[0]"},
		{"condition of both kinds", `{"if": [{"key": "a", "revision": 0, "exists": true}], "then": [{"put": "a", "value": "1"}]}`, 400, "bad_parameter", "if[0]"},
		{"op of two kinds", `{"then": [{"put": "a", "delete": "a", "value": "1"}]}`, 400, "bad_parameter", "then[0]"},
		{"put without value", `{"then": [{"put": "a"}]}`, 400, "bad_parameter", "then[0]"},
		{"value on a delete", `{"then": [{"delete": "a", "value": "1"}]}`, 400, "bad_parameter", "then[0]"},
		{"two ops on one key", `{"then": [{"put": "a", "value": "1"}, {"delete": "a"}]}`, 400, "invalid_transaction", "then[1]"},
		{"a prefix's key put too", `{"then": [{"delete_prefix": "p/"}, {"put": "p/1", "value": "1"}]}`, 400, "invalid_transaction", "then["},
		{"empty prefix", `{"then": [{"delete_prefix": ""}]}`, 400, "bad_parameter", "then[0]"},
		{"zero ttl", `{"then": [{"put": "a", "value": "1", "ttl": "0s"}]}`, 400, "bad_parameter", "then[0]"},
		{"negative ttl", `{"then": [{"put": "a", "value": "1", "ttl": -5}]}`, 400, "bad_parameter", "then[0]"},
		{"bad base64", `{"then": [{"put": "a", "value": "!!", "encoding": "base64"}]}`, 400, "bad_parameter", "then[0]"},
		{"unknown encoding", `{"then": [{"put": "a", "value": "1", "encoding": "hex"}]}`, 400, "bad_parameter", "then[0]"},
		{"bad content type", `{"then": [{"put": "a", "value": "1", "content_type": "a b"}]}`, 400, "bad_parameter", "then[0]"},
		{"value too large", `{"then": [{"put": "a", "value": "1"}, {"put": "b", "value": "123456789"}]}`, 413, "too_large", "then[1]"},
		{"too many ops", `{"then": [{"put": "a", "value": "1"}, {"put": "b", "value": "1"}, {"put": "c", "value": "1"}, {"put": "d", "value": "1"}, {"put": "e", "value": "1"}]}`, 413, "too_large", "-max-txn-ops"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, h, b := servertest.Call(t, "POST", ts.URL+"/txn", []byte(tt.body))
			e := servertest.DecodeError(t, b)
			if st != tt.status || e.Code != tt.code || !strings.Contains(e.Error, tt.says) || h.Get("Content-Type") != "application/json" {
				t.Errorf("%d %s; want %d %s saying %q", st, b, tt.status, tt.code, tt.says)
			}
		})
	}
	if after := storeRevision(t, ts.URL); be.Dense && after != before {
		t.Errorf("the store's revision moved from %d to %d", before, after)
	}
	if keys := servertest.List(t, ts.URL, ""); len(keys) != 1 {
		t.Errorf("keys after bad transactions: %v, want only p/1", keys)
	}
}

func TestTxnChangesNothing(t *testing.T) { servertest.ForEachBackend(t, testTxnChangesNothing) }

// testTxnChangesNothing: deletes of missing keys and an empty prefix take
// no revision.
func testTxnChangesNothing(t *testing.T, be servertest.Backend) {
	ts := be.Start(t)
	servertest.Put(t, ts.URL, "n/a", "1")
	before := storeRevision(t, ts.URL)
	st, _, a := postTxn(t, ts.URL, `{"then": [{"delete": "n/missing"}, {"delete_prefix": "n/none/"}]}`)
	if st != http.StatusOK || a.Revision < before || len(a.Changes) != 0 {
		t.Errorf("%d %+v; want 200 at revision %d or later with no changes", st, a, before)
	}
	// etcd's revision is shared with the other tests' writes: only the
	// embedded store's must stay still.
	if after := storeRevision(t, ts.URL); be.Dense && (after != before || a.Revision != before) {
		t.Errorf("the store's revision moved from %d to %d (answer %d)", before, after, a.Revision)
	}
}

func TestDeletePrefix(t *testing.T) { servertest.ForEachBackend(t, testDeletePrefix) }

func testDeletePrefix(t *testing.T, be servertest.Backend) {
	ts := be.Start(t)
	servertest.Put(t, ts.URL, "d/1", "1")
	servertest.Put(t, ts.URL, "d/2/x", "1")
	last := servertest.Put(t, ts.URL, "dx", "stays")
	st, h, b := servertest.Call(t, "DELETE", ts.URL+"/kv?prefix=d/", nil)
	var a struct{ Revision, Deleted int64 }
	if err := json.Unmarshal(b, &a); err != nil || st != 200 || a.Deleted != 2 || !be.After(last, a.Revision) || h.Get("Kvsse-Revision") != strconv.FormatInt(a.Revision, 10) {
		t.Fatalf("DELETE /kv?prefix=d/: %d %s", st, b)
	}
	if keys := servertest.List(t, ts.URL, "d"); len(keys) != 1 || keys["dx"].Value != "stays" {
		t.Errorf("keys left: %v, want dx only", keys)
	}
	st, _, b = servertest.Call(t, "DELETE", ts.URL+"/kv?prefix=", nil)
	if e := servertest.DecodeError(t, b); st != 400 || e.Code != "bad_parameter" {
		t.Errorf("DELETE /kv?prefix=: %d %s, want 400", st, b)
	}
}

// TestTxnAuth: a condition needs read on its key, a put or delete write
// on its key, and a delete_prefix a write pattern covering every key
// starting with its prefix.
func TestTxnAuth(t *testing.T) {
	tokens := `{"tokens": [
		{"name": "cfg", "token": "cfg-secret", "read": ["cfg/**"], "write": ["cfg/**"]},
		{"name": "jobs", "token": "jobs-secret", "read": ["**"], "write": ["jobs/*"]}]}`
	ts := servertest.Start(t, "-auth", servertest.AuthFile(t, "", tokens))
	tests := []struct {
		token, body string
		status      int
	}{
		{"cfg-secret", `{"then": [{"put": "cfg/a", "value": "1"}]}`, 200},
		{"cfg-secret", `{"if": [{"key": "other", "revision": 0}], "then": [{"put": "cfg/a", "value": "1"}]}`, 403},
		{"cfg-secret", `{"then": [{"put": "cfg/b", "value": "1"}, {"delete": "other"}]}`, 403},
		{"cfg-secret", `{"then": [{"delete_prefix": "cfg/"}]}`, 200},
		{"cfg-secret", `{"then": [{"delete_prefix": "cfg/x/"}]}`, 200},
		{"cfg-secret", `{"then": [{"delete_prefix": "cfg"}]}`, 403},    // would reach cfgX
		{"jobs-secret", `{"then": [{"delete_prefix": "jobs/"}]}`, 403}, // jobs/* is not jobs/**
		{"jobs-secret", `{"if": [{"key": "cfg/a", "exists": false}], "then": [{"put": "jobs/a", "value": "1"}]}`, 200},
		{"", `{"then": [{"put": "cfg/a", "value": "1"}]}`, 401},
	}
	for _, tt := range tests {
		hdr := []string{}
		if tt.token != "" {
			hdr = []string{"Authorization", "Bearer " + tt.token}
		}
		st, _, b := servertest.Call(t, "POST", ts.URL+"/txn", []byte(tt.body), hdr...)
		if st != tt.status {
			t.Errorf("%s %s: %d %s, want %d", tt.token, tt.body, st, b, tt.status)
		}
	}
	st, _, b := servertest.Call(t, "DELETE", ts.URL+"/kv?prefix=jobs/", nil, "Authorization", "Bearer jobs-secret")
	if st != 403 {
		t.Errorf("DELETE /kv?prefix=jobs/ with write jobs/*: %d %s, want 403", st, b)
	}
}
