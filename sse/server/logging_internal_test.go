package server

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"kvsse/kv/etcd/etcdtest"
)

// slogLine is the line slog itself writes for e.
func slogLine(t *testing.T, format string, e *access, end time.Time, d time.Duration, n int64) string {
	t.Helper()
	var buf bytes.Buffer
	lw := newLogWriter(&buf, time.Hour)
	logger, _, err := newLogger(&Config{LogLevel: "info", LogFormat: format}, lw)
	if err != nil {
		t.Fatal(err)
	}
	r := slog.NewRecord(end, slog.LevelInfo, "access", 0)
	r.AddAttrs(e.attrs(d, n)...)
	if err := logger.Handler().Handle(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// ourLine is the line accessLine writes for e.
func ourLine(t *testing.T, format, level string, e *access, end time.Time, d time.Duration, n int64) string {
	t.Helper()
	var buf bytes.Buffer
	lw := newLogWriter(&buf, time.Hour)
	_, al, err := newLogger(&Config{LogLevel: level, LogFormat: format}, lw)
	if err != nil {
		t.Fatal(err)
	}
	al.write(e, end, d, n)
	lw.Close()
	return buf.String()
}

func checkAccessLine(t *testing.T, e *access, end time.Time, d time.Duration, n int64) {
	t.Helper()
	for _, format := range []string{"text", "json"} {
		got := ourLine(t, format, "info", e, end, d, n)
		if want := slogLine(t, format, e, end, d, n); got != want {
			t.Errorf("%s access line\n got %q\nwant %q (as slog writes it)", format, got, want)
		}
	}
}

func TestAccessLineAsSlog(t *testing.T) {
	end := time.Date(2026, 11, 27, 1, 2, 3, 4_000_000, time.UTC)
	for _, tc := range []struct {
		name string
		e    access
		end  time.Time
		d    time.Duration
	}{
		{"get", access{method: "GET", route: "GET /kv/{key...}", status: 200, remote: "127.0.0.1:5000"}, end, 1234567 * time.Nanosecond},
		{"whole second", access{method: "PUT", route: "PUT /kv/{key...}", status: 201, remote: "[::1]:5000"}, end.Truncate(time.Second), 0},
		{"other zone", access{method: "GET", route: "GET /{$}", status: 200, remote: "10.0.0.1:1"}, end.In(time.FixedZone("", -7*3600)), time.Hour},
		{"no route", access{method: "BREW", route: "", status: 404, remote: "a:1"}, end, time.Microsecond},
		{"route with =", access{method: "GET", route: "a=b", status: 404, remote: "a:1"}, end, time.Microsecond},
		{"quote", access{method: "GET", route: `"x"`, status: 500, remote: `a"b`}, end, time.Millisecond},
		{"control and unicode", access{method: "G\tT", route: "é /\x00", status: 400, remote: "ü"}, end, -time.Second},
		{"transaction", access{method: "POST", route: "POST /txn", status: 200, remote: "127.0.0.1:5000", ops: 12}, end, time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkAccessLine(t, &tc.e, tc.end, tc.d, 64)
		})
	}
}

func TestAccessLineLevel(t *testing.T) {
	e := &access{method: "GET", route: "GET /healthz", status: 200, remote: "127.0.0.1:1"}
	for level, want := range map[string]bool{"debug": true, "info": true, "warn": false, "error": false} {
		for _, format := range []string{"text", "json"} {
			if got := ourLine(t, format, level, e, time.Now(), time.Millisecond, 1) != ""; got != want {
				t.Errorf("-log-level %s -log-format %s: access line written %v, want %v", level, format, got, want)
			}
		}
	}
}

func FuzzAccessLine(f *testing.F) {
	f.Add("GET", "GET /kv/{key...}", "127.0.0.1:80", 200, int64(1500), int64(64), int64(1795741323004000000))
	f.Add("PUT", "a=b c", "[::1]:1", 201, int64(-1), int64(0), int64(0))
	f.Fuzz(func(t *testing.T, method, route, remote string, status int, d, n, unixNano int64) {
		end := time.Unix(0, unixNano).UTC()
		if y := end.Year(); y < 1 || y > 9999 {
			t.Skip() // slog writes an error for such years
		}
		checkAccessLine(t, &access{method: method, route: route, status: status, remote: remote}, end, time.Duration(d), n)
	})
}

// countingWriter is a LockedBuffer that counts the Writes it is given. It
// is safe for concurrent use. (servertest's LockedBuffer is this one, but
// servertest imports the server: this package's own tests cannot.)
type countingWriter struct {
	etcdtest.LockedBuffer
	writes atomic.Int32
}

func (c *countingWriter) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.LockedBuffer.Write(b)
}

func TestLogWriterGathers(t *testing.T) {
	var out countingWriter
	l := newLogWriter(&out, time.Hour)
	var want strings.Builder
	for i := range 10 {
		line := fmt.Sprintf("line %d\n", i)
		l.gather([]byte(line))
		want.WriteString(line)
	}
	if n := out.writes.Load(); n != 0 {
		t.Errorf("%d Writes before the delay and below %d bytes, want none", n, flushBytes)
	}

	// A full buffer is written at once, in order, never split.
	big := strings.Repeat("x", flushBytes-want.Len()-1) + "\n"
	l.gather([]byte(big))
	want.WriteString(big)
	if got, n := out.String(), out.writes.Load(); got != want.String() || n != 1 {
		t.Errorf("at %d bytes: %d Writes of %d bytes, want 1 of %d", flushBytes, n, len(got), want.Len())
	}

	// A line given to Write goes out at once, after those gathered.
	l.gather([]byte("gathered\n"))
	l.Write([]byte("warning\n"))
	want.WriteString("gathered\nwarning\n")
	if got, n := out.String(), out.writes.Load(); got != want.String() || n != 2 {
		t.Errorf("after Write: %d Writes, ending %q; want 2, ending %q", n, got[max(len(got)-20, 0):], "gathered\nwarning\n")
	}

	l.gather([]byte("last\n"))
	l.Close()
	want.WriteString("last\n")
	if got, n := out.String(), out.writes.Load(); got != want.String() || n != 3 {
		t.Errorf("after Close: %d Writes, ending %q; want 3, ending %q", n, got[max(len(got)-10, 0):], "last\n")
	}
	l.gather([]byte("after close\n"))
	if got := out.String(); !strings.HasSuffix(got, "last\nafter close\n") {
		t.Errorf("a line gathered after Close was not written at once")
	}
}

func TestLogWriterDelay(t *testing.T) {
	var out countingWriter
	l := newLogWriter(&out, time.Millisecond)
	defer l.Close()
	for _, line := range []string{"one\n", "two\n"} {
		l.gather([]byte(line))
		deadline := time.Now().Add(10 * time.Second)
		for !strings.HasSuffix(out.String(), line) && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
	if got := out.String(); got != "one\ntwo\n" {
		t.Errorf("written after the delay: %q, want %q", got, "one\ntwo\n")
	}
}
