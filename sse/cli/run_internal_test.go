package cli

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kvsse/sse/server/servertest"
)

func TestBenchUsage(t *testing.T) {
	for _, args := range [][]string{
		{"-writers", "0"},
		{"-value-size", "8"},
		{"-format", "xml"},
		{"-pattern", "a**"},
		{"-prefix", "a//b"},
		{"extra"},
		{"-baseline", "-format", "ndjson"},
		{}, // no server there
	} {
		var stderr bytes.Buffer
		err := Run(context.Background(), append([]string{"-server", "http://127.0.0.1:1", "bench"}, args...), func(string) string { return "" }, strings.NewReader(""), io.Discard, &stderr)
		if code := exitCode(err, io.Discard); code != 2 {
			t.Errorf("bench %q: exit %d (%v), want 2", args, code, err)
		}
	}
}

// TestTLSFlagErrors checks that Run refuses bad TLS flags before it
// serves.
func TestTLSFlagErrors(t *testing.T) {
	cert, key, _ := servertest.TLSCert(t)
	_, otherKey, _ := servertest.TLSCert(t)
	junk := filepath.Join(t.TempDir(), "junk.pem")
	if err := os.WriteFile(junk, []byte("not PEM\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "missing.pem")
	tests := []struct {
		name  string
		args  []string
		env   map[string]string
		usage bool // a usage error (exit status 2 without touching files)
	}{
		{name: "cert without key", args: []string{"-tls-cert", cert}, usage: true},
		{name: "key without cert", args: []string{"-tls-key", key}, usage: true},
		{name: "cert from the environment without key", env: map[string]string{"KVSSE_TLS_CERT": cert}, usage: true},
		{name: "missing files", args: []string{"-tls-cert", missing, "-tls-key", missing}},
		{name: "not PEM", args: []string{"-tls-cert", junk, "-tls-key", junk}},
		{name: "key of another certificate", args: []string{"-tls-cert", cert, "-tls-key", otherKey}},
		{name: "key as certificate", args: []string{"-tls-cert", key, "-tls-key", cert}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A context already done: were the flags accepted, Run would
			// start and stop at once, and return nil.
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			var stdout strings.Builder
			args := append([]string{"-addr", "127.0.0.1:0", "-memory", "-log-level", "error"}, tt.args...)
			err := Run(ctx, args, func(k string) string { return tt.env[k] }, strings.NewReader(""), &stdout, io.Discard)
			if err == nil || !strings.Contains(err.Error(), "tls") {
				t.Fatalf("Run returned %v, want an error about TLS", err)
			}
			var ue *usageError
			if isUsage := errors.As(err, &ue); isUsage != tt.usage {
				t.Errorf("Run returned %v (usage error: %v), want a usage error: %v", err, isUsage, tt.usage)
			}
			if stdout.Len() != 0 {
				t.Errorf("Run printed %q before failing", stdout.String())
			}
		})
	}
}
