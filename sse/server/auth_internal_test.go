package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func authSHA(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// authWriteFile writes content as the auth file auth.json in dir and
// returns its path.
func authWriteFile(t testing.TB, dir, content string) string {
	t.Helper()
	path := filepath.Join(dir, "auth.json")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestAuthReload reloads the file under open streams (in process, without
// a signal) and checks which streams end.
func TestAuthReload(t *testing.T) {
	tokens := func(entries ...string) string { return `{"tokens": [` + strings.Join(entries, ",") + `]}` }
	before := tokens(
		`{"name": "a", "token": "ta", "read": ["x/**", "y/**"]}`,
		`{"name": "b", "token": "tb", "read": ["x/**"]}`,
		`{"name": "c", "token": "tc", "read": ["x/*"]}`,
		`{"name": "d", "token": "td", "read": ["x/**"]}`,
	)
	after := tokens(
		`{"name": "a", "token": "ta", "read": ["x/**"]}`,                      // lost y/**
		`{"name": "b", "sha256": "`+authSHA("tb")+`", "read": ["x/1", "**"]}`, // same token, wider
		`{"name": "c", "token": "tc2", "read": ["x/*"]}`,                      // a new secret
		// d removed
	)
	dir := t.TempDir()
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	az, err := loadAuth(&Config{Auth: authWriteFile(t, dir, before)}, logger)
	if err != nil {
		t.Fatal(err)
	}
	open := func(token string, patterns ...string) <-chan struct{} {
		t.Helper()
		g := az.set.Load().lookup(token)
		ps, err := parsePatterns("patterns", patterns)
		if err != nil {
			t.Fatal(err)
		}
		r, _ := http.NewRequest("GET", "/watch", nil)
		revoked, untrack, err := az.track(r.WithContext(context.WithValue(r.Context(), grantKey{}, g)), ps)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(untrack)
		return revoked.Done()
	}
	streams := map[string]<-chan struct{}{
		"a on x/1":          open("ta", "x/1"),
		"a on y/**":         open("ta", "y/**"),
		"a on x/** and y/1": open("ta", "x/**", "y/1"),
		"b on x/**":         open("tb", "x/**"),
		"c on x/1":          open("tc", "x/1"),
		"d on x/1":          open("td", "x/1"),
	}
	ended := func() map[string]bool {
		m := map[string]bool{}
		for name, c := range streams {
			select {
			case <-c:
				m[name] = true
			default:
				m[name] = false
			}
		}
		return m
	}

	authWriteFile(t, dir, `{"tokens": [{"name": "a"}]}`)
	if err := az.reload(); err == nil {
		t.Fatal("reload of a bad file succeeded")
	}
	if diff := cmp.Diff(map[string]bool{"a on x/1": false, "a on y/**": false, "a on x/** and y/1": false,
		"b on x/**": false, "c on x/1": false, "d on x/1": false}, ended()); diff != "" {
		t.Errorf("after a bad reload, ended (-want +got):\n%s", diff)
	}
	if az.set.Load().lookup("td") == nil {
		t.Error("after a bad reload, the old tokens are gone")
	}
	if !strings.Contains(logs.String(), "auth reload failed") {
		t.Errorf("a bad reload was not logged: %s", logs.String())
	}

	authWriteFile(t, dir, after)
	if err := az.reload(); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"a on x/1": false, "a on y/**": true, "a on x/** and y/1": true,
		"b on x/**": false, "c on x/1": true, "d on x/1": true}
	if diff := cmp.Diff(want, ended()); diff != "" {
		t.Errorf("ended (-want +got):\n%s", diff)
	}
	if az.set.Load().lookup("td") != nil || az.set.Load().lookup("tc2") == nil {
		t.Error("the new tokens are not in force")
	}
	// A stream opened under the old rights but registered after the
	// reload is refused.
	g := &grant{name: "d", digest: sha256.Sum256([]byte("td"))}
	r, _ := http.NewRequest("GET", "/watch", nil)
	if _, _, err := az.track(r.WithContext(context.WithValue(r.Context(), grantKey{}, g)), nil); !errors.Is(err, errUnauthorized) {
		t.Errorf("track with a removed token: %v, want errUnauthorized", err)
	}
}

// TestAuthWarnIfOpen: without -auth, a non-loopback address is warned
// about.
func TestAuthWarnIfOpen(t *testing.T) {
	tests := []struct {
		addr string
		auth bool
		want bool
	}{
		{"127.0.0.1:8080", false, false},
		{"[::1]:8080", false, false},
		{"0.0.0.0:8080", false, true},
		{"[::]:8080", false, true},
		{"192.0.2.1:8080", false, true},
		{"0.0.0.0:8080", true, false},
	}
	for _, tt := range tests {
		var logs bytes.Buffer
		var az *authz
		if tt.auth {
			az = &authz{}
		}
		addr, err := net.ResolveTCPAddr("tcp", tt.addr)
		if err != nil {
			t.Fatal(err)
		}
		warnIfOpen(slog.New(slog.NewTextHandler(&logs, nil)), az, addr)
		if got := strings.Contains(logs.String(), "level=WARN"); got != tt.want {
			t.Errorf("addr %s, auth %v: warned %v, want %v (%s)", tt.addr, tt.auth, got, tt.want, logs.String())
		}
	}
}

func TestAuthRedactQuery(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/watch/a", "/watch/a"},
		{"/watch/a?pattern=b", "/watch/a?pattern=b"},
		{"/watch/a?access_token=s3cret", "/watch/a?access_token=REDACTED"},
		{"/watch?pattern=x&access_token=s3cret&since=4", "/watch?pattern=x&access_token=REDACTED&since=4"},
		{"/watch?access%5Ftoken=s3cret", "/watch?access%5Ftoken=REDACTED"},
		{"/watch?access_token=a&access_token=b", "/watch?access_token=REDACTED&access_token=REDACTED"},
		{"/watch?x;access_token=s3cret", "/watch?x;access_token=REDACTED"},
		{"/kv/a%20b?access_token=s3cret", "/kv/a%20b?access_token=REDACTED"},
	}
	for _, tt := range tests {
		u, err := url.ParseRequestURI(tt.in)
		if err != nil {
			t.Fatal(err)
		}
		if got := redactQuery(u); got != tt.want {
			t.Errorf("redactQuery(%s) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

// FuzzAuthRedactQuery: no value of access_token that the server would
// accept survives redaction.
func FuzzAuthRedactQuery(f *testing.F) {
	f.Add("pattern=a&access_token=s3cret")
	f.Add("access%5Ftoken=s3cret&access_token=x")
	f.Add("a=b;access_token=c")
	f.Fuzz(func(t *testing.T, raw string) {
		u := &url.URL{Path: "/watch", RawQuery: raw}
		red, err := url.ParseRequestURI(redactQuery(u))
		if err != nil {
			return
		}
		for _, v := range red.Query()[accessTokenParam] {
			if v != "REDACTED" && v != "" {
				t.Errorf("redactQuery(%q) = %q keeps access_token %q", raw, red.RawQuery, v)
			}
		}
	})
}

// FuzzAuthFile: parseAuthFile never panics, and what it accepts has
// unique, non-empty names and finds each clear token.
func FuzzAuthFile(f *testing.F) {
	f.Add([]byte(`{"tokens": [
		{"name": "admin", "token": "admin-secret", "read": ["**"], "write": ["**"]},
		{"name": "team-a", "sha256": "` + authSHA("team-a-secret") + `", "read": ["team-a/**"], "write": ["team-a/**"]}]}`))
	f.Add([]byte(`{"tokens": []}`))
	f.Add([]byte(`{"tokens": [{"name": "a", "token": "t", "read": ["a/*"], "write": ["**"]}]}`))
	f.Add([]byte(`{"tokens": [{"name": "a", "sha256": "` + authSHA("x") + `"}, {"name": "a", "token": "x"}]}`))
	f.Add([]byte(`{"tokens": [null, 1, "x", {}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := parseAuthFile(data)
		if err != nil {
			return
		}
		var file struct{ Tokens []tokenJSON }
		if err := json.Unmarshal(data, &file); err != nil {
			t.Fatalf("accepted %q, which json.Unmarshal refuses: %v", data, err)
		}
		if len(s.byName) != len(s.grants) || len(s.grants) != len(file.Tokens) {
			t.Fatalf("accepted %q as %d grants, %d names", data, len(s.grants), len(s.byName))
		}
		for _, e := range file.Tokens {
			if e.Name == "" || s.byName[e.Name] == nil {
				t.Fatalf("accepted %q with entry %+v not found by name", data, e)
			}
			if e.Token != "" && s.lookup(e.Token) != s.byName[e.Name] {
				t.Fatalf("accepted %q, but its token %q does not find %q", data, e.Token, e.Name)
			}
		}
	})
}
