package server

import (
	"fmt"
	"io"
	"net/http"
)

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
