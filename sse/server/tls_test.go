package server

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// tlsTestCert writes a self-signed ECDSA P-256 certificate for 127.0.0.1
// and localhost, and its key, to PEM files in a temporary directory. It
// returns their paths and a pool that trusts the certificate.
func tlsTestCert(t testing.TB) (certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kvsse test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), 0o600); err != nil {
		t.Fatal(err)
	}
	roots = x509.NewCertPool()
	roots.AddCert(cert)
	return certFile, keyFile, roots
}

// tlsClient returns a client with transport tr that counts the
// connections it dials in dials.
func tlsClient(t testing.TB, tr *http.Transport, dials *atomic.Int64) *http.Client {
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// tlsProtocols returns the Protocols with those named set: "http1", "http2",
// "h2c".
func tlsProtocols(names ...string) *http.Protocols {
	var p http.Protocols
	for _, n := range names {
		switch n {
		case "http1":
			p.SetHTTP1(true)
		case "http2":
			p.SetHTTP2(true)
		case "h2c":
			p.SetUnencryptedHTTP2(true)
		}
	}
	return &p
}

// tlsEvent is one object of an NDJSON stream.
type tlsEvent struct {
	Event    string `json:"event"`
	Key      string `json:"key"`
	Value    string `json:"value"`
	Revision int64  `json:"revision"`
}

// tlsStream is an open NDJSON stream of /watch.
type tlsStream struct {
	resp *http.Response
	sc   *bufio.Scanner
}

// tlsOpen opens url (a /watch URL; format=ndjson is added) with
// client. The stream ends when ctx does. A status other than 200 is an
// error that holds the body.
func tlsOpen(ctx context.Context, client *http.Client, url string) (*tlsStream, error) {
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+sep+"format=ndjson", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: %s %s", url, resp.Status, b)
	}
	return &tlsStream{resp: resp, sc: bufio.NewScanner(resp.Body)}, nil
}

// next reads the stream's next event.
func (s *tlsStream) next() (tlsEvent, error) {
	var e tlsEvent
	if !s.sc.Scan() {
		return e, fmt.Errorf("stream ended: %v", s.sc.Err())
	}
	err := json.Unmarshal(s.sc.Bytes(), &e)
	return e, err
}

// until reads events until one is event ev (and, if key is not "", of
// key), and returns it.
func (s *tlsStream) until(ev, key string) (tlsEvent, error) {
	for {
		e, err := s.next()
		if err != nil || (e.Event == ev && (key == "" || e.Key == key)) {
			return e, err
		}
	}
}

func (s *tlsStream) close() { s.resp.Body.Close() }

// tlsDo sends a request with client and returns the response and its body.
func tlsDo(ctx context.Context, client *http.Client, method, url, body string) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

func TestTLSProtocols(t *testing.T) {
	cert, key, roots := tlsTestCert(t)
	ts := startServer(t, "-tls-cert", cert, "-tls-key", key)
	if !strings.HasPrefix(ts.URL, "https://") {
		t.Fatalf("the server printed %q, want an https:// URL", ts.URL)
	}
	tests := []struct {
		name      string
		transport *http.Transport
		wantProto string
		wantALPN  string
	}{
		{"HTTP/2", &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true}, "HTTP/2.0", "h2"},
		// Go's client offers no ALPN when it speaks HTTP/1 only.
		{"HTTP/1.1 only", &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, Protocols: tlsProtocols("http1")}, "HTTP/1.1", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var dials atomic.Int64
			client := tlsClient(t, tt.transport, &dials)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			resp, _, err := tlsDo(ctx, client, http.MethodPut, ts.URL+"/kv/tls/proto", "v")
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode/100 != 2 || resp.Proto != tt.wantProto || resp.TLS == nil || resp.TLS.NegotiatedProtocol != tt.wantALPN {
				t.Errorf("PUT: %s over %s, ALPN %q; want 2xx over %s, ALPN %q", resp.Status, resp.Proto, tlsALPN(resp), tt.wantProto, tt.wantALPN)
			}
			resp, b, err := tlsDo(ctx, client, http.MethodGet, ts.URL+"/kv/tls/proto", "")
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusOK || string(b) != "v" || resp.Proto != tt.wantProto {
				t.Errorf("GET: %s %q over %s; want 200 \"v\" over %s", resp.Status, b, resp.Proto, tt.wantProto)
			}
			if n := dials.Load(); n != 1 {
				t.Errorf("%d connections, want 1", n)
			}
		})
	}
}

func tlsALPN(resp *http.Response) string {
	if resp.TLS == nil {
		return "(no TLS)"
	}
	return resp.TLS.NegotiatedProtocol
}

// TestTLSStreamsShareOneConnection opens 100 streams over HTTP/2 and writes
// a key for each through the same client: one connection carries it all.
func TestTLSStreamsShareOneConnection(t *testing.T) {
	const n = 100
	cert, key, roots := tlsTestCert(t)
	ts := startServer(t, "-tls-cert", cert, "-tls-key", key, "-sync", "none")
	var dials atomic.Int64
	client := tlsClient(t, &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true}, &dials)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The first request opens the connection and learns the server's
	// stream limit; the streams then all go on it.
	if resp, _, err := tlsDo(ctx, client, http.MethodGet, ts.URL+"/healthz", ""); err != nil || resp.Proto != "HTTP/2.0" {
		t.Fatalf("GET /healthz: %v, %v", err, resp)
	}
	live := make(chan error, n)
	errc := make(chan error, n)
	for i := range n {
		go func() {
			key := fmt.Sprintf("tls/%d", i)
			s, err := tlsOpen(ctx, client, ts.URL+"/watch/"+key)
			if err == nil && s.resp.Proto != "HTTP/2.0" {
				err = fmt.Errorf("stream %d over %s", i, s.resp.Proto)
			}
			if err == nil {
				defer s.close()
				_, err = s.until("sync", "")
			}
			live <- err
			if err != nil {
				return
			}
			e, err := s.until("put", key)
			if err == nil && e.Value != "v"+key {
				err = fmt.Errorf("stream %d got %+v, want the value %q", i, e, "v"+key)
			}
			errc <- err
		}()
	}
	for range n {
		if err := <-live; err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		go func() {
			key := fmt.Sprintf("tls/%d", i)
			resp, b, err := tlsDo(ctx, client, http.MethodPut, ts.URL+"/kv/"+key, "v"+key)
			if err == nil && resp.StatusCode != http.StatusCreated {
				err = fmt.Errorf("PUT %s: %s %s", key, resp.Status, b)
			}
			if err != nil {
				errc <- err
			}
		}()
	}
	for range n {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if got := dials.Load(); got != 1 {
		t.Errorf("%d streams and %d writes took %d connections, want 1", n, n, got)
	}
}

// TestH2C checks that, without TLS, HTTP/2 with prior knowledge is served,
// streams included, and HTTP/1.1 still is.
func TestH2C(t *testing.T) {
	ts := startServer(t)
	tests := []struct {
		name      string
		protocols *http.Protocols
		wantProto string
	}{
		{"h2c prior knowledge", tlsProtocols("h2c"), "HTTP/2.0"},
		{"HTTP/1.1", tlsProtocols("http1"), "HTTP/1.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var dials atomic.Int64
			client := tlsClient(t, &http.Transport{Protocols: tt.protocols}, &dials)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			key := "h2c/" + tt.wantProto
			s, err := tlsOpen(ctx, client, ts.URL+"/watch/"+key)
			if err != nil {
				t.Fatal(err)
			}
			defer s.close()
			if s.resp.Proto != tt.wantProto {
				t.Errorf("stream over %s, want %s", s.resp.Proto, tt.wantProto)
			}
			if _, err := s.until("sync", ""); err != nil {
				t.Fatal(err)
			}
			resp, b, err := tlsDo(ctx, client, http.MethodPut, ts.URL+"/kv/"+key, "on")
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusCreated || resp.Proto != tt.wantProto {
				t.Errorf("PUT: %s %s over %s, want 201 over %s", resp.Status, b, resp.Proto, tt.wantProto)
			}
			if e, err := s.until("put", key); err != nil || e.Value != "on" {
				t.Errorf("stream got %+v, %v; want the put of %s", e, err, key)
			}
		})
	}
}

// TestTLSFlagErrors checks that run refuses bad TLS flags before it
// serves.
func TestTLSFlagErrors(t *testing.T) {
	cert, key, _ := tlsTestCert(t)
	_, otherKey, _ := tlsTestCert(t)
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
			// A context already done: were the flags accepted, run would
			// start and stop at once, and return nil.
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			var stdout strings.Builder
			args := append([]string{"-addr", "127.0.0.1:0", "-memory", "-log-level", "error"}, tt.args...)
			err := run(ctx, args, func(k string) string { return tt.env[k] }, strings.NewReader(""), &stdout, io.Discard)
			if err == nil || !strings.Contains(err.Error(), "tls") {
				t.Fatalf("run returned %v, want an error about TLS", err)
			}
			var ee *exitError
			if isUsage := errors.As(err, &ee) && ee.code == 2; isUsage != tt.usage {
				t.Errorf("run returned %v (usage error: %v), want a usage error: %v", err, isUsage, tt.usage)
			}
			if stdout.Len() != 0 {
				t.Errorf("run printed %q before failing", stdout.String())
			}
		})
	}
}

// TestTLSEnvTwins checks that KVSSE_TLS_CERT and KVSSE_TLS_KEY alone turn
// TLS on.
func TestTLSEnvTwins(t *testing.T) {
	cert, key, roots := tlsTestCert(t)
	env := map[string]string{"KVSSE_TLS_CERT": cert, "KVSSE_TLS_KEY": key}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	url, done, err := runInProcess(ctx, []string{"-addr", "127.0.0.1:0", "-memory", "-log-level", "error"},
		func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(url, "https://") {
		t.Fatalf("listening on %q, want https://...", url)
	}
	waitReady(t, url)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true}}
	if resp, _, err := tlsDo(ctx, client, http.MethodGet, url+"/healthz", ""); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("GET /healthz: %v %v", resp, err)
	}
	client.CloseIdleConnections() // else shutdown waits a second for it
	cancel()
	if err := <-done; err != nil {
		t.Errorf("run returned %v", err)
	}
}

// TestTLSShutdownWithStreams stops a server while HTTP/2 streams are open:
// every stream ends and run returns nil.
func TestTLSShutdownWithStreams(t *testing.T) {
	const n = 50
	cert, key, roots := tlsTestCert(t)
	ts := startServer(t, "-tls-cert", cert, "-tls-key", key)
	var dials atomic.Int64
	client := tlsClient(t, &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true}, &dials)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var streams []*tlsStream
	for i := range n {
		s, err := tlsOpen(ctx, client, fmt.Sprintf("%s/watch/stop/%d", ts.URL, i))
		if err != nil {
			t.Fatal(err)
		}
		defer s.close()
		if _, err := s.until("sync", ""); err != nil {
			t.Fatal(err)
		}
		streams = append(streams, s)
	}
	ts.stop(t) // fails the test unless run returns nil
	for i, s := range streams {
		for {
			if _, err := s.next(); err != nil {
				break // the stream ended
			}
		}
		if i == 0 && s.resp.Proto != "HTTP/2.0" {
			t.Errorf("streams over %s, want HTTP/2.0", s.resp.Proto)
		}
	}
}
