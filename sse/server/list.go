package server

import (
	"net/http"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"kvsse/kv"
	"kvsse/sse"
)

const (
	defaultLimit = 100
	maxLimit     = 1000
)

func (a *api) handleList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	ndjson := false
	switch f := q.Get("format"); f {
	case "":
		ndjson = strings.Contains(r.Header.Get("Accept"), "application/x-ndjson")
	case "json":
	case "ndjson":
		ndjson = true
	default:
		writeError(w, r, a.logger, badParam("format must be json (pages) or ndjson (every key, streamed)"))
		return
	}
	if ndjson && (q.Has("limit") || q.Has("after")) {
		writeError(w, r, a.logger, badParam("format=ndjson streams every matching key at one revision: limit and after do not apply"))
		return
	}
	limit := defaultLimit
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			writeError(w, r, a.logger, badParam("limit must be a positive integer"))
			return
		}
		limit = min(n, maxLimit)
	}
	prefix, after := q.Get("prefix"), q.Get("after")
	if len(prefix) > 1024 || len(after) > 1024 || !utf8.ValidString(prefix) || !utf8.ValidString(after) {
		writeError(w, r, a.logger, badParam("prefix and after must be valid UTF-8 of at most 1024 bytes"))
		return
	}
	if ndjson {
		a.handleExport(w, r, prefix)
		return
	}
	page, err := a.list(r, prefix, after, limit)
	if err != nil {
		writeError(w, r, a.logger, err)
		return
	}
	b := append(make([]byte, 0, 256), `{"revision":`...)
	b = strconv.AppendInt(b, page.Revision, 10)
	b = append(b, `,"items":[`...)
	for i := range page.Items {
		if i > 0 {
			b = append(b, ',')
		}
		b = sse.AppendEntry(b, &page.Items[i], true)
	}
	b = append(b, ']')
	if page.Next != "" {
		b = append(b, `,"next":`...)
		b = sse.AppendString(b, page.Next)
	}
	writeJSON(w, http.StatusOK, append(b, '}'))
}

// list is store.List for the request's token: it leaves out the keys the
// token may not read, and reads on until the page holds limit readable
// keys or the keys run out, so that next is absent exactly on the last
// page. It scans only the ranges of keys that start with the text of a
// read pattern before its first "*". When it reads more than once, the
// page is not one snapshot: its revision is the last read's.
func (a *api) list(r *http.Request, prefix, after string, limit int) (kv.Page, error) {
	g := grantOf(r)
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
