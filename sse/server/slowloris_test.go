//go:build unix

package server_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"kvsse/sse/server/servertest"
)

// slowRequest is what a slow client trickles: a request whose headers
// never end.
const slowRequest = "GET /healthz HTTP/1.1\r\nHost: kvsse\r\nX-Slow: "

// raiseOpenFiles makes sure the process may have n files open, or skips
// the test.
func raiseOpenFiles(t *testing.T, n uint64) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("getrlimit: %v", err)
	}
	if lim.Cur >= n {
		return
	}
	lim.Cur = min(n, lim.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < n {
		t.Skipf("%d open files allowed, the test needs %d (%v)", lim.Cur, n, err)
	}
}

// TestSlowloris holds 500 connections open that send their headers a
// byte at a time, or nothing: fresh connections are served promptly all
// the while, and the server closes the slow ones after
// -read-header-timeout.
func TestSlowloris(t *testing.T) {
	const (
		slow          = 500
		normal        = 50
		headerTimeout = 3 * time.Second        // well above the time 500 dials take on a loaded machine
		trickle       = 200 * time.Millisecond // between two bytes
		prompt        = time.Second            // a normal request's deadline
	)
	raiseOpenFiles(t, 3*slow) // both ends of each slow connection, and some
	ts := servertest.Start(t, "-read-header-timeout", headerTimeout.String(), "-log-level", "error")
	addr := strings.TrimPrefix(ts.URL, "http://")

	type closed struct {
		after time.Duration // from just before the dial
		got   string        // what the server sent
		err   error         // why reading ended before EOF, if it did
	}
	dialed := make(chan error, slow)
	closedc := make(chan closed, slow)
	stop := make(chan struct{}) // ends the tricklers when the test fails
	defer close(stop)
	for i := range slow {
		go func() {
			start := time.Now() // before the server's clock for c starts
			c, err := net.Dial("tcp", addr)
			dialed <- err
			if err != nil {
				return
			}
			defer c.Close()
			if i%5 != 0 { // one in five sends nothing at all
				go func() {
					tick := time.NewTicker(trickle)
					defer tick.Stop()
					for j := 0; ; j++ {
						b := byte('a')
						if j < len(slowRequest) {
							b = slowRequest[j]
						}
						if _, err := c.Write([]byte{b}); err != nil {
							return
						}
						select {
						case <-tick.C:
						case <-stop:
							return
						}
					}
				}()
			}
			c.SetReadDeadline(time.Now().Add(headerTimeout + 10*time.Second))
			got, err := io.ReadAll(c)
			closedc <- closed{time.Since(start), string(got), err}
		}()
	}
	for range slow {
		if err := <-dialed; err != nil {
			t.Fatalf("dial: %v", err)
		}
	}

	// Normal requests, each on a fresh connection, while the slow ones
	// hold theirs.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	if n := len(closedc); n > 0 {
		t.Fatalf("%d slow connections closed before the normal requests", n)
	}
	var slowest time.Duration
	for i := range normal {
		ctx, cancel := context.WithTimeout(context.Background(), prompt)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+"/healthz", nil)
		start := time.Now()
		resp, err := client.Do(req)
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		cancel()
		d := time.Since(start)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("normal request %d after %v: %v %v, want 200 within %v", i, d, err, resp, prompt)
		}
		slowest = max(slowest, d)
	}
	t.Logf("%d requests served while the slow connections were open, the slowest in %v; %d slow connections closed by then",
		normal, slowest, len(closedc))

	// The server closes each slow connection at its header deadline: a
	// silent one without a word, one that sent part of a request with a
	// 400.
	for range slow {
		c := <-closedc
		switch {
		case c.got != "" && !strings.HasPrefix(c.got, "HTTP/1.1 400 "):
			t.Fatalf("a slow connection got %q, want nothing or a 400", c.got)
		case c.err != nil && !errors.Is(c.err, syscall.ECONNRESET):
			t.Fatalf("a slow connection's read ended after %v with %v, want the server to close it", c.after, c.err)
		case c.after < headerTimeout-100*time.Millisecond || c.after > headerTimeout+2*time.Second:
			t.Fatalf("a slow connection was closed after %v, want about %v", c.after, headerTimeout)
		}
	}
}
