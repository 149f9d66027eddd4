package server_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"kvsse/kv"
	"kvsse/sse/server/servertest"
)

// The tokens of authTokens.
const (
	authAdmin   = "admin-secret"
	authReader  = "reader-secret"
	authWriter  = "writer-secret"
	authTeamA   = "team-a-secret" // given to the server as its SHA-256 only
	authUnknown = "nobody-secret"
)

func authSHA(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// authTokens is an auth file: an admin, a reader and a writer of every
// key, and a token scoped to team-a/** in its SHA-256 form.
var authTokens = `{"tokens": [
	{"name": "admin", "token": "` + authAdmin + `", "read": ["**"], "write": ["**"]},
	{"name": "reader", "token": "` + authReader + `", "read": ["**"]},
	{"name": "writer", "token": "` + authWriter + `", "write": ["**"]},
	{"name": "team-a", "sha256": "` + authSHA(authTeamA) + `", "read": ["team-a/**"], "write": ["team-a/**"]}
]}`

// authResult is what the tests compare of a response.
type authResult struct {
	Status  int
	Code    string // the JSON error's code
	WWWAuth string
}

// authDo sends one request, with the token as a Bearer header unless it
// is "", and returns the response and its body. A stream's body is not
// read: the request is cancelled once the headers arrived.
func authDo(t testing.TB, c *http.Client, method, u, token, body string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	switch resp.Header.Get("Content-Type") {
	case "text/event-stream", "application/x-ndjson":
		cancel()
		return resp, nil
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// authResultOf sums up a response for comparison.
func authResultOf(t testing.TB, resp *http.Response, body []byte) authResult {
	t.Helper()
	res := authResult{Status: resp.StatusCode, WWWAuth: resp.Header.Get("WWW-Authenticate")}
	if resp.StatusCode >= 400 && resp.Request.Method != http.MethodHead {
		var e struct{ Error, Code string }
		if err := json.Unmarshal(body, &e); err != nil || e.Error == "" {
			t.Errorf("%s %s: error body %q is not JSON {error, code}: %v", resp.Request.Method, resp.Request.URL, body, err)
		}
		res.Code = e.Code
	}
	return res
}

// authPut writes key=value with the admin token.
func authPut(t testing.TB, base, key, value string) {
	t.Helper()
	resp, body := authDo(t, nil, http.MethodPut, base+"/kv/"+key, authAdmin, value, nil)
	if resp.StatusCode/100 != 2 {
		t.Fatalf("PUT %s: %d %s", key, resp.StatusCode, body)
	}
}

// TestAuthMatrix asks every route with no token, an unknown token, a
// reader, a writer and a token scoped to team-a/**.
func TestAuthMatrix(t *testing.T) {
	ts := servertest.Start(t, "-auth", servertest.AuthFile(t, "", authTokens), "-cors-origins", "https://app.example.com")
	authPut(t, ts.URL, "team-a/x", "a")
	authPut(t, ts.URL, "team-b/x", "b")

	ok := authResult{Status: 200}
	created := authResult{Status: 201}
	noContent := authResult{Status: 204}
	notFound := authResult{Status: 404, Code: "not_found"}
	noRoute := authResult{Status: 404, Code: "no_route"}
	unauthorized := authResult{Status: 401, Code: "unauthorized", WWWAuth: "Bearer"}
	forbidden := authResult{Status: 403, Code: "forbidden"}
	badKey := authResult{Status: 400, Code: "invalid_key"}
	badPattern := authResult{Status: 400, Code: "invalid_pattern"}
	preflight := map[string]string{"Origin": "https://app.example.com", "Access-Control-Request-Method": "PUT"}

	tests := []struct {
		name         string
		method, path string
		token, body  string
		hdr          map[string]string
		want         authResult
	}{
		{"get/none", "GET", "/kv/team-a/x", "", "", nil, unauthorized},
		{"get/unknown", "GET", "/kv/team-a/x", authUnknown, "", nil, unauthorized},
		{"get/reader", "GET", "/kv/team-a/x", authReader, "", nil, ok},
		{"get/writer", "GET", "/kv/team-a/x", authWriter, "", nil, forbidden},
		{"get/team-a", "GET", "/kv/team-a/x", authTeamA, "", nil, ok},
		{"get/team-a other team", "GET", "/kv/team-b/x", authTeamA, "", nil, forbidden},
		{"get/team-a other team missing key", "GET", "/kv/team-b/nothing", authTeamA, "", nil, forbidden},
		{"get/team-a missing key", "GET", "/kv/team-a/nothing", authTeamA, "", nil, notFound},
		{"get/none missing key", "GET", "/kv/team-b/nothing", "", "", nil, unauthorized},
		{"get/none invalid key", "GET", "/kv/a//b", "", "", nil, unauthorized},
		{"get/team-a invalid key outside", "GET", "/kv/team-b//x", authTeamA, "", nil, forbidden},
		{"get/team-a unclean key inside", "GET", "/kv/team-a/../team-b/x", authTeamA, "", nil, badKey},
		{"get/team-a escaped unclean key", "GET", "/kv/team-a%2F..%2Fteam-b%2Fx", authTeamA, "", nil, badKey},
		{"get/access_token not accepted on /kv", "GET", "/kv/team-a/x?access_token=" + authReader, "", "", nil, unauthorized},
		{"head/none", "HEAD", "/kv/team-a/x", "", "", nil, authResult{Status: 401, WWWAuth: "Bearer"}},
		{"head/reader", "HEAD", "/kv/team-a/x", authReader, "", nil, ok},
		{"head/team-a other team", "HEAD", "/kv/team-b/x", authTeamA, "", nil, authResult{Status: 403}},

		{"put/none", "PUT", "/kv/team-a/p", "", "v", nil, unauthorized},
		{"put/unknown", "PUT", "/kv/team-a/p", authUnknown, "v", nil, unauthorized},
		{"put/reader", "PUT", "/kv/team-a/p", authReader, "v", nil, forbidden},
		{"put/writer", "PUT", "/kv/team-a/p1", authWriter, "v", nil, created},
		{"put/team-a", "PUT", "/kv/team-a/p2", authTeamA, "v", nil, created},
		{"put/team-a other team", "PUT", "/kv/team-b/p", authTeamA, "v", nil, forbidden},
		{"put/team-a other team existing key", "PUT", "/kv/team-b/x", authTeamA, "v", nil, forbidden},
		{"put/team-a bad key outside", "PUT", "/kv/team-b/a*", authTeamA, "v", nil, forbidden},
		{"put/writer bad key", "PUT", "/kv/team-b/a*", authWriter, "v", nil, badKey},

		{"delete/none", "DELETE", "/kv/team-a/nothing", "", "", nil, unauthorized},
		{"delete/unknown", "DELETE", "/kv/team-a/nothing", authUnknown, "", nil, unauthorized},
		{"delete/reader", "DELETE", "/kv/team-a/nothing", authReader, "", nil, forbidden},
		{"delete/writer", "DELETE", "/kv/team-a/nothing", authWriter, "", nil, notFound},
		{"delete/team-a", "DELETE", "/kv/team-a/nothing", authTeamA, "", nil, notFound},
		{"delete/team-a other team", "DELETE", "/kv/team-b/x", authTeamA, "", nil, forbidden},

		{"list/none", "GET", "/kv", "", "", nil, unauthorized},
		{"list/unknown", "GET", "/kv?prefix=team-", authUnknown, "", nil, unauthorized},
		{"list/reader", "GET", "/kv", authReader, "", nil, ok},
		{"list/writer", "GET", "/kv", authWriter, "", nil, ok},
		{"list/team-a", "GET", "/kv?prefix=team-b/", authTeamA, "", nil, ok},
		{"list/team-a slash", "GET", "/kv/", authTeamA, "", nil, ok},
		{"list/none bad limit", "GET", "/kv?limit=0", "", "", nil, unauthorized},

		{"watch/none", "GET", "/watch/team-a/**", "", "", nil, unauthorized},
		{"watch/unknown", "GET", "/watch/team-a/**", authUnknown, "", nil, unauthorized},
		{"watch/reader", "GET", "/watch/**", authReader, "", nil, ok},
		{"watch/writer", "GET", "/watch/team-a/**", authWriter, "", nil, forbidden},
		{"watch/team-a", "GET", "/watch/team-a/**", authTeamA, "", nil, ok},
		{"watch/team-a narrower", "GET", "/watch?pattern=team-a/*&pattern=team-a/x/y", authTeamA, "", nil, ok},
		{"watch/team-a everything", "GET", "/watch/**", authTeamA, "", nil, forbidden},
		{"watch/team-a other team", "GET", "/watch/team-b/x", authTeamA, "", nil, forbidden},
		{"watch/team-a one pattern outside", "GET", "/watch?pattern=team-a/x&pattern=team-b/x", authTeamA, "", nil, forbidden},
		{"watch/team-a wider glob", "GET", "/watch/team-*/x", authTeamA, "", nil, forbidden},
		{"watch/team-a outside before a bad parameter", "GET", "/watch/team-b/**?since=x", authTeamA, "", nil, forbidden},
		{"watch/team-a invalid pattern", "GET", "/watch/team-a/a**", authTeamA, "", nil, badPattern},
		{"watch/none invalid pattern", "GET", "/watch/a**", "", "", nil, unauthorized},

		{"metrics/none", "GET", "/metrics", "", "", nil, unauthorized},
		{"metrics/unknown", "GET", "/metrics", authUnknown, "", nil, unauthorized},
		{"metrics/reader", "GET", "/metrics", authReader, "", nil, ok},
		{"metrics/writer", "GET", "/metrics", authWriter, "", nil, forbidden},
		{"metrics/team-a", "GET", "/metrics", authTeamA, "", nil, forbidden},

		{"page/none", "GET", "/", "", "", nil, ok},
		{"page/unknown", "GET", "/?pattern=**", authUnknown, "", nil, ok},
		{"healthz/none", "GET", "/healthz", "", "", nil, ok},
		{"preflight/none", "OPTIONS", "/kv/team-b/x", "", "", preflight, noContent},
		{"session/none", "POST", "/auth/session", "", `{"token":"` + authReader + `"}`, nil, noContent},
		{"session end/none", "DELETE", "/auth/session", "", "", nil, noContent},
		{"no route/none", "GET", "/nothing", "", "", nil, unauthorized},
		{"no route/reader", "GET", "/nothing", authReader, "", nil, noRoute},
		{"method/team-a", "PATCH", "/kv/team-a/x", authTeamA, "", nil, authResult{Status: 405, Code: "method_not_allowed"}},
		{"method/none", "PATCH", "/kv/team-a/x", "", "", nil, unauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := authDo(t, nil, tt.method, ts.URL+tt.path, tt.token, tt.body, tt.hdr)
			got := authResultOf(t, resp, body)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("%s %s (-want +got):\n%s\nbody: %s", tt.method, tt.path, diff, body)
			}
		})
	}

	// The refused writes changed nothing.
	for _, key := range []string{"team-a/p", "team-b/p"} {
		if resp, _ := authDo(t, nil, "GET", ts.URL+"/kv/"+key, authAdmin, "", nil); resp.StatusCode != 404 {
			t.Errorf("GET %s after refused writes: %d, want 404", key, resp.StatusCode)
		}
	}
	if _, body := authDo(t, nil, "GET", ts.URL+"/kv/team-b/x", authAdmin, "", nil); string(body) != "b" {
		t.Errorf("team-b/x = %q after refused writes, want %q", body, "b")
	}
}

// authStream is an NDJSON watch, live (its sync event read).
type authStream struct {
	sc     *bufio.Scanner
	body   io.Closer
	cancel context.CancelFunc
}

type authEvent struct {
	Event string `json:"event"`
	Key   string `json:"key"`
}

// authWatch opens path (with format=ndjson added) with the header or
// cookie of hdr and waits for its sync event.
func authWatch(t testing.TB, base, path string, hdr map[string]string) *authStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	req, err := http.NewRequestWithContext(ctx, "GET", base+path+sep+"format=ndjson", nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	s := &authStream{sc: bufio.NewScanner(resp.Body), body: resp.Body, cancel: cancel}
	t.Cleanup(s.close)
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	if ev, err := s.next(); err != nil || ev.Event != "sync" {
		t.Fatalf("GET %s: first event %+v, %v; want sync", path, ev, err)
	}
	return s
}

func (s *authStream) close() {
	s.cancel()
	s.body.Close()
}

// next returns the next event but heartbeats; io.EOF when the server
// ended the stream.
func (s *authStream) next() (authEvent, error) {
	for s.sc.Scan() {
		var ev authEvent
		if err := json.Unmarshal(s.sc.Bytes(), &ev); err != nil {
			return ev, fmt.Errorf("line %q: %v", s.sc.Bytes(), err)
		}
		if ev.Event != "heartbeat" {
			return ev, nil
		}
	}
	if err := s.sc.Err(); err != nil {
		return authEvent{}, err
	}
	return authEvent{}, io.EOF
}

// keysUntil returns the keys of the events up to and including the one
// of fence.
func (s *authStream) keysUntil(t testing.TB, fence string) []string {
	t.Helper()
	var keys []string
	for {
		ev, err := s.next()
		if err != nil {
			t.Fatalf("waiting for %s: %v (got %q)", fence, err, keys)
		}
		keys = append(keys, ev.Key)
		if ev.Key == fence {
			return keys
		}
	}
}

func bearer(token string) map[string]string {
	return map[string]string{"Authorization": "Bearer " + token}
}

// TestAuthWatchScope writes keys inside and outside the scope of a
// team-a/** token while it watches, and checks the stream carries only
// its own.
func TestAuthWatchScope(t *testing.T) {
	ts := servertest.Start(t, "-auth", servertest.AuthFile(t, "", authTokens))
	tests := []struct {
		name string
		path string
		hdr  map[string]string
		want []string
	}{
		{"whole scope", "/watch/team-a/**", bearer(authTeamA), []string{"team-a/in", "team-a/deep/in", "team-a/fence"}},
		{"two patterns", "/watch?pattern=team-a/in&pattern=team-a/fence", bearer(authTeamA), []string{"team-a/in", "team-a/fence"}},
		{"query token", "/watch/team-a/*?access_token=" + authTeamA, nil, []string{"team-a/in", "team-a/fence"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := authWatch(t, ts.URL, tt.path, tt.hdr)
			for _, key := range []string{"team-b/out", "team-a-x/out", "team-a", "team-a/in", "other/team-a/out", "team-a/deep/in", "team-b/out", "team-a/fence"} {
				authPut(t, ts.URL, key, "v")
			}
			if diff := cmp.Diff(tt.want, s.keysUntil(t, "team-a/fence")); diff != "" {
				t.Errorf("keys (-want +got):\n%s", diff)
			}
		})
	}
}

// TestAuthSession signs in with POST /auth/session, uses the cookie, and
// signs out with DELETE.
func TestAuthSession(t *testing.T) {
	ts := servertest.Start(t, "-auth", servertest.AuthFile(t, "", authTokens))
	authPut(t, ts.URL, "team-a/x", "a")
	authPut(t, ts.URL, "team-b/x", "b")
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Jar: jar}
	status := func(method, path, token string) int {
		t.Helper()
		resp, _ := authDo(t, c, method, ts.URL+path, token, "", nil)
		return resp.StatusCode
	}

	resp, body := authDo(t, c, "POST", ts.URL+"/auth/session", "", `{"token":"`+authUnknown+`"}`, nil)
	if diff := cmp.Diff(authResult{Status: 401, Code: "unauthorized", WWWAuth: "Bearer"}, authResultOf(t, resp, body)); diff != "" {
		t.Errorf("POST /auth/session with an unknown token (-want +got):\n%s", diff)
	}
	if got := resp.Header.Values("Set-Cookie"); len(got) != 0 {
		t.Errorf("unknown token: Set-Cookie %q, want none", got)
	}
	resp, body = authDo(t, c, "POST", ts.URL+"/auth/session", "", `{"tok":`, nil)
	if diff := cmp.Diff(authResult{Status: 400, Code: "bad_parameter"}, authResultOf(t, resp, body)); diff != "" {
		t.Errorf("POST /auth/session with a bad body (-want +got):\n%s", diff)
	}

	resp, _ = authDo(t, c, "POST", ts.URL+"/auth/session", "", `{"token":"`+authTeamA+`"}`, nil)
	if resp.StatusCode != 204 {
		t.Fatalf("POST /auth/session: %d, want 204", resp.StatusCode)
	}
	want := "kvsse_token=" + authTeamA + "; Path=/; HttpOnly; SameSite=Strict"
	if diff := cmp.Diff([]string{want}, resp.Header.Values("Set-Cookie")); diff != "" {
		t.Errorf("Set-Cookie (-want +got):\n%s", diff)
	}
	if got := status("GET", "/kv/team-a/x", ""); got != 200 {
		t.Errorf("GET team-a/x with the cookie: %d, want 200", got)
	}
	if got := status("GET", "/kv/team-b/x", ""); got != 403 {
		t.Errorf("GET team-b/x with the team-a cookie: %d, want 403", got)
	}
	authWatch(t, ts.URL, "/watch/team-a/**", map[string]string{"Cookie": "kvsse_token=" + authTeamA}).close()
	// The Bearer header wins over the cookie, also when it is wrong.
	if got := status("GET", "/kv/team-b/x", authReader); got != 200 {
		t.Errorf("GET team-b/x with the team-a cookie and a reader Bearer: %d, want 200", got)
	}
	if got := status("GET", "/kv/team-a/x", authUnknown); got != 401 {
		t.Errorf("GET team-a/x with the team-a cookie and an unknown Bearer: %d, want 401", got)
	}

	resp, _ = authDo(t, c, "DELETE", ts.URL+"/auth/session", "", "", nil)
	if resp.StatusCode != 204 {
		t.Fatalf("DELETE /auth/session: %d, want 204", resp.StatusCode)
	}
	if got := resp.Header.Get("Set-Cookie"); !strings.HasPrefix(got, "kvsse_token=; Path=/; Max-Age=0") {
		t.Errorf("DELETE /auth/session: Set-Cookie %q, want kvsse_token cleared", got)
	}
	if got := status("GET", "/kv/team-a/x", ""); got != 401 {
		t.Errorf("GET team-a/x after DELETE /auth/session: %d, want 401", got)
	}
}

// TestAuthQueryToken: ?access_token= proves a token on /watch only.
func TestAuthQueryToken(t *testing.T) {
	ts := servertest.Start(t, "-auth", servertest.AuthFile(t, "", authTokens))
	authPut(t, ts.URL, "team-a/x", "a")
	authWatch(t, ts.URL, "/watch/team-a/**?access_token="+authTeamA, nil).close()
	authWatch(t, ts.URL, "/watch?pattern=team-a/x&access_token="+url.QueryEscape(authReader), nil).close()

	tests := []struct {
		name, path string
		want       authResult
	}{
		{"watch outside", "/watch/team-b/**?access_token=" + authTeamA, authResult{Status: 403, Code: "forbidden"}},
		{"watch unknown", "/watch/team-a/**?access_token=" + authUnknown, authResult{Status: 401, Code: "unauthorized", WWWAuth: "Bearer"}},
		{"get", "/kv/team-a/x?access_token=" + authTeamA, authResult{Status: 401, Code: "unauthorized", WWWAuth: "Bearer"}},
		{"list", "/kv?access_token=" + authTeamA, authResult{Status: 401, Code: "unauthorized", WWWAuth: "Bearer"}},
		{"metrics", "/metrics?access_token=" + authAdmin, authResult{Status: 401, Code: "unauthorized", WWWAuth: "Bearer"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := authDo(t, nil, "GET", ts.URL+tt.path, "", "", nil)
			if diff := cmp.Diff(tt.want, authResultOf(t, resp, body)); diff != "" {
				t.Errorf("GET %s (-want +got):\n%s", tt.path, diff)
			}
		})
	}
	resp, _ := authDo(t, nil, "PUT", ts.URL+"/kv/team-a/x?access_token="+authAdmin, "", "v", nil)
	if resp.StatusCode != 401 {
		t.Errorf("PUT with access_token: %d, want 401", resp.StatusCode)
	}
}

// TestAuthListing pages through listings with tokens of several scopes
// and checks that each page is full of readable keys, in order, with next
// set exactly when more readable keys follow.
func TestAuthListing(t *testing.T) {
	file := `{"tokens": [
		{"name": "admin", "token": "` + authAdmin + `", "read": ["**"], "write": ["**"]},
		{"name": "team-a", "token": "a", "read": ["team-a/**"]},
		{"name": "mixed", "token": "m", "read": ["team-b/*", "team-a/3", "z*/**", "team-a/1/*"]},
		{"name": "stars", "token": "s", "read": ["*/2", "team-*"]},
		{"name": "none", "token": "n", "write": ["**"]}
	]}`
	ts := servertest.Start(t, "-auth", servertest.AuthFile(t, "", file))
	var keys []string
	for _, team := range []string{"team-a", "team-a-x", "team-b", "zeta", "a"} {
		for i := range 5 {
			keys = append(keys, fmt.Sprintf("%s/%d", team, i))
		}
	}
	keys = append(keys, "team-a", "team-a/1/x", "team-b/1/x", "zz")
	for _, k := range keys {
		authPut(t, ts.URL, k, "v")
	}
	reads := map[string][]string{
		"a": {"team-a/**"},
		"m": {"team-b/*", "team-a/3", "z*/**", "team-a/1/*"},
		"s": {"*/2", "team-*"},
		"n": nil,
	}
	for token, patterns := range reads {
		for _, prefix := range []string{"", "team-", "team-a", "team-a/", "team-b/1", "z", "q"} {
			for _, limit := range []int{1, 2, 3, 100} {
				var want []string
				for _, k := range allKeys(t, ts.URL, prefix) {
					for _, s := range patterns {
						if p, _ := kv.ParsePattern(s); p.Match(k) {
							want = append(want, k)
							break
						}
					}
				}
				name := fmt.Sprintf("token=%s/prefix=%q/limit=%d", token, prefix, limit)
				if diff := cmp.Diff(want, listPages(t, ts.URL, token, prefix, limit)); diff != "" {
					t.Errorf("%s: keys (-want +got):\n%s", name, diff)
				}
			}
		}
	}
}

// allKeys lists every key starting with prefix, as the admin.
func allKeys(t testing.TB, base, prefix string) []string {
	return listPages(t, base, authAdmin, prefix, 1000)
}

// listPages walks every page of a listing and returns its keys. It fails
// the test on a page that is not full but has next, or that is full of
// keys that the last page's absent next denies.
func listPages(t testing.TB, base, token, prefix string, limit int) []string {
	t.Helper()
	var keys []string
	after := ""
	for {
		u := fmt.Sprintf("%s/kv?prefix=%s&limit=%d&after=%s", base, url.QueryEscape(prefix), limit, url.QueryEscape(after))
		resp, body := authDo(t, nil, "GET", u, token, "", nil)
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %s", u, resp.StatusCode, body)
		}
		var page struct {
			Revision int64
			Items    []struct{ Key string }
			Next     *string
		}
		if err := json.Unmarshal(body, &page); err != nil {
			t.Fatal(err)
		}
		if page.Revision <= 0 {
			t.Errorf("GET %s: revision %d", u, page.Revision)
		}
		for _, it := range page.Items {
			keys = append(keys, it.Key)
		}
		if page.Next == nil {
			return keys
		}
		if len(page.Items) != limit || *page.Next != page.Items[limit-1].Key {
			t.Fatalf("GET %s: %d items and next %q, want %d items and next the last key", u, len(page.Items), *page.Next, limit)
		}
		if len(keys) > 10_000 {
			t.Fatalf("GET %s: listing does not end", u)
		}
		after = *page.Next
	}
}

// TestAuthSIGHUP runs the binary, changes the auth file under two open
// streams and sends SIGHUP: the stream whose token lost its right ends,
// the other stays open. A bad file then keeps the tokens in force. The
// token given as ?access_token= is in no log line.
func TestAuthSIGHUP(t *testing.T) {
	dir := t.TempDir()
	tokens := func(aReads string) string {
		return `{"tokens": [
			{"name": "admin", "token": "` + authAdmin + `", "read": ["**"], "write": ["**"]},
			{"name": "a", "token": "query-secret-a", "read": [` + aReads + `]},
			{"name": "b", "token": "secret-b", "read": ["team-a/**"]}
		]}`
	}
	path := servertest.AuthFile(t, dir, tokens(`"team-a/**", "team-b/**"`))
	p := servertest.StartProc(t, "-memory", "-auth", path, "-log-level", "debug")
	stderr := p.Cmd.Stderr.(*servertest.LockedBuffer).String

	lost := authWatch(t, p.URL, "/watch/team-b/**?access_token=query-secret-a", nil)
	kept := authWatch(t, p.URL, "/watch/team-a/**", bearer("secret-b"))
	keptA := authWatch(t, p.URL, "/watch/team-a/x", bearer("query-secret-a"))
	// A long poll that loses its right during its wait answers with no
	// change and the revision it was given, then gets 403.
	_, b := authDo(t, nil, "GET", p.URL+"/watch/**?poll=1", authAdmin, "", nil)
	var at struct{ Revision int64 }
	if err := json.Unmarshal(b, &at); err != nil {
		t.Fatalf("poll=1: %v in %s", err, b)
	}
	lostPollURL := fmt.Sprintf("%s/watch/team-b/**?wait=1m&since=%d", p.URL, at.Revision)
	lostPoll := make(chan []byte, 1)
	go func() {
		resp, b, err := servertest.Do(context.Background(), http.DefaultClient, "GET", lostPollURL+"&access_token=query-secret-a", "")
		if err != nil || resp.StatusCode != http.StatusOK {
			b = fmt.Appendf(nil, "%v %v %s", err, resp, b)
		}
		lostPoll <- b
	}()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, b := authDo(t, nil, "GET", p.URL+"/metrics", authAdmin, "", nil); strings.Contains(string(b), "\nkvsse_subscribers 4\n") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the long poll does not wait")
		}
	}

	servertest.AuthFile(t, dir, tokens(`"team-a/**"`))
	if err := syscall.Kill(p.Cmd.Process.Pid, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if ev, err := lost.next(); err != io.EOF {
		t.Fatalf("the stream that lost its right got %+v, %v; want its end", ev, err)
	}
	if got, want := string(<-lostPoll), fmt.Sprintf(`{"revision":%d,"events":[]}`, at.Revision); got != want {
		t.Errorf("the long poll that lost its right answered %s, want %s", got, want)
	}
	if resp, b := authDo(t, nil, "GET", lostPollURL, "query-secret-a", "", nil); resp.StatusCode != http.StatusForbidden {
		t.Errorf("the next long poll: %d %s, want 403", resp.StatusCode, b)
	}
	authPut(t, p.URL, "team-a/x", "after")
	for name, s := range map[string]*authStream{"b": kept, "a": keptA} {
		if ev, err := s.next(); err != nil || ev.Key != "team-a/x" {
			t.Errorf("stream of %s after the reload: %+v, %v; want the put of team-a/x", name, ev, err)
		}
	}
	if resp, _ := authDo(t, nil, "GET", p.URL+"/kv/team-b/x", "query-secret-a", "", nil); resp.StatusCode != 403 {
		t.Errorf("GET team-b/x with the narrowed token: %d, want 403", resp.StatusCode)
	}

	// A bad file: the error is logged, the tokens stay.
	servertest.AuthFile(t, dir, `{"tokens": [{"name": "admin"}]}`)
	if err := syscall.Kill(p.Cmd.Process.Pid, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(stderr(), "auth reload failed"); {
		if time.Now().After(deadline) {
			t.Fatalf("no log of the failed reload; stderr:\n%s", stderr())
		}
		time.Sleep(10 * time.Millisecond)
	}
	authPut(t, p.URL, "team-a/x", "still")
	if ev, err := kept.next(); err != nil || ev.Key != "team-a/x" {
		t.Errorf("stream after a bad reload: %+v, %v; want the put of team-a/x", ev, err)
	}

	kept.close()
	keptA.close()
	if err := p.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.Cmd.Wait(); err != nil {
		t.Errorf("exit: %v", err)
	}
	logs := stderr()
	if strings.Contains(logs, "query-secret-a") || strings.Contains(logs, "secret-b") || strings.Contains(logs, authAdmin) {
		t.Errorf("a token is in the log:\n%s", logs)
	}
	if !strings.Contains(logs, "auth file reloaded") {
		t.Errorf("the reload is not in the log:\n%s", logs)
	}
}

// TestAuthSessionTLS: over TLS the session cookie is Secure too.
func TestAuthSessionTLS(t *testing.T) {
	cert, key, roots := servertest.TLSCert(t)
	ts := servertest.Start(t, "-tls-cert", cert, "-tls-key", key, "-auth", servertest.AuthFile(t, "", authTokens))
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
	defer tr.CloseIdleConnections()
	resp, body := authDo(t, &http.Client{Transport: tr}, "POST", ts.URL+"/auth/session", "", `{"token":"`+authReader+`"}`, nil)
	if resp.StatusCode != 204 {
		t.Fatalf("POST /auth/session: %d %s", resp.StatusCode, body)
	}
	c, err := http.ParseSetCookie(resp.Header.Get("Set-Cookie"))
	if err != nil {
		t.Fatal(err)
	}
	want := &http.Cookie{Name: "kvsse_token", Value: authReader, Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode}
	c.Raw = ""
	if diff := cmp.Diff(want, c); diff != "" {
		t.Errorf("Set-Cookie over TLS (-want +got):\n%s", diff)
	}
}

// TestAuthRefusedLogsNoPath: a refused request is logged at debug with
// its route, never its path, which may hold a key or a token.
func TestAuthRefusedLogsNoPath(t *testing.T) {
	ts := servertest.Start(t, "-auth", servertest.AuthFile(t, "", authTokens), "-log-level", "debug")
	for _, r := range []struct{ method, path, token string }{
		{"GET", "/kv/team-b/secret-key-1", authTeamA},
		{"PUT", "/kv/team-b/secret-key-2", ""},
		{"GET", "/watch/team-b/secret-pattern/**", authTeamA},
		{"GET", "/kv/secret-key-3?access_token=" + authUnknown, ""},
	} {
		resp, _ := authDo(t, http.DefaultClient, r.method, ts.URL+r.path, r.token, "v", nil)
		if resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden {
			t.Fatalf("%s %s: %s, want it refused", r.method, r.path, resp.Status)
		}
	}
	log := ts.Log.String()
	if n := strings.Count(log, `msg="request refused"`); n != 3 {
		t.Errorf("%d request refused lines, want 3 (the watch is refused by its handler):\n%s", n, log)
	}
	if !strings.Contains(log, `route="GET /kv/{key...}"`) {
		t.Errorf("the refused lines do not name the route:\n%s", log)
	}
	for _, secret := range []string{"secret-key", "secret-pattern", authUnknown, authTeamA} {
		if strings.Contains(log, secret) {
			t.Errorf("the log holds %q:\n%s", secret, log)
		}
	}
}
