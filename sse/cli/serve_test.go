package cli_test

// Tests of the serve command through cli.Run: what the flags and their
// environment twins give the server.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kvsse/sse/cli"
	"kvsse/sse/server/servertest"
)

// TestTLSEnvTwins checks that KVSSE_TLS_CERT and KVSSE_TLS_KEY alone turn
// TLS on.
func TestTLSEnvTwins(t *testing.T) {
	cert, key, roots := servertest.TLSCert(t)
	env := map[string]string{"KVSSE_TLS_CERT": cert, "KVSSE_TLS_KEY": key}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	url, done, err := servertest.RunInProcess(func(stdout io.Writer) error {
		return cli.Run(ctx, []string{"-addr", "127.0.0.1:0", "-memory", "-log-level", "error"},
			func(k string) string { return env[k] }, strings.NewReader(""), stdout, io.Discard)
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(url, "https://") {
		t.Fatalf("listening on %q, want https://...", url)
	}
	servertest.WaitReady(t, url)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true}}
	if resp, _, err := servertest.Do(ctx, client, http.MethodGet, url+"/healthz", ""); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("GET /healthz: %v %v", resp, err)
	}
	client.CloseIdleConnections() // else shutdown waits a second for it
	cancel()
	if err := <-done; err != nil {
		t.Errorf("cli.Run returned %v", err)
	}
}

// authSHA is the form of a token that an auth file may give instead of
// the token.
func authSHA(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// TestAuthBadFile: a bad auth file refuses start-up with an error naming
// the file and the entry.
func TestAuthBadFile(t *testing.T) {
	tests := []struct {
		name, file string
		want       string // in the error
	}{
		{"not JSON", `{"tokens": [`, "not valid JSON"},
		{"no tokens", `{}`, `no "tokens" list`},
		{"unknown field", `{"tokens": [{"name": "a", "token": "t", "reads": ["**"]}]}`, `tokens[0] "a": json: unknown field "reads"`},
		{"no name", `{"tokens": [{"token": "t"}]}`, `tokens[0]: "name" is missing`},
		{"same name", `{"tokens": [{"name": "a", "token": "t"}, {"name": "a", "token": "u"}]}`, `tokens[1] "a": the name is used twice`},
		{"same token", `{"tokens": [{"name": "a", "token": "t"}, {"name": "b", "sha256": "` + authSHA("t") + `"}]}`, `tokens[1] "b": the same token as "a"`},
		{"both forms", `{"tokens": [{"name": "a", "token": "t", "sha256": "` + authSHA("t") + `"}]}`, `tokens[0] "a": give exactly one of "token"`},
		{"neither form", `{"tokens": [{"name": "a", "read": ["**"]}]}`, `tokens[0] "a": give exactly one of "token"`},
		{"short sha256", `{"tokens": [{"name": "a", "sha256": "abc"}]}`, `tokens[0] "a": "sha256" must be 64 hex digits`},
		{"sha256 not hex", `{"tokens": [{"name": "a", "sha256": "` + strings.Repeat("g", 64) + `"}]}`, `"sha256" must be 64 hex digits`},
		{"space in token", `{"tokens": [{"name": "a", "token": "t t"}]}`, `tokens[0] "a": "token" must not hold spaces`},
		{"bad read pattern", `{"tokens": [{"name": "a", "token": "t", "read": ["ok/**", "a**"]}]}`, `tokens[0] "a": read[1]: invalid pattern "a**"`},
		{"bad write pattern", `{"tokens": [{"name": "x", "token": "t"}, {"name": "a", "token": "u", "write": ["a//b"]}]}`, `tokens[1] "a": write[0]: invalid pattern`},
		{"trailing data", `{"tokens": []} {}`, "data after the JSON object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := servertest.AuthFile(t, "", tt.file)
			var stdout bytes.Buffer
			err := cli.Run(context.Background(), []string{"-addr", "127.0.0.1:0", "-memory", "-auth", path}, func(string) string { return "" }, nil, &stdout, io.Discard)
			if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("cli.Run: %v, want an error naming %s and holding %q", err, path, tt.want)
			}
			if stdout.Len() != 0 {
				t.Errorf("the server started listening: %q", stdout.String())
			}
		})
	}
	t.Run("missing file from KVSSE_AUTH", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "none.json")
		getenv := func(k string) string {
			if k == "KVSSE_AUTH" {
				return path
			}
			return ""
		}
		err := cli.Run(context.Background(), []string{"-addr", "127.0.0.1:0", "-memory"}, getenv, nil, io.Discard, io.Discard)
		if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), path) {
			t.Errorf("cli.Run: %v, want a not-exist error naming %s", err, path)
		}
	})
}
