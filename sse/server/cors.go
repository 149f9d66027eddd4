package server

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
)

// errCrossOrigin is a browser request from another origin that the server
// refuses: a state-changing request from a site that is neither this
// server's nor listed in -cors-origins, or a preflight from such a site.
var errCrossOrigin = errors.New("cross-origin request refused")

// CORS answers for listed origins.
const (
	corsAllowMethods  = "GET, HEAD, PUT, DELETE, POST"
	corsAllowHeaders  = "If-Match, If-None-Match, Last-Event-ID, Authorization, Content-Type"
	corsExposeHeaders = "ETag, Kvsse-Revision"
	corsMaxAge        = "600" // seconds a browser may cache a preflight answer
)

// originList is the -cors-origins flag: a comma-separated list of exact
// origins ("https://app.example.com", "http://localhost:5173"). Set
// checks every origin, so that a typo fails at start-up.
type originList string

func (o *originList) String() string { return string(*o) }

func (o *originList) Set(s string) error {
	if _, err := parseOrigins(s); err != nil {
		return err
	}
	*o = originList(s)
	return nil
}

// parseOrigins splits a -cors-origins list into origins as browsers send
// them in the Origin header: scheme://host[:port], in lower case, with no
// path. Empty items are skipped.
func parseOrigins(s string) ([]string, error) {
	var out []string
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		if item == "*" || item == "null" {
			return nil, fmt.Errorf("origin %q is not allowed: list each origin, like https://app.example.com", item)
		}
		u, err := url.Parse(item)
		switch {
		case err != nil:
			return nil, fmt.Errorf("origin %q: %v", item, err)
		case u.Scheme != "http" && u.Scheme != "https", u.Host == "", u.User != nil,
			u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery || u.Opaque != "":
			return nil, fmt.Errorf("origin %q must be scheme://host[:port] with http or https and nothing after, like https://app.example.com", item)
		}
		out = append(out, strings.ToLower(u.Scheme+"://"+u.Host))
	}
	return out, nil
}

// crossOrigin applies the -cors-origins rules before next sees a request:
//
//   - For a listed Origin, every response carries
//     Access-Control-Allow-Origin (that origin), -Allow-Credentials and
//     -Expose-Headers; when any origin is listed, every response carries
//     Vary: Origin, so that caches keep the answers apart.
//   - A preflight (OPTIONS with Origin and Access-Control-Request-Method)
//     from a listed origin gets 204 with the methods and headers of the
//     API. A preflight from any other origin gets 403 JSON (code
//     "cross_origin") rather than a bare 204: the browser refuses the
//     request either way, and a person debugging with curl sees why.
//   - A state-changing request (any method but GET, HEAD and OPTIONS) from
//     a browser on another site gets 403 JSON and never reaches next:
//     Sec-Fetch-Site other than same-origin or none, or, from browsers
//     without Sec-Fetch-Site, an Origin whose host differs from the
//     request's Host (or an http:// Origin on a TLS connection), unless
//     the Origin is listed. Requests with neither header (curl, scripts)
//     pass.
//
// An invalid list (only possible when cfg was not built by parseFlags) is
// logged and the invalid origins are ignored.
func crossOrigin(list string, logger *slog.Logger, next http.Handler) http.Handler {
	allowed := map[string]bool{}
	for _, item := range strings.Split(list, ",") {
		origins, err := parseOrigins(item)
		if err != nil {
			logger.Error("ignoring an invalid -cors-origins entry", "err", err)
		}
		for _, o := range origins {
			allowed[o] = true
		}
	}
	// Go's check covers Sec-Fetch-Site and the Origin/Host comparison;
	// listed origins are let through before it is asked.
	cop := http.NewCrossOriginProtection()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		listed := origin != "" && allowed[origin]
		h := w.Header()
		if len(allowed) > 0 {
			h.Add("Vary", "Origin")
		}
		if listed {
			h.Set("Access-Control-Allow-Origin", origin)
			h.Set("Access-Control-Allow-Credentials", "true")
			h.Set("Access-Control-Expose-Headers", corsExposeHeaders)
		}
		if r.Method == http.MethodOptions && origin != "" && r.Header.Get("Access-Control-Request-Method") != "" {
			if !listed {
				writeError(w, r, logger, fmt.Errorf("%w: origin %q is not listed in -cors-origins", errCrossOrigin, origin))
				return
			}
			h.Set("Access-Control-Allow-Methods", corsAllowMethods)
			h.Set("Access-Control-Allow-Headers", corsAllowHeaders)
			h.Set("Access-Control-Max-Age", corsMaxAge)
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if !listed {
			if err := checkSameOrigin(cop, r); err != nil {
				writeError(w, r, logger, err)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// checkSameOrigin refuses a state-changing request that a browser sent
// from another origin than the server's own.
func checkSameOrigin(cop *http.CrossOriginProtection, r *http.Request) error {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return nil
	}
	origin := r.Header.Get("Origin")
	// Go compares the Origin's host with Host only; an http:// page must
	// not write to a TLS server either.
	downgrade := r.TLS != nil && r.Header.Get("Sec-Fetch-Site") == "" && strings.HasPrefix(strings.ToLower(origin), "http:")
	if err := cop.Check(r); err == nil && !downgrade {
		return nil
	}
	if origin == "" {
		return fmt.Errorf("%w: %s from another site (Sec-Fetch-Site: %s)", errCrossOrigin, r.Method, r.Header.Get("Sec-Fetch-Site"))
	}
	return fmt.Errorf("%w: %s from origin %q, which is neither this server's nor listed in -cors-origins", errCrossOrigin, r.Method, origin)
}
