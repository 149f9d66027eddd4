package server_test

import (
	"context"
	"net/http"
	"testing"

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
