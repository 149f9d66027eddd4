package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"kvsse/kv"
)

// Errors of access control (-auth).
var (
	errUnauthorized = errors.New("unauthorized")
	errForbidden    = errors.New("forbidden")
)

const (
	// sessionCookie holds a token for browsers; POST /auth/session sets it.
	sessionCookie = "kvsse_token"
	// accessTokenParam holds a token in the query string of /watch, for
	// clients that can set neither a header nor a cookie. It is never
	// written to a log (see redactQuery).
	accessTokenParam = "access_token"
)

// grant is one token of the auth file: its name, the SHA-256 of the token
// and the keys it may read and write. A grant is never changed after
// parseAuthFile made it.
type grant struct {
	name   string
	digest [sha256.Size]byte
	read   []kv.Pattern
	write  []kv.Pattern
}

func matchesAny(ps []kv.Pattern, key string) bool {
	return slices.ContainsFunc(ps, func(p kv.Pattern) bool { return p.Match(key) })
}

func (g *grant) mayRead(key string) bool  { return matchesAny(g.read, key) }
func (g *grant) mayWrite(key string) bool { return matchesAny(g.write, key) }

// mayWatch reports whether every key q matches lies inside g's read
// patterns: some read pattern contains q.
func (g *grant) mayWatch(q kv.Pattern) bool {
	return slices.ContainsFunc(g.read, func(p kv.Pattern) bool { return p.Contains(q) })
}

var everyKey, _ = kv.ParsePattern("**")

// readsAll reports whether g may read every key.
func (g *grant) readsAll() bool { return g.mayWatch(everyKey) }

// tokenSet is the content of one auth file. It is never changed once
// made, so it is safe for concurrent use.
type tokenSet struct {
	grants []grant
	byName map[string]*grant
}

// lookup returns the grant of token, or nil. It hashes token and compares
// the digest with every grant's in constant time, with no early exit, so
// that its timing tells neither which token matched nor how long any is.
func (s *tokenSet) lookup(token string) *grant {
	if token == "" {
		return nil
	}
	sum := sha256.Sum256([]byte(token))
	found := -1
	for i := range s.grants {
		eq := subtle.ConstantTimeCompare(sum[:], s.grants[i].digest[:])
		found = subtle.ConstantTimeSelect(eq, i, found)
	}
	if found < 0 {
		return nil
	}
	return &s.grants[found]
}

// tokenJSON is one entry of the auth file.
type tokenJSON struct {
	Name   string   `json:"name"`
	Token  string   `json:"token"`
	SHA256 string   `json:"sha256"`
	Read   []string `json:"read"`
	Write  []string `json:"write"`
}

// decodeStrict decodes exactly one JSON value from data into v, refusing
// unknown fields (a misspelt "reads" must not silently grant nothing).
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the JSON object")
	}
	return nil
}

// parseAuthFile parses and checks the JSON of an auth file:
//
//	{"tokens": [{"name": "deployer", "token": "...", "read": ["**"], "write": ["config/**"]}]}
//
// Each entry needs a unique, non-empty name without control characters,
// and exactly one of "token" (the token in clear: printable, no spaces) and
// "sha256" (64 hex digits); "read" and "write" are lists of patterns (see
// kv.ParsePattern). No two entries may hold the same token. Errors name
// the entry, as tokens[i] "name".
func parseAuthFile(data []byte) (*tokenSet, error) {
	var file struct {
		Tokens []json.RawMessage `json:"tokens"`
	}
	if err := decodeStrict(data, &file); err != nil {
		return nil, fmt.Errorf("not valid JSON of the form {\"tokens\":[...]}: %w", err)
	}
	if file.Tokens == nil {
		return nil, errors.New(`no "tokens" list`)
	}
	s := &tokenSet{grants: make([]grant, len(file.Tokens)), byName: map[string]*grant{}}
	byDigest := map[[sha256.Size]byte]string{}
	for i, raw := range file.Tokens {
		var t tokenJSON
		err := decodeStrict(raw, &t)
		where := fmt.Sprintf("tokens[%d]", i)
		if t.Name != "" {
			where += fmt.Sprintf(" %q", t.Name)
		}
		if err == nil {
			s.grants[i], err = t.grant()
		}
		if err == nil && s.byName[t.Name] != nil {
			err = errors.New("the name is used twice")
		}
		if other, dup := byDigest[s.grants[i].digest]; err == nil && dup {
			err = fmt.Errorf("the same token as %q", other)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		s.byName[t.Name] = &s.grants[i]
		byDigest[s.grants[i].digest] = t.Name
	}
	return s, nil
}

// grant checks one entry of the auth file and makes its grant.
func (t *tokenJSON) grant() (grant, error) {
	g := grant{name: t.Name}
	switch {
	case t.Name == "":
		return g, errors.New(`"name" is missing or empty`)
	case !utf8.ValidString(t.Name) || strings.ContainsFunc(t.Name, isControl):
		return g, errors.New(`"name" must be UTF-8 without control characters`)
	case (t.Token == "") == (t.SHA256 == ""):
		return g, errors.New(`give exactly one of "token" (the token in clear) and "sha256" (its SHA-256 in hex)`)
	case t.Token != "":
		for i := 0; i < len(t.Token); i++ {
			if c := t.Token[i]; c <= ' ' || c == 0x7f {
				return g, errors.New(`"token" must not hold spaces or control characters`)
			}
		}
		g.digest = sha256.Sum256([]byte(t.Token))
	default:
		b, err := hex.DecodeString(t.SHA256)
		if err != nil || len(b) != sha256.Size {
			return g, fmt.Errorf(`"sha256" must be 64 hex digits, got %d characters`, len(t.SHA256))
		}
		copy(g.digest[:], b)
	}
	var err error
	if g.read, err = parsePatterns("read", t.Read); err == nil {
		g.write, err = parsePatterns("write", t.Write)
	}
	return g, err
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

func parsePatterns(field string, raw []string) ([]kv.Pattern, error) {
	ps := make([]kv.Pattern, 0, len(raw))
	for i, s := range raw {
		p, err := kv.ParsePattern(s)
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %w", field, i, err)
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// readAuthFile reads and parses the auth file at path; its errors name
// the file.
func readAuthFile(path string) (*tokenSet, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		var s *tokenSet
		if s, err = parseAuthFile(data); err == nil {
			return s, nil
		}
	}
	return nil, fmt.Errorf("auth file %s: %w", path, err)
}

// authz enforces -auth: it holds the tokens of the file and the open
// streams, so that a reload can end the streams whose token lost the
// right to them. Its methods are safe for concurrent use. A nil *authz
// means access control is off: guard, track and reloadOn accept it and
// then allow everything.
type authz struct {
	path   string
	logger *slog.Logger
	set    atomic.Pointer[tokenSet] // read without mu; stored with mu held

	mu       sync.Mutex // guards watchers and orders the stores of set
	watchers map[*watcher]struct{}
}

// watcher is an open stream: the token it proved and what it watches.
type watcher struct {
	name     string
	digest   [sha256.Size]byte
	patterns []kv.Pattern
	revoke   context.CancelFunc // called, with the watcher removed, when the token lost the right
}

// loadAuth reads the -auth file; it returns nil (access control off) when
// cfg names none.
func loadAuth(cfg *Config, logger *slog.Logger) (*authz, error) {
	if cfg.Auth == "" {
		return nil, nil
	}
	s, err := readAuthFile(cfg.Auth)
	if err != nil {
		return nil, err
	}
	az := &authz{path: cfg.Auth, logger: logger, watchers: map[*watcher]struct{}{}}
	az.set.Store(s)
	logger.Info("access control on", "file", cfg.Auth, "tokens", len(s.grants))
	return az, nil
}

// warnIfOpen logs a warning when access control is off and addr is not a
// loopback address, so that anyone on the network could read and write.
func warnIfOpen(logger *slog.Logger, az *authz, addr net.Addr) {
	if tcp, ok := addr.(*net.TCPAddr); az != nil || ok && tcp.IP.IsLoopback() {
		return
	}
	logger.Warn("no access control (-auth) on a non-loopback address: anyone who can reach it may read and write every key", "addr", addr.String())
}

// reload reads the file again. When it is valid, its tokens replace the
// old ones at once and every stream whose token was removed, changed its
// secret, or may no longer read all the stream's patterns ends; other
// streams stay open. When it is not, the old tokens stay and the error is
// logged and returned.
func (az *authz) reload() error {
	s, err := readAuthFile(az.path)
	if err != nil {
		az.logger.Error("auth reload failed; the tokens loaded before stay in force", "err", err)
		return err
	}
	az.mu.Lock()
	az.set.Store(s)
	ended := 0
	for w := range az.watchers {
		if s.permits(w) != nil {
			w.revoke()
			delete(az.watchers, w)
			ended++
		}
	}
	az.mu.Unlock()
	az.logger.Info("auth file reloaded", "file", az.path, "tokens", len(s.grants), "streams_ended", ended)
	return nil
}

// reloadOn reloads the file on each of sigs until stop is called. stop
// waits for a reload under way and is idempotent. On a nil *authz it does
// nothing, so a SIGHUP keeps its default action.
func (az *authz) reloadOn(sigs ...os.Signal) (stop func()) {
	if az == nil {
		return func() {}
	}
	c := make(chan os.Signal, 1)
	signal.Notify(c, sigs...)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-c:
				az.reload()
			case <-done:
				return
			}
		}
	})
	return sync.OnceFunc(func() {
		signal.Stop(c)
		close(done)
		wg.Wait()
	})
}

// permits checks that w's token is still in s, with the same secret, and
// may still read every pattern of w.
func (s *tokenSet) permits(w *watcher) error {
	g := s.byName[w.name]
	if g == nil || g.digest != w.digest {
		return fmt.Errorf("%w: token %q was removed or replaced", errUnauthorized, w.name)
	}
	for _, p := range w.patterns {
		if !g.mayWatch(p) {
			return fmt.Errorf("%w: token %q may not read every key of %q", errForbidden, g.name, p)
		}
	}
	return nil
}

// track registers a stream of r on patterns, which the guard let through,
// and returns the context that is done when its token loses the right to
// it (a context, so that a stream served without a goroutine of its own
// can be told), and the function to call when the stream ends. It checks
// the patterns again against the current tokens, in case a reload came
// between. With access control off it returns a nil context.
func (az *authz) track(r *http.Request, patterns []kv.Pattern) (revoked context.Context, untrack func(), err error) {
	if az == nil {
		return nil, func() {}, nil
	}
	g, _ := r.Context().Value(grantKey{}).(*grant)
	if g == nil {
		return nil, nil, fmt.Errorf("%w: no token", errUnauthorized)
	}
	revoked, revoke := context.WithCancel(context.Background())
	w := &watcher{name: g.name, digest: g.digest, patterns: patterns, revoke: revoke}
	az.mu.Lock()
	defer az.mu.Unlock()
	if err := az.set.Load().permits(w); err != nil {
		revoke()
		return nil, nil, err
	}
	az.watchers[w] = struct{}{}
	return revoked, func() {
		az.mu.Lock()
		delete(az.watchers, w)
		az.mu.Unlock()
		revoke()
	}, nil
}

// grantKey is the context key of the *grant of an authenticated request.
type grantKey struct{}

// guard checks the token of every request before next sees it: it
// finds the request's route in the table, and what the route needs (see
// need): no or an unknown token is 401, a known token asking for keys
// outside its patterns 403. next finds the token's *grant in the
// request's context. On a nil *authz guard returns next.
func (az *authz) guard(rt *router, next http.Handler) http.Handler {
	if az == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
			next.ServeHTTP(w, r) // a preflight carries no credentials
			return
		}
		n, key, pattern := needToken, "", ""
		if e, rest, ok := rt.lookup(r); ok {
			n, key, pattern = e.need, rest, e.pattern
		}
		if n == needNothing {
			next.ServeHTTP(w, r)
			return
		}
		g, err := az.authenticate(r, isWatch(pattern))
		if err == nil {
			err = authorize(g, n, key, r)
		}
		if err != nil {
			status, code := errorStatus(err)
			az.logger.Debug("request refused", "method", r.Method, "route", pattern, "status", status, "code", code)
			writeError(w, r, az.logger, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), grantKey{}, g)))
	})
}

// isWatch reports whether the route pattern is a stream's.
func isWatch(pattern string) bool { return strings.HasPrefix(pattern, "GET /watch") }

// presented returns the token r carries: the Authorization: Bearer header
// wins over the cookie, which wins over ?access_token= (on a stream's
// route only).
func presented(r *http.Request, watch bool) string {
	if scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
		return strings.TrimSpace(tok)
	}
	if c, err := r.Cookie(sessionCookie); err == nil && c.Value != "" {
		return c.Value
	}
	if watch {
		return r.URL.Query().Get(accessTokenParam)
	}
	return ""
}

// authenticate returns the grant of the token r carries; watch says that
// r is a stream's, which may carry it as ?access_token=.
func (az *authz) authenticate(r *http.Request, watch bool) (*grant, error) {
	tok := presented(r, watch)
	if tok == "" {
		hint := "send a token as Authorization: Bearer <token>, or as the kvsse_token cookie (POST /auth/session)"
		if r.URL.Query().Has(accessTokenParam) {
			hint = "access_token is accepted on /watch only; " + hint
		}
		return nil, fmt.Errorf("%w: %s", errUnauthorized, hint)
	}
	if g := az.set.Load().lookup(tok); g != nil {
		return g, nil
	}
	return nil, fmt.Errorf("%w: unknown token", errUnauthorized)
}

// authorize checks that g may do what n says.
func authorize(g *grant, n need, key string, r *http.Request) error {
	switch n {
	case needReadAll:
		if !g.readsAll() {
			return fmt.Errorf(`%w: token %q may not read %s: it needs the read pattern "**"`, errForbidden, g.name, r.URL.Path)
		}
	case needRead:
		if !g.mayRead(key) {
			return fmt.Errorf("%w: token %q may not read %q", errForbidden, g.name, key)
		}
	case needWrite:
		if !g.mayWrite(key) {
			return fmt.Errorf("%w: token %q may not write %q", errForbidden, g.name, key)
		}
	}
	return nil
}

// list is store.List for the request's token: it leaves out the keys the
// token may not read, and reads on until the page holds limit readable
// keys or the keys run out, so that next is absent exactly on the last
// page. It scans only the ranges of keys that start with the text of a
// read pattern before its first "*". When it reads more than once, the
// page is not one snapshot: its revision is the last read's.
func (a *api) list(r *http.Request, prefix, after string, limit int) (kv.Page, error) {
	g, _ := r.Context().Value(grantKey{}).(*grant)
	if g == nil || g.readsAll() {
		return a.store.List(r.Context(), prefix, after, limit)
	}
	var out kv.Page
	for _, rp := range scanPrefixes(prefix, g.read) {
		cursor, batch := after, limit+1
		for {
			p, err := a.store.List(r.Context(), rp, cursor, batch)
			if err != nil {
				return kv.Page{}, err
			}
			out.Revision = max(out.Revision, p.Revision)
			for _, e := range p.Items {
				if !g.mayRead(e.Key) {
					continue
				}
				if len(out.Items) == limit {
					out.Next = out.Items[limit-1].Key
					return out, nil
				}
				out.Items = append(out.Items, e)
			}
			if p.Next == "" {
				break
			}
			cursor, batch = p.Next, min(2*batch, 4096)
		}
	}
	if out.Revision == 0 {
		out.Revision = a.store.Revision()
	}
	return out, nil
}

// scanPrefixes returns, in byte order and with none a prefix of another,
// the prefixes whose keys hold every key that starts with prefix and
// matches one of ps. Listing each in turn lists those keys in byte order.
func scanPrefixes(prefix string, ps []kv.Pattern) []string {
	var all []string
	for _, p := range ps {
		switch pp := p.Prefix(); {
		case strings.HasPrefix(pp, prefix):
			all = append(all, pp)
		case strings.HasPrefix(prefix, pp):
			all = append(all, prefix)
		}
	}
	sort.Strings(all)
	var out []string
	for _, s := range all {
		if len(out) == 0 || !strings.HasPrefix(s, out[len(out)-1]) {
			out = append(out, s)
		}
	}
	return out
}

// handleSessionStart is POST /auth/session with {"token":"..."}: for a
// known token it sets the kvsse_token cookie, which then proves the token
// like an Authorization header. The cookie lasts as long as the browser
// session (no Max-Age) and is Secure over TLS.
func (a *api) handleSessionStart(w http.ResponseWriter, r *http.Request) {
	if a.auth == nil {
		writeError(w, r, a.logger, fmt.Errorf("%w: access control is off (no -auth)", errNoRoute))
		return
	}
	var body struct {
		Token string `json:"token"`
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 8<<10))
	if err == nil {
		err = decodeStrict(data, &body)
	}
	if err != nil {
		writeError(w, r, a.logger, badParam(`the body must be {"token":"..."} (at most 8 KiB)`))
		return
	}
	if a.auth.set.Load().lookup(body.Token) == nil {
		writeError(w, r, a.logger, fmt.Errorf("%w: unknown token", errUnauthorized))
		return
	}
	if !cookieSafe(body.Token) {
		writeError(w, r, a.logger, badParam("this token holds characters that a cookie cannot carry: send it as Authorization: Bearer"))
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: body.Token, Path: "/",
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNoContent)
}

// handleSessionEnd is DELETE /auth/session: it clears the cookie.
func (a *api) handleSessionEnd(w http.ResponseWriter, r *http.Request) {
	if a.auth == nil {
		writeError(w, r, a.logger, fmt.Errorf("%w: access control is off (no -auth)", errNoRoute))
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
	w.WriteHeader(http.StatusNoContent)
}

// cookieSafe reports whether s can be a cookie's value as it is
// (RFC 6265 cookie-octets).
func cookieSafe(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || c == '"' || c == ',' || c == ';' || c == '\\' {
			return false
		}
	}
	return true
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
