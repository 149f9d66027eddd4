package server

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"

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
	g := grantOf(r)
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

// grantOf is the grant of r's token, which the guard found; nil when
// access control is off.
func grantOf(r *http.Request) *grant {
	g, _ := r.Context().Value(grantKey{}).(*grant)
	return g
}

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
		if key == "" && (n == needRead || n == needWrite) {
			n = needToken // no key: the handler's 400
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
