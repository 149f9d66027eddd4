package server_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"kvsse/sse/server/servertest"
)

const (
	corsApp   = "https://app.example.com"
	corsLocal = "http://localhost:5173"
	corsEvil  = "https://evil.example.net"
)

// corsDo sends one request with the given headers and returns the
// response with its body read.
func corsDo(t *testing.T, method, url, body string, headers map[string]string) (*http.Response, string) {
	t.Helper()
	var hdr []string
	for k, v := range headers {
		hdr = append(hdr, k, v)
	}
	resp, b := servertest.Send(t, method, url, strings.NewReader(body), hdr...)
	return resp, string(b)
}

// corsHeaders are the CORS headers of a response, for comparison.
func corsHeaders(h http.Header) map[string]string {
	m := map[string]string{}
	for _, name := range []string{
		"Access-Control-Allow-Origin", "Access-Control-Allow-Credentials", "Access-Control-Expose-Headers",
		"Access-Control-Allow-Methods", "Access-Control-Allow-Headers", "Access-Control-Max-Age",
	} {
		if v := h.Get(name); v != "" {
			m[name] = v
		}
	}
	return m
}

func corsVaryOrigin(h http.Header) bool {
	for _, v := range h.Values("Vary") {
		for _, f := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), "Origin") {
				return true
			}
		}
	}
	return false
}

// corsRevision is the store's revision, from /healthz.
func corsRevision(t *testing.T, base string) int64 {
	t.Helper()
	_, body := corsDo(t, http.MethodGet, base+"/healthz", "", nil)
	var h struct {
		Revision int64 `json:"revision"`
	}
	if err := json.Unmarshal([]byte(body), &h); err != nil {
		t.Fatalf("healthz %q: %v", body, err)
	}
	return h.Revision
}

func TestCORSListedOrigin(t *testing.T) {
	srv := servertest.Start(t, "-cors-origins", corsApp+", "+corsLocal)
	listed := map[string]string{
		"Access-Control-Allow-Origin":      corsApp,
		"Access-Control-Allow-Credentials": "true",
		"Access-Control-Expose-Headers":    "ETag, Kvsse-Revision",
	}
	preflight := map[string]string{
		"Access-Control-Allow-Origin":      corsApp,
		"Access-Control-Allow-Credentials": "true",
		"Access-Control-Expose-Headers":    "ETag, Kvsse-Revision",
		"Access-Control-Allow-Methods":     "GET, HEAD, PUT, DELETE, POST",
		"Access-Control-Allow-Headers":     "If-Match, If-None-Match, Last-Event-ID, Authorization, Content-Type",
		"Access-Control-Max-Age":           "600",
	}
	for _, tc := range []struct {
		name    string
		method  string
		path    string
		headers map[string]string
		status  int
		want    map[string]string
	}{
		{"put cross-site", http.MethodPut, "/kv/cors/a", map[string]string{"Origin": corsApp, "Sec-Fetch-Site": "cross-site"}, http.StatusCreated, listed},
		{"get", http.MethodGet, "/kv/cors/a", map[string]string{"Origin": corsApp, "Sec-Fetch-Site": "cross-site"}, http.StatusOK, listed},
		{"compare-and-set", http.MethodPut, "/kv/cors/a", map[string]string{"Origin": corsApp, "If-Match": `"1"`}, http.StatusOK, listed},
		{"error", http.MethodGet, "/kv/cors/missing", map[string]string{"Origin": corsApp}, http.StatusNotFound, listed},
		{"preflight", http.MethodOptions, "/kv/cors/a", map[string]string{
			"Origin": corsApp, "Access-Control-Request-Method": "PUT", "Access-Control-Request-Headers": "if-match, content-type"},
			http.StatusNoContent, preflight},
		{"second origin", http.MethodGet, "/kv/cors/a", map[string]string{"Origin": corsLocal}, http.StatusOK, map[string]string{
			"Access-Control-Allow-Origin":      corsLocal,
			"Access-Control-Allow-Credentials": "true",
			"Access-Control-Expose-Headers":    "ETag, Kvsse-Revision",
		}},
		{"delete same-site", http.MethodDelete, "/kv/cors/a", map[string]string{"Origin": corsLocal, "Sec-Fetch-Site": "same-site"}, http.StatusNoContent, map[string]string{
			"Access-Control-Allow-Origin":      corsLocal,
			"Access-Control-Allow-Credentials": "true",
			"Access-Control-Expose-Headers":    "ETag, Kvsse-Revision",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := corsDo(t, tc.method, srv.URL+tc.path, "v", tc.headers)
			if resp.StatusCode != tc.status {
				t.Fatalf("%s %s: %s %s, want %d", tc.method, tc.path, resp.Status, body, tc.status)
			}
			if diff := cmp.Diff(tc.want, corsHeaders(resp.Header)); diff != "" {
				t.Errorf("CORS headers (-want +got):\n%s", diff)
			}
			if !corsVaryOrigin(resp.Header) {
				t.Errorf("Vary %q lacks Origin", resp.Header.Values("Vary"))
			}
		})
	}

	t.Run("watch", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/watch?pattern=cors/**", nil)
		req.Header.Set("Origin", corsApp)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Access-Control-Allow-Origin") != corsApp || resp.Header.Get("Access-Control-Allow-Credentials") != "true" {
			t.Errorf("watch from a listed origin: %s %v", resp.Status, resp.Header)
		}
	})
}

func TestCORSUnlistedOrigin(t *testing.T) {
	srv := servertest.Start(t, "-cors-origins", corsApp)
	corsDo(t, http.MethodPut, srv.URL+"/kv/cors/kept", "before", nil)
	rev := corsRevision(t, srv.URL)
	own := srv.URL

	refused := []struct {
		name    string
		method  string
		path    string
		headers map[string]string
	}{
		{"put cross-site", http.MethodPut, "/kv/cors/new", map[string]string{"Origin": corsEvil, "Sec-Fetch-Site": "cross-site"}},
		{"put same-site unlisted", http.MethodPut, "/kv/cors/new", map[string]string{"Origin": "https://other.example.com", "Sec-Fetch-Site": "same-site"}},
		{"put old browser", http.MethodPut, "/kv/cors/new", map[string]string{"Origin": corsEvil}},
		{"put null origin", http.MethodPut, "/kv/cors/new", map[string]string{"Origin": "null", "Sec-Fetch-Site": "cross-site"}},
		{"put cross-site without origin", http.MethodPut, "/kv/cors/new", map[string]string{"Sec-Fetch-Site": "cross-site"}},
		{"delete cross-site", http.MethodDelete, "/kv/cors/kept", map[string]string{"Origin": corsEvil, "Sec-Fetch-Site": "cross-site"}},
		{"post cross-site", http.MethodPost, "/kv/cors/new", map[string]string{"Origin": corsEvil, "Sec-Fetch-Site": "cross-site"}},
		{"own host other port", http.MethodPut, "/kv/cors/new", map[string]string{"Origin": "http://127.0.0.1:1"}},
		{"preflight", http.MethodOptions, "/kv/cors/new", map[string]string{"Origin": corsEvil, "Access-Control-Request-Method": "PUT"}},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := corsDo(t, tc.method, srv.URL+tc.path, "evil", tc.headers)
			var e struct{ Error, Code string }
			if err := json.Unmarshal([]byte(body), &e); err != nil || resp.StatusCode != http.StatusForbidden || e.Code != "cross_origin" || e.Error == "" {
				t.Fatalf("%s %s: %s %s, want 403 cross_origin", tc.method, tc.path, resp.Status, body)
			}
			if got := corsHeaders(resp.Header); len(got) > 0 {
				t.Errorf("CORS headers for an origin not listed: %v", got)
			}
			if !corsVaryOrigin(resp.Header) {
				t.Errorf("Vary %q lacks Origin", resp.Header.Values("Vary"))
			}
		})
	}
	if got := corsRevision(t, srv.URL); got != rev {
		t.Errorf("revision %d after the refused requests, want %d: something was written", got, rev)
	}
	if resp, v := corsDo(t, http.MethodGet, srv.URL+"/kv/cors/kept", "", nil); resp.StatusCode != http.StatusOK || v != "before" {
		t.Errorf("cors/kept: %s %q", resp.Status, v)
	}
	if resp, _ := corsDo(t, http.MethodGet, srv.URL+"/kv/cors/new", "", nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("cors/new: %s, want 404", resp.Status)
	}

	passed := []struct {
		name    string
		method  string
		headers map[string]string
		status  int
	}{
		{"get cross-site", http.MethodGet, map[string]string{"Origin": corsEvil, "Sec-Fetch-Site": "cross-site"}, http.StatusOK},
		{"put without origin (curl)", http.MethodPut, nil, http.StatusOK},
		{"put same-origin", http.MethodPut, map[string]string{"Origin": own, "Sec-Fetch-Site": "same-origin"}, http.StatusOK},
		{"put own origin, old browser", http.MethodPut, map[string]string{"Origin": own}, http.StatusOK},
		{"put typed by the user", http.MethodPut, map[string]string{"Sec-Fetch-Site": "none"}, http.StatusOK},
		{"options without preflight", http.MethodOptions, map[string]string{"Origin": corsEvil}, http.StatusMethodNotAllowed},
	}
	for _, tc := range passed {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := corsDo(t, tc.method, srv.URL+"/kv/cors/kept", "mine", tc.headers)
			if resp.StatusCode != tc.status {
				t.Fatalf("%s: %s %s, want %d", tc.method, resp.Status, body, tc.status)
			}
			if got := corsHeaders(resp.Header); len(got) > 0 {
				t.Errorf("CORS headers for an origin not listed: %v", got)
			}
		})
	}
}

// TestCORSSameOriginOnly checks the default: no origin is listed, no
// CORS header is ever sent, and other sites cannot write.
func TestCORSSameOriginOnly(t *testing.T) {
	srv := servertest.Start(t)
	resp, _ := corsDo(t, http.MethodGet, srv.URL+"/healthz", "", map[string]string{"Origin": corsApp})
	if got := corsHeaders(resp.Header); len(got) > 0 || corsVaryOrigin(resp.Header) {
		t.Errorf("headers %v, Vary %q with no -cors-origins", got, resp.Header.Values("Vary"))
	}
	resp, body := corsDo(t, http.MethodOptions, srv.URL+"/kv/a", "", map[string]string{"Origin": corsApp, "Access-Control-Request-Method": "PUT"})
	if resp.StatusCode != http.StatusForbidden || len(corsHeaders(resp.Header)) > 0 {
		t.Errorf("preflight: %s %s %v", resp.Status, body, corsHeaders(resp.Header))
	}
	resp, body = corsDo(t, http.MethodPut, srv.URL+"/kv/a", "x", map[string]string{"Origin": corsApp, "Sec-Fetch-Site": "cross-site"})
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross-site PUT: %s %s", resp.Status, body)
	}
	resp, body = corsDo(t, http.MethodPut, srv.URL+"/kv/a", "x", map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": srv.URL})
	if resp.StatusCode != http.StatusCreated {
		t.Errorf("same-origin PUT: %s %s", resp.Status, body)
	}
}

// TestPageHeaders checks how GET / is served: the page, its security
// headers, and a CSP that allows exactly its inline script and style.
func TestPageHeaders(t *testing.T) {
	indexHTML, err := os.ReadFile("web/index.html") // the page the server embeds
	if err != nil {
		t.Fatal(err)
	}
	srv := servertest.Start(t)
	for _, path := range []string{"/", "/?pattern=config/**"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, indexHTML) {
			t.Fatalf("GET %s: %s, %d bytes", path, resp.Status, len(body))
		}
		h := resp.Header
		for name, want := range map[string]string{
			"Content-Type":           "text/html; charset=utf-8",
			"X-Content-Type-Options": "nosniff",
			"Referrer-Policy":        "no-referrer",
		} {
			if got := h.Get(name); got != want {
				t.Errorf("%s: %q, want %q", name, got, want)
			}
		}
		csp := h.Get("Content-Security-Policy")
		for _, tag := range []string{"script", "style"} {
			m := regexp.MustCompile(`(?s)<`+tag+`>(.*?)</`+tag+`>`).FindAllSubmatch(body, -1)
			if len(m) != 1 {
				t.Fatalf("%d inline <%s> elements, want 1", len(m), tag)
			}
			sum := sha256.Sum256(m[0][1])
			want := tag + "-src 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "';"
			if !strings.Contains(csp, want) {
				t.Errorf("CSP %q lacks %q", csp, want)
			}
		}
		for _, want := range []string{"default-src 'none'", "connect-src 'self'", "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'", "require-trusted-types-for 'script'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("CSP %q lacks %q", csp, want)
			}
		}
		if etag := h.Get("ETag"); etag == "" {
			t.Errorf("no ETag")
		} else {
			req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
			req.Header.Set("If-None-Match", etag)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotModified {
				t.Errorf("GET with If-None-Match: %s, want 304", resp.Status)
			}
		}
	}

	// The page is one file that loads nothing from elsewhere and never
	// parses a string as HTML.
	for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "src=\"http", "href=\"http", "url(http"} {
		if bytes.Contains(indexHTML, []byte(bad)) {
			t.Errorf("index.html contains %q", bad)
		}
	}

	resp, err := http.Head(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Security-Policy") == "" {
		t.Errorf("HEAD /: %s", resp.Status)
	}
	resp, err = http.Get(srv.URL + "/index.html")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /index.html: %s, want 404", resp.Status)
	}
}
