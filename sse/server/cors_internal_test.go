package server

import (
	"flag"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// corsApp is the listed origin of cors_test.go.
const corsApp = "https://app.example.com"

// TestCORSFlag checks the -cors-origins flag. Its environment twin
// KVSSE_CORS_ORIGINS is the command line's (package cli), which sets the
// flag with FlagSet.Set, as the cases of the twin here do.
func TestCORSFlag(t *testing.T) {
	parseFlags := func(args []string) (*Config, *flag.FlagSet, error) {
		cfg := new(Config)
		fs := flag.NewFlagSet("kvsse", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		cfg.RegisterFlags(fs)
		return cfg, fs, fs.Parse(args)
	}
	for _, tc := range []struct {
		value string
		ok    bool
	}{
		{"", true},
		{"https://app.example.com", true},
		{" https://a.example.com , http://localhost:5173 ", true},
		{"https://app.example.com/", false},
		{"https://app.example.com/path", false},
		{"app.example.com", false},
		{"*", false},
		{"null", false},
		{"ftp://app.example.com", false},
		{"https://user@app.example.com", false},
	} {
		_, _, err := parseFlags([]string{"-cors-origins", tc.value})
		if (err == nil) != tc.ok {
			t.Errorf("-cors-origins %q: error %v, want ok %v", tc.value, err, tc.ok)
		}
	}

	cfg, fs, _ := parseFlags(nil)
	if err := fs.Set("cors-origins", corsApp); err != nil || cfg.CORSOrigins != corsApp {
		t.Errorf("KVSSE_CORS_ORIGINS: %v, %+v", err, cfg)
	}
	if err := fs.Set("cors-origins", "*"); err == nil {
		t.Errorf("KVSSE_CORS_ORIGINS=* was accepted")
	}

	got, err := parseOrigins(" HTTPS://App.Example.com:8443, ,http://localhost:5173")
	if diff := cmp.Diff([]string{"https://app.example.com:8443", "http://localhost:5173"}, got); err != nil || diff != "" {
		t.Errorf("parseOrigins: %v (-want +got):\n%s", err, diff)
	}
}

// TestCORSTLSDowngrade checks that on a TLS connection an http:// page of
// the same host cannot write, even from a browser without Sec-Fetch-Site.
func TestCORSTLSDowngrade(t *testing.T) {
	h := crossOrigin("", slog.New(slog.DiscardHandler), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	for origin, want := range map[string]int{
		"https://kv.example.com": http.StatusNoContent,
		"http://kv.example.com":  http.StatusForbidden,
	} {
		req := httptest.NewRequest(http.MethodPut, "https://kv.example.com/kv/a", strings.NewReader("x"))
		req.Header.Set("Origin", origin)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != want {
			t.Errorf("PUT over TLS from %s: %d %s, want %d", origin, w.Code, w.Body, want)
		}
	}
}
