package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"kvsse/kv"
	"kvsse/sse"
)

// store is what the server needs from the data: the embedded kv.Store
// and the etcd cluster's etcd.Store are the two implementations. The
// server opens one at start (openBackend) and closes it at the end.
type store interface {
	Get(ctx context.Context, key string) (kv.Entry, error)
	Put(ctx context.Context, key string, value []byte, opts kv.PutOptions) (kv.Result, error)
	Delete(ctx context.Context, key string, cond kv.Cond) (kv.Result, error)
	List(ctx context.Context, prefix, after string, limit int) (kv.Page, error)
	Watch(opts kv.WatchOptions) (*kv.Subscription, error)
	Txn(ctx context.Context, t kv.Txn) (kv.TxnResult, error)
	DeletePrefix(ctx context.Context, prefix string) (kv.TxnResult, error)
	// Export is every live entry whose key starts with prefix, at one
	// revision, which it returns first; the sequence may end with an
	// error (a store read over a network).
	Export(ctx context.Context, prefix string) (int64, iter.Seq2[kv.Entry, error], error)
	// Revision is the revision of the last change visible to readers.
	Revision() int64
	// Err is why the store refuses writes, or nil when it accepts them.
	Err() error
	Stats() *kv.Stats
	Close() error
}

// api serves the HTTP interface of a store.
type api struct {
	store   store
	cfg     *Config
	logger  *slog.Logger
	access  *accessLine
	metrics *metrics
	auth    *authz // nil: access control is off

	stopping context.Context // done when the server shuts down
	streams  *sse.Pool       // serves the streams of HTTP/1.1 connections it takes over
	subs     chan struct{}   // one token per open stream; capacity -max-subscribers
	subsByIP *ipCounter      // open streams per client address
	globs    *globCounter    // distinct glob segments per client address
	writes   *rateLimiter    // writes per client address; nil: no limit
}

// newAPI returns the API of s. Its streams end when stopping ends, and
// streams serves those whose connections it takes over.
func newAPI(s store, cfg *Config, logger *slog.Logger, m *metrics, stopping context.Context, streams *sse.Pool) *api {
	return &api{
		stopping: stopping,
		store:    s,
		cfg:      cfg,
		logger:   logger,
		metrics:  m,
		streams:  streams,
		subs:     make(chan struct{}, cfg.MaxSubscribers),
		subsByIP: newIPCounter(cfg.MaxSubscribersPerIP),
		globs:    newGlobCounter(cfg.MaxGlobsPerIP),
		writes:   newRateLimiter(cfg.WriteRate, cfg.WriteBurst, maxRateBuckets, time.Now),
	}
}

func (a *api) handleHealth(w http.ResponseWriter, r *http.Request) {
	select {
	case <-a.stopping.Done():
		writeError(w, r, a.logger, errShuttingDown)
		return
	default:
	}
	if err := a.store.Err(); err != nil {
		writeError(w, r, a.logger, err)
		return
	}
	writeJSON(w, http.StatusOK, fmt.Appendf(nil, `{"status":"ok","backend":%q,"revision":%d}`, a.cfg.Backend, a.store.Revision()))
}

func etag(rev int64) string { return `"` + strconv.FormatInt(rev, 10) + `"` }

// parseETag reads one entity tag holding a revision: "42" as RFC 9110
// has it, or the bare number 42, which people type by hand; If-Match and
// If-None-Match accept both alike.
func parseETag(s string) (int64, bool) {
	s = strings.TrimSpace(s)
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		s = s[1 : len(s)-1]
	}
	if s == "" || s[0] < '0' || s[0] > '9' {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil && n > 0
}

func (a *api) handleGet(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	e, err := a.store.Get(r.Context(), key)
	if err != nil {
		writeError(w, r, a.logger, err)
		return
	}
	tag := etag(e.Revision)
	if inm := r.Header.Get("If-None-Match"); inm != "" && etagMatches(inm, e.Revision) {
		setHeaders(w.Header(), "Etag", tag)
		w.WriteHeader(http.StatusNotModified)
		return
	}
	setHeaders(w.Header(), "Etag", tag,
		"Content-Type", e.ContentType,
		"Content-Length", strconv.Itoa(len(e.Value)),
		// A stored value is the user's bytes, not part of this site:
		// browsers must neither sniff it nor run it with the site's rights.
		"X-Content-Type-Options", "nosniff",
		"Content-Security-Policy", "default-src 'none'; sandbox")
	w.WriteHeader(http.StatusOK)
	w.Write(e.Value)
}

// etagMatches reports whether an If-None-Match list names rev (or is *).
func etagMatches(list string, rev int64) bool {
	for _, t := range strings.Split(list, ",") {
		t = strings.TrimSpace(t)
		if t == "*" {
			return true
		}
		t = strings.TrimPrefix(t, "W/")
		if n, ok := parseETag(t); ok && n == rev {
			return true
		}
	}
	return false
}

// writeCond reads a write's precondition from If-Match / If-None-Match.
func writeCond(r *http.Request, allowAbsent bool) (kv.Cond, error) {
	im, inm := r.Header.Get("If-Match"), r.Header.Get("If-None-Match")
	switch {
	case im != "" && inm != "":
		return kv.Cond{}, badParam("give If-Match or If-None-Match, not both")
	case im == "*":
		return kv.IfExists(), nil
	case im != "":
		rev, ok := parseETag(im)
		if !ok {
			return kv.Cond{}, badParam(`If-Match must be one revision, like "42" (or 42), or *`)
		}
		return kv.IfRevision(rev), nil
	case inm == "*" && allowAbsent:
		return kv.IfAbsent(), nil
	case inm != "":
		return kv.Cond{}, badParam("If-None-Match on a write accepts only * (create only), and only on PUT")
	}
	return kv.Cond{}, nil
}

// parseTTL reads a positive Go duration or a positive number of seconds.
func parseTTL(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		f, ferr := strconv.ParseFloat(s, 64)
		if ferr != nil || f > 1e9 {
			return 0, badParam("ttl must be a positive Go duration (30s, 5m) or a number of seconds")
		}
		d = time.Duration(f * float64(time.Second))
	}
	if d <= 0 {
		return 0, badParam("ttl must be positive")
	}
	return d, nil
}

// writeTarget reads what every write of a key starts with: the client's
// rate, the key, and its precondition (If-None-Match: * only when
// allowAbsent). When one fails, it has answered, and ok is false.
func (a *api) writeTarget(w http.ResponseWriter, r *http.Request, allowAbsent bool) (key string, cond kv.Cond, ok bool) {
	if !a.allowWrite(w, r) {
		return "", cond, false
	}
	key = r.PathValue("key")
	err := kv.ValidateKey(key)
	if err == nil {
		cond, err = writeCond(r, allowAbsent)
	}
	if err != nil {
		writeError(w, r, a.logger, err)
		return "", cond, false
	}
	return key, cond, true
}

func (a *api) handlePut(w http.ResponseWriter, r *http.Request) {
	key, cond, ok := a.writeTarget(w, r, true)
	if !ok {
		return
	}
	var err error
	var ttl time.Duration
	if r.URL.RawQuery != "" {
		ttl, err = parseTTL(r.URL.Query().Get("ttl"))
	}
	if err != nil {
		writeError(w, r, a.logger, err)
		return
	}
	ctype := r.Header.Get("Content-Type")
	if ctype == "" {
		ctype = "application/octet-stream"
	} else if err := checkContentType(ctype); err != nil {
		writeError(w, r, a.logger, err)
		return
	}
	if r.ContentLength > a.cfg.MaxValue {
		writeError(w, r, a.logger, fmt.Errorf("%w: the value's %d bytes are over the limit of %d (-max-value)", errTooLarge, r.ContentLength, a.cfg.MaxValue))
		return
	}
	http.NewResponseController(w).SetReadDeadline(time.Now().Add(time.Minute))
	body := r.Body // with a Content-Length, it ends there, and that is at most maxValue
	if r.ContentLength < 0 {
		body = http.MaxBytesReader(w, r.Body, a.cfg.MaxValue)
	}
	value, err := readBody(body, r.ContentLength)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			err = fmt.Errorf("%w: the value is over the limit of %d bytes (-max-value)", errTooLarge, a.cfg.MaxValue)
		} else {
			err = badParam("reading the body: " + err.Error())
		}
		writeError(w, r, a.logger, err)
		return
	}
	res, err := a.store.Put(r.Context(), key, value, kv.PutOptions{ContentType: ctype, TTL: ttl, Cond: cond})
	if err != nil {
		writeError(w, r, a.logger, err)
		return
	}
	status := http.StatusOK
	if res.Created() {
		status = http.StatusCreated
	}
	a.writeWritten(w, status, key, res.Revision)
}

// readBody reads a request body of n bytes (n < 0: unknown) into a slice
// of exactly its size: the store keeps it as the value.
func readBody(body io.Reader, n int64) ([]byte, error) {
	if n < 0 {
		return io.ReadAll(body)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(body, b); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return b, nil
}

func (a *api) writeWritten(w http.ResponseWriter, status int, key string, rev int64) {
	setHeaders(w.Header(), "Etag", etag(rev), "Kvsse-Revision", strconv.FormatInt(rev, 10))
	if status == http.StatusNoContent {
		w.WriteHeader(status)
		return
	}
	b := sse.AppendString([]byte(`{"key":`), key)
	b = append(b, `,"revision":`...)
	b = strconv.AppendInt(b, rev, 10)
	writeJSON(w, status, append(b, '}'))
}

func (a *api) handleDelete(w http.ResponseWriter, r *http.Request) {
	key, cond, ok := a.writeTarget(w, r, false)
	if !ok {
		return
	}
	res, err := a.store.Delete(r.Context(), key, cond)
	if err != nil {
		writeError(w, r, a.logger, err)
		return
	}
	w.Header().Set("Kvsse-Revision", strconv.FormatInt(res.Revision, 10))
	w.WriteHeader(http.StatusNoContent)
}

func writeJSON(w http.ResponseWriter, status int, body []byte) {
	setHeaders(w.Header(), "Content-Type", "application/json", "Content-Length", strconv.Itoa(len(body)+1))
	w.WriteHeader(status)
	w.Write(append(body, '\n'))
}

// setHeaders sets headers from pairs of a canonical key (as
// textproto.CanonicalMIMEHeaderKey gives it: "Etag") and a value, with
// one allocation for all the values. Header.Set canonicalises each key
// and allocates each value; on GET and PUT, which set four or five, that
// showed in the profile.
func setHeaders(h http.Header, pairs ...string) {
	vals := make([]string, len(pairs)/2)
	for i := range vals {
		vals[i] = pairs[2*i+1]
		h[pairs[2*i]] = vals[i : i+1 : i+1]
	}
}
