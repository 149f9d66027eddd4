package server

import (
	"net/http"
	"path"
	"slices"
	"strings"

	"kvsse/kv"
)

// A route is one entry of the route table: a ServeMux pattern, what a
// request on it must prove when access control is on, and its handler.
type route struct {
	pattern string // "GET /kv/{key...}"; no method: every method not matched before
	need    need
	handle  func(*api, http.ResponseWriter, *http.Request)
}

// need is what a request must prove.
type need int

const (
	needNothing need = iota // public: the page, /healthz, sessions, preflights
	needToken               // any known token
	needReadAll             // a token that may read every key (/metrics)
	needRead                // a token that may read the key
	needWrite               // a token that may write the key
)

// routeTable is every route of the server, in one place: the router, the
// auth guard and the refusal of unclean paths all read it. Every path
// that has a route for some method answers the other methods with 405
// and Allow, never with ServeMux's redirect from /kv to /kv/. A watch
// needs only a token here: handleWatch authorizes its patterns once it
// has parsed them.
func routeTable() []route {
	allow := func(methods string) func(*api, http.ResponseWriter, *http.Request) {
		return func(a *api, w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", methods)
			writeError(w, r, a.logger, errMethod)
		}
	}
	return []route{
		{"GET /kv", needToken, (*api).handleList},
		{"GET /kv/{$}", needToken, (*api).handleList},
		{"DELETE /kv", needToken, (*api).handleDeletePrefix},
		{"/kv", needToken, allow("GET, HEAD, DELETE")},
		{"GET /kv/{key...}", needRead, (*api).handleGet},
		{"PUT /kv/{key...}", needWrite, (*api).handlePut},
		{"DELETE /kv/{key...}", needWrite, (*api).handleDelete},
		{"/kv/{key...}", needToken, allow("GET, HEAD, PUT, DELETE")},
		{"GET /watch", needToken, (*api).handleWatch},
		{"GET /watch/{pattern...}", needToken, (*api).handleWatch},
		{"/watch", needToken, allow("GET, HEAD")},
		{"/watch/{pattern...}", needToken, allow("GET, HEAD")},
		{"POST /txn", needToken, (*api).handleTxn},
		{"/txn", needToken, allow("POST")},
		{"GET /backup", needReadAll, (*api).handleBackup},
		{"/backup", needToken, allow("GET, HEAD")},
		{"GET /healthz", needNothing, (*api).handleHealth},
		{"/healthz", needNothing, allow("GET, HEAD")},
		{"POST /auth/session", needNothing, (*api).handleSessionStart},
		{"DELETE /auth/session", needNothing, (*api).handleSessionEnd},
		{"/auth/session", needNothing, allow("POST, DELETE")},
		{"GET /metrics", needReadAll, func(a *api, w http.ResponseWriter, r *http.Request) { a.metrics.ServeHTTP(w, r) }},
		{"/metrics", needToken, allow("GET, HEAD")},
		{"GET /{$}", needNothing, (*api).handlePage},
		{"/", needToken, (*api).handleNotFound},
	}
}

// router is the API's ServeMux and the table it was built from, by
// pattern.
type router struct {
	mux   *http.ServeMux
	table map[string]*route
	wild  []string // the literal prefixes of the routes that end in a wildcard: "/kv/"
}

func newRouter(a *api) *router {
	rt := &router{mux: http.NewServeMux(), table: map[string]*route{}}
	for _, e := range routeTable() {
		e := e
		rt.table[e.pattern] = &e
		rt.mux.HandleFunc(e.pattern, func(w http.ResponseWriter, r *http.Request) { e.handle(a, w, r) })
		if p, ok := e.prefix(); ok && !slices.Contains(rt.wild, p) {
			rt.wild = append(rt.wild, p)
		}
	}
	return rt
}

// prefix is the literal part of e's path before its trailing wildcard
// ({key...} or {pattern...}); ok is false when it has none.
func (e *route) prefix() (p string, ok bool) {
	_, p, _ = strings.Cut(e.pattern, " ")
	if p == "" {
		p = e.pattern
	}
	if i := strings.Index(p, "{"); i >= 0 && strings.HasSuffix(p, "...}") {
		return p[:i], true
	}
	return "", false
}

// lookup returns the route of r, without serving it, and the part of r's
// path that its wildcard takes ({key...} or {pattern...}: "" for a route
// without one). An unclean path ("//", "." or ".." segments) takes the
// route its prefix names, with the rest as it came: "/kv/a//b" is the
// key route of the method, with the key "a//b". ok is false when no route
// of the table answers r.
func (rt *router) lookup(r *http.Request) (e *route, rest string, ok bool) {
	probe := r
	if p := r.URL.Path; cleanPath(p) != p {
		i := slices.IndexFunc(rt.wild, func(w string) bool { return strings.HasPrefix(p, w) })
		if i < 0 {
			return nil, "", false
		}
		u := *r.URL
		u.Path, u.RawPath = rt.wild[i]+"x", ""
		c := *r
		c.URL = &u
		probe = &c
	}
	_, pattern := rt.mux.Handler(probe)
	if e, ok = rt.table[pattern]; !ok {
		return nil, "", false
	}
	if p, wild := e.prefix(); wild {
		rest = strings.TrimPrefix(r.URL.Path, p)
	}
	return e, rest, true
}

// routes is the API's handler: the router behind the access log, CORS,
// the auth guard and the refusal of unclean paths.
func (a *api) routes() http.Handler {
	rt := newRouter(a)
	return a.observe(rt.mux, crossOrigin(a.cfg.CORSOrigins, a.logger, a.auth.guard(rt, a.rejectUnclean(rt))))
}

// rejectUnclean answers 400 for keys and patterns in unclean paths ("//",
// "." or ".." segments, which break the key rules), where ServeMux would
// answer with a redirect to another key, and hands every other request
// to the router.
func (a *api) rejectUnclean(rt *router) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := r.URL.Path; cleanPath(p) == p {
			rt.mux.ServeHTTP(w, r)
			return
		}
		e, rest, ok := rt.lookup(r)
		switch {
		case ok && strings.HasSuffix(e.pattern, "{key...}"):
			writeError(w, r, a.logger, kv.ValidateKey(rest))
		case ok && strings.HasSuffix(e.pattern, "{pattern...}"):
			_, err := kv.ParsePattern(rest)
			writeError(w, r, a.logger, err)
		default:
			writeError(w, r, a.logger, errNoRoute)
		}
	})
}

// cleanPath is the path ServeMux would redirect p to.
func cleanPath(p string) string {
	np := path.Clean(p)
	if strings.HasSuffix(p, "/") && np != "/" {
		np += "/"
	}
	return np
}

func (a *api) handleNotFound(w http.ResponseWriter, r *http.Request) {
	writeError(w, r, a.logger, errNoRoute)
}
