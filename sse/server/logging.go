package server

import (
	"context"
	"io"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// newLogger builds the server's logger from -log-format and -log-level,
// and the writer of its access lines, both writing to w: the logger's
// lines at once, the access lines gathered.
func newLogger(cfg *Config, w *logWriter) (*slog.Logger, *accessLine, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return nil, nil, configErr("-log-level: %v", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	al := &accessLine{on: level <= slog.LevelInfo, w: w}
	switch cfg.LogFormat {
	case "text":
		al.logger = slog.New(slog.NewTextHandler(al.w, opts))
	case "json":
		al.json = true
		al.logger = slog.New(slog.NewJSONHandler(al.w, opts))
	default:
		return nil, nil, configErr("-log-format must be text or json, got %q", cfg.LogFormat)
	}
	return al.logger, al, nil
}

// accessLine writes the access lines of requests: one for every request,
// the log's hottest line. It writes them in the log's format
// (-log-format) by hand, without slog's work for each record (a record,
// its attributes, the caller's frame, a handler state), which cost a
// tenth of the CPU of a GET. A line with a value a format would escape
// goes through slog instead, so every line reads exactly as slog would
// have written it.
type accessLine struct {
	on     bool // -log-level lets Info through
	json   bool
	w      *logWriter   // the log's writer, shared with logger
	logger *slog.Logger // for lines with unusual values
	bufs   sync.Pool    // of *[]byte
}

// write logs the access line of e, which ended at end after d.
func (l *accessLine) write(e *access, end time.Time, d time.Duration, bytes int64) {
	if !l.on {
		return
	}
	if !plain(e.method, false) || !plain(e.route, true) || !plain(e.remote, false) {
		r := slog.NewRecord(end, slog.LevelInfo, "access", 0)
		r.AddAttrs(e.attrs(d, bytes)...)
		l.logger.Handler().Handle(context.Background(), r)
		return
	}
	bp, _ := l.bufs.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	b := l.appendLine((*bp)[:0], e, end, d, bytes)
	l.w.gather(b)
	*bp = b
	l.bufs.Put(bp)
}

// appendLine appends the line as slog's TextHandler or JSONHandler
// writes it. Every string in e is plain.
func (l *accessLine) appendLine(b []byte, e *access, end time.Time, d time.Duration, bytes int64) []byte {
	if l.json {
		b = append(b, `{"time":"`...)
		b = end.AppendFormat(b, time.RFC3339Nano)
		b = append(b, `","level":"INFO","msg":"access","method":"`...)
		b = append(b, e.method...)
		b = append(b, `","route":"`...)
		b = append(b, e.route...)
		b = append(b, `","status":`...)
		b = strconv.AppendInt(b, int64(e.status), 10)
		b = append(b, `,"duration":`...)
		b = strconv.AppendInt(b, int64(d), 10)
		b = append(b, `,"bytes":`...)
		b = strconv.AppendInt(b, bytes, 10)
		if e.ops > 0 {
			b = append(b, `,"ops":`...)
			b = strconv.AppendInt(b, int64(e.ops), 10)
		}
		b = append(b, `,"remote":"`...)
		b = append(b, e.remote...)
		return append(b, "\"}\n"...)
	}
	b = append(b, "time="...)
	b = appendRFC3339Millis(b, end)
	b = append(b, " level=INFO msg=access method="...)
	b = append(b, e.method...)
	b = append(b, " route="...)
	b = appendText(b, e.route)
	b = append(b, " status="...)
	b = strconv.AppendInt(b, int64(e.status), 10)
	b = append(b, " duration="...)
	b = append(b, d.String()...)
	b = append(b, " bytes="...)
	b = strconv.AppendInt(b, bytes, 10)
	if e.ops > 0 {
		b = append(b, " ops="...)
		b = strconv.AppendInt(b, int64(e.ops), 10)
	}
	b = append(b, " remote="...)
	b = append(b, e.remote...)
	return append(b, '\n')
}

// plain reports whether s is non-empty printable ASCII that neither log
// format escapes: no quote, no backslash, and no '=' or space, unless
// spaces is set (a text value with a space or '=' is only put in quotes).
func plain(s string, spaces bool) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < ' ' || c > '~' || c == '"' || c == '\\' || (!spaces && (c == ' ' || c == '=')) {
			return false
		}
	}
	return true
}

// appendText appends a plain value as TextHandler does: in quotes when it
// holds a space or '='.
func appendText(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if s[i] == ' ' || s[i] == '=' {
			b = append(b, '"')
			b = append(b, s...)
			return append(b, '"')
		}
	}
	return append(b, s...)
}

// appendRFC3339Millis appends t as TextHandler does: RFC 3339 with the
// milliseconds, truncated, always three digits.
func appendRFC3339Millis(b []byte, t time.Time) []byte {
	const prefix = len("2006-01-02T15:04:05.000")
	n := len(b)
	// RFC3339Nano drops trailing zeros: a tenth of a millisecond more
	// keeps four digits, of which the fourth is cut.
	b = t.Truncate(time.Millisecond).Add(time.Millisecond/10).AppendFormat(b, time.RFC3339Nano)
	return append(b[:n+prefix], b[n+prefix+1:]...)
}

// logWriter is the log's writer. It writes the lines it is given with
// Write at once, and gathers those given with gather (the access lines,
// one for every request) in memory, to write them in one Write at most a
// delay after the first of them, or at once when flushBytes are waiting:
// under load, one system call carries hundreds of access lines instead
// of one for every request, while a warning or an error is never late.
// Lines keep their order and are never split.
type logWriter struct {
	w      io.Writer
	mu     sync.Mutex // guards buf and closed, and orders the writes to w
	buf    []byte     // gathered lines not yet written
	delay  time.Duration
	timer  *time.Timer // runs flush; armed while buf holds lines
	closed bool
}

// flushBytes is as much as a logWriter gathers before it writes.
const flushBytes = 64 << 10

// newLogWriter writes to w gathered lines at most delay late.
func newLogWriter(w io.Writer, delay time.Duration) *logWriter {
	l := &logWriter{w: w, delay: delay}
	l.timer = time.AfterFunc(time.Hour, l.flush)
	l.timer.Stop()
	return l
}

// Write writes b at once, after the lines gathered before it.
func (l *logWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf) == 0 {
		return l.w.Write(b)
	}
	l.buf = append(l.buf, b...)
	l.writeLocked()
	return len(b), nil
}

// gather adds b to the lines to write at most the delay later.
func (l *logWriter) gather(b []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		l.w.Write(b)
		return
	}
	l.buf = append(l.buf, b...)
	switch {
	case len(l.buf) >= flushBytes:
		l.writeLocked()
	case len(l.buf) == len(b):
		l.timer.Reset(l.delay)
	}
}

func (l *logWriter) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.writeLocked()
}

func (l *logWriter) writeLocked() {
	if len(l.buf) > 0 {
		l.w.Write(l.buf) // like slog, a log that cannot be written is not an error of the request
		l.buf = l.buf[:0]
	}
}

// Close writes the lines still gathered. Later lines are written at once.
func (l *logWriter) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.timer.Stop()
	l.writeLocked()
	l.closed = true
	return nil
}

// redactQuery returns u's path and query, as a log line may show them,
// with the value of every access_token parameter replaced by REDACTED.
// Anything that logs a request's URL must log it through redactQuery.
func redactQuery(u *url.URL) string {
	if !strings.Contains(u.RawQuery, "=") {
		return u.RequestURI()
	}
	parts := strings.Split(u.RawQuery, "&")
	for i, part := range parts {
		k, _, _ := strings.Cut(part, "=")
		name, err := url.QueryUnescape(k)
		if err != nil {
			name = k
		}
		// Also near misses ("x;access_token"), which are not accepted
		// but may still hold a token.
		if strings.Contains(strings.ToLower(name), accessTokenParam) {
			parts[i] = k + "=REDACTED"
		}
	}
	c := *u
	c.RawQuery = strings.Join(parts, "&")
	return c.RequestURI()
}
