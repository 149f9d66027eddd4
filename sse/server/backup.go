package server

import (
	"bufio"
	"fmt"
	"net/http"
	"strconv"

	"kvsse/kv"
	"kvsse/sse"
)

// errNotImplemented is a route the backend cannot serve.
var errNotImplemented = fmt.Errorf("not implemented")

// backuper is a store that can copy itself whole at one revision: the
// embedded store. etcd has its own tool for that.
type backuper interface {
	Backup() *kv.Backup
}

// handleBackup is GET /backup: the backup file of the whole store at one
// revision (Kvsse-Revision), streamed while writes go on. A copy that
// cannot be sent whole ends with the connection cut: the file then lacks
// its trailer, and restore refuses it.
func (a *api) handleBackup(w http.ResponseWriter, r *http.Request) {
	b, ok := a.store.(backuper)
	if !ok {
		writeError(w, r, a.logger, fmt.Errorf("%w: with -backend %s the data is etcd's: back it up with 'etcdctl snapshot save FILE' (GET /kv?format=ndjson, kvsse export, gives its keys)", errNotImplemented, a.cfg.Backend))
		return
	}
	bk := b.Backup()
	rev := strconv.FormatInt(bk.Revision, 10)
	setHeaders(w.Header(), "Content-Type", "application/octet-stream", "Kvsse-Revision", rev,
		"Content-Disposition", `attachment; filename="kvsse-`+rev+`.backup"`, "Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	if n, err := bk.WriteTo(w); err != nil {
		a.logger.Warn("backup not sent whole", "revision", bk.Revision, "bytes", n, "err", err)
	}
}

// handleExport is GET /kv?prefix=P&format=ndjson: every live key that
// starts with P, read at one revision (Kvsse-Revision), one JSON object a
// line as in listings, streamed. With -auth only the keys the token may
// read are sent. An export that fails half way (etcd lost) ends with the
// connection cut, so that the client sees an error and not a short list.
func (a *api) handleExport(w http.ResponseWriter, r *http.Request, prefix string) {
	rev, entries, err := a.store.Export(r.Context(), prefix)
	if err != nil {
		writeError(w, r, a.logger, err)
		return
	}
	g := grantOf(r)
	setHeaders(w.Header(), "Content-Type", "application/x-ndjson", "Kvsse-Revision", strconv.FormatInt(rev, 10), "Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 64<<10)
	var b []byte
	for e, err := range entries {
		if err != nil {
			a.logger.Error("export cut short", "revision", rev, "err", err)
			bw.Flush()
			panic(http.ErrAbortHandler)
		}
		if g != nil && !g.mayRead(e.Key) {
			continue
		}
		b = append(sse.AppendEntry(b[:0], &e, true), '\n')
		if _, err := bw.Write(b); err != nil {
			return // the client is gone
		}
	}
	bw.Flush()
}
