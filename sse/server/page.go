package server

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"strings"
	"sync"
	"time"
)

// indexHTML is the built-in web page: one self-contained file with its
// style and script inline, so it works offline and needs no build step.
//
//go:embed web/index.html
var indexHTML []byte

// builtPage is index.html with the headers it is served with.
type builtPage struct {
	body []byte
	etag string
	csp  string
}

// thePage builds the page once: the Content-Security-Policy allows
// exactly the inline <script> and <style> of index.html by their SHA-256,
// and nothing from anywhere else but the server's own API.
var thePage = sync.OnceValue(func() builtPage {
	sum := sha256.Sum256(indexHTML)
	return builtPage{
		body: indexHTML,
		etag: `"page-` + hex.EncodeToString(sum[:8]) + `"`,
		csp:  pageCSP(indexHTML),
	}
})

// pageCSP is the Content-Security-Policy of page: no source at all by
// default; its inline scripts and styles by hash; fetch and EventSource to
// this server only; images from here or data: URLs (the icon); no <base>,
// no form submission, no framing, and Trusted Types required, so that no
// string can ever reach innerHTML or another HTML sink.
func pageCSP(page []byte) string {
	return strings.Join([]string{
		"default-src 'none'",
		"script-src " + strings.Join(inlineHashes(page, "script"), " "),
		"style-src " + strings.Join(inlineHashes(page, "style"), " "),
		"connect-src 'self'",
		"img-src 'self' data:",
		"base-uri 'none'",
		"form-action 'none'",
		"frame-ancestors 'none'",
		"require-trusted-types-for 'script'",
		"trusted-types 'none'",
	}, "; ")
}

// inlineHashes returns the CSP hash sources ('sha256-...') of the text of
// every <tag> element (written exactly so, with no attributes) in page,
// or 'none' when there is none.
func inlineHashes(page []byte, tag string) []string {
	open, end := []byte("<"+tag+">"), []byte("</"+tag+">")
	var out []string
	for {
		i := bytes.Index(page, open)
		if i < 0 {
			break
		}
		page = page[i+len(open):]
		j := bytes.Index(page, end)
		if j < 0 {
			break
		}
		sum := sha256.Sum256(page[:j])
		out = append(out, "'sha256-"+base64.StdEncoding.EncodeToString(sum[:])+"'")
		page = page[j+len(end):]
	}
	if len(out) == 0 {
		return []string{"'none'"}
	}
	return out
}

// handlePage serves the built-in web page at GET /. The page reads its
// pattern from ?pattern= itself.
func (a *api) handlePage(w http.ResponseWriter, r *http.Request) {
	p := thePage()
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", p.csp)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", p.etag)
	http.ServeContent(w, r, "index.html", time.Time{}, bytes.NewReader(p.body))
}
