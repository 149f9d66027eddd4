package server

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"kvsse/kv"
	"kvsse/sse"
)

// txnRequest is the body of POST /txn.
type txnRequest struct {
	If   []txnCond `json:"if"`
	Then []txnOp   `json:"then"`
}

// txnCond is a condition: the key at a revision (0: missing), or the key
// existing or not.
type txnCond struct {
	Key      *string `json:"key"`
	Revision *int64  `json:"revision"`
	Exists   *bool   `json:"exists"`
}

// txnOp is one change: exactly one of put, delete and delete_prefix.
type txnOp struct {
	Put          *string         `json:"put"`
	Delete       *string         `json:"delete"`
	DeletePrefix *string         `json:"delete_prefix"`
	Value        *string         `json:"value"`
	Encoding     string          `json:"encoding"`
	ContentType  string          `json:"content_type"`
	TTL          json.RawMessage `json:"ttl"`
}

// handleTxn is POST /txn: conditions and changes as one write (see
// kv.Txn). The body is read whole (at most -max-txn-bytes) and decoded
// strictly; the token's rights over every key come before any other check
// of the ops; then each op is checked, and an error names it (then[3]).
func (a *api) handleTxn(w http.ResponseWriter, r *http.Request) {
	var req txnRequest
	if err := a.readTxn(w, r, &req); err != nil {
		writeError(w, r, a.logger, err)
		return
	}
	noteOps(w, len(req.Then))
	if err := a.authorizeTxn(r, &req); err != nil {
		writeError(w, r, a.logger, err)
		return
	}
	t, err := a.txnOf(&req)
	if err != nil {
		writeError(w, r, a.logger, err)
		return
	}
	res, ok := a.commit(w, r, len(t.Then), func() (kv.TxnResult, error) {
		return a.store.Txn(r.Context(), t)
	})
	if !ok {
		return
	}
	b := append(make([]byte, 0, 64+48*len(res.Changes)), `{"revision":`...)
	b = strconv.AppendInt(b, res.Revision, 10)
	b = append(b, `,"changes":[`...)
	for i, c := range res.Changes {
		if i > 0 {
			b = append(b, ',')
		}
		b = sse.AppendString(append(b, `{"key":`...), c.Key)
		event := "put"
		if c.Op != kv.OpPut {
			event = "delete"
		}
		b = append(b, `,"event":"`...)
		b = append(b, event...)
		b = append(b, `","prev_revision":`...)
		b = strconv.AppendInt(b, c.PrevRevision, 10)
		b = append(b, '}')
	}
	writeJSON(w, http.StatusOK, append(b, "]}"...))
}

// handleDeletePrefix is DELETE /kv?prefix=P: a transaction of one
// delete_prefix.
func (a *api) handleDeletePrefix(w http.ResponseWriter, r *http.Request) {
	prefix := r.URL.Query().Get("prefix")
	if prefix == "" {
		writeError(w, r, a.logger, badParam("DELETE /kv deletes the keys starting with ?prefix=P, which must not be empty; DELETE /kv/KEY deletes one key"))
		return
	}
	if g := grantOf(r); g != nil && !g.mayWritePrefix(prefix) {
		writeError(w, r, a.logger, fmt.Errorf("%w: token %q may not write every key starting with %q: it needs the write pattern \"**\" or one like \"Q/**\" where the prefix starts with Q/", errForbidden, g.name, prefix))
		return
	}
	if err := checkPrefix(prefix); err != nil {
		writeError(w, r, a.logger, err)
		return
	}
	noteOps(w, 1)
	res, ok := a.commit(w, r, 1, func() (kv.TxnResult, error) {
		return a.store.DeletePrefix(r.Context(), prefix)
	})
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, fmt.Appendf(nil, `{"revision":%d,"deleted":%d}`, res.Revision, len(res.Changes)))
}

// commit makes a write of ops changes (a transaction, a delete of a
// prefix) once the client's write rate allows them: it counts the changes
// made and sets Kvsse-Revision for the answer. A refusal or an error it
// answers itself, and returns false.
func (a *api) commit(w http.ResponseWriter, r *http.Request, ops int, write func() (kv.TxnResult, error)) (kv.TxnResult, bool) {
	if !a.allowWrites(w, r, ops) {
		return kv.TxnResult{}, false
	}
	res, err := write()
	if err != nil {
		writeError(w, r, a.logger, err)
		return res, false
	}
	a.metrics.txn(len(res.Changes))
	w.Header().Set("Kvsse-Revision", strconv.FormatInt(res.Revision, 10))
	return res, true
}

// readTxn reads and decodes the body of POST /txn into req.
func (a *api) readTxn(w http.ResponseWriter, r *http.Request, req *txnRequest) error {
	max := a.cfg.MaxTxnBytes
	if r.ContentLength > max {
		return fmt.Errorf("%w: the transaction's %d bytes are over the limit of %d (-max-txn-bytes)", errTooLarge, r.ContentLength, max)
	}
	http.NewResponseController(w).SetReadDeadline(time.Now().Add(time.Minute))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, max))
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return fmt.Errorf("%w: the transaction is over the limit of %d bytes (-max-txn-bytes)", errTooLarge, max)
	case err != nil:
		return badParam("reading the body: " + err.Error())
	}
	return decodeTxn(body, a.cfg.MaxTxnOps, req)
}

// decodeTxn decodes the JSON of a transaction strictly (no unknown field,
// one value) into req, with at least one and at most maxOps ops.
func decodeTxn(body []byte, maxOps int, req *txnRequest) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(req); err != nil {
		return badParam(`the body must be one JSON object {"if": [...], "then": [...]}: ` + err.Error())
	}
	if dec.More() {
		return badParam("the body holds more than one JSON value")
	}
	if len(req.Then) == 0 {
		return badParam(`"then" must hold at least one op`)
	}
	if n := len(req.Then); n > maxOps {
		return fmt.Errorf("%w: %d ops, the most -max-txn-ops allows is %d", errTooLarge, n, maxOps)
	}
	return nil
}

// authorizeTxn checks the token's rights over every key of req, when
// access control is on: read for a condition, write for a put or delete,
// and for a delete_prefix a write pattern that covers every key starting
// with the prefix.
func (a *api) authorizeTxn(r *http.Request, req *txnRequest) error {
	g := grantOf(r)
	if g == nil {
		return nil
	}
	for i, c := range req.If {
		if c.Key != nil && !g.mayRead(*c.Key) {
			return fmt.Errorf("%w: if[%d]: token %q may not read %q", errForbidden, i, g.name, *c.Key)
		}
	}
	for i, op := range req.Then {
		switch {
		case op.Put != nil && !g.mayWrite(*op.Put):
			return fmt.Errorf("%w: then[%d]: token %q may not write %q", errForbidden, i, g.name, *op.Put)
		case op.Delete != nil && !g.mayWrite(*op.Delete):
			return fmt.Errorf("%w: then[%d]: token %q may not write %q", errForbidden, i, g.name, *op.Delete)
		case op.DeletePrefix != nil && !g.mayWritePrefix(*op.DeletePrefix):
			return fmt.Errorf("%w: then[%d]: token %q may not write every key starting with %q", errForbidden, i, g.name, *op.DeletePrefix)
		}
	}
	return nil
}

// txnOf checks req's conditions and ops and makes the kv.Txn of them;
// an error names the part at fault, like then[3].
func (a *api) txnOf(req *txnRequest) (kv.Txn, error) {
	var t kv.Txn
	for i, c := range req.If {
		cond, err := condOf(c)
		if err != nil {
			return t, &kv.TxnOpError{Part: "if", Index: i, Err: err}
		}
		t.If = append(t.If, kv.Compare{Key: *c.Key, Cond: cond})
	}
	for i, op := range req.Then {
		o, err := a.opOf(op)
		if err != nil {
			return t, &kv.TxnOpError{Part: "then", Index: i, Err: err}
		}
		t.Then = append(t.Then, o)
	}
	return t, nil
}

func condOf(c txnCond) (kv.Cond, error) {
	switch {
	case c.Key == nil:
		return kv.Cond{}, badParam(`a condition needs "key"`)
	case (c.Revision == nil) == (c.Exists == nil):
		return kv.Cond{}, badParam(`a condition has "revision" or "exists", one of them`)
	}
	if err := kv.ValidateKey(*c.Key); err != nil {
		return kv.Cond{}, err
	}
	switch {
	case c.Exists != nil && *c.Exists:
		return kv.IfExists(), nil
	case c.Exists != nil, *c.Revision == 0:
		return kv.IfAbsent(), nil
	case *c.Revision < 0:
		return kv.Cond{}, badParam(`"revision" must be 0 (missing) or a revision`)
	}
	return kv.IfRevision(*c.Revision), nil
}

// opOf checks one op and makes its kv.TxnOp.
func (a *api) opOf(op txnOp) (kv.TxnOp, error) {
	var o kv.TxnOp
	n := 0
	for _, k := range []*string{op.Put, op.Delete, op.DeletePrefix} {
		if k != nil {
			n++
		}
	}
	if n != 1 {
		return o, badParam(`an op has one of "put", "delete" and "delete_prefix"`)
	}
	if op.Put == nil && (op.Value != nil || op.Encoding != "" || op.ContentType != "" || op.TTL != nil) {
		return o, badParam(`"value", "encoding", "content_type" and "ttl" go with "put" only`)
	}
	switch {
	case op.Delete != nil:
		o.Kind, o.Key = kv.TxnDelete, *op.Delete
		return o, kv.ValidateKey(o.Key)
	case op.DeletePrefix != nil:
		o.Kind, o.Key = kv.TxnDeletePrefix, *op.DeletePrefix
		return o, checkPrefix(o.Key)
	}
	o.Kind, o.Key = kv.TxnPut, *op.Put
	if err := kv.ValidateKey(o.Key); err != nil {
		return o, err
	}
	if op.Value == nil {
		return o, badParam(`a put needs "value" (and "encoding": "base64" for bytes that are not UTF-8)`)
	}
	switch op.Encoding {
	case "":
		o.Value = []byte(*op.Value)
	case "base64":
		v, err := base64.StdEncoding.DecodeString(*op.Value)
		if err != nil {
			return o, badParam("the value is not valid standard base64: " + err.Error())
		}
		o.Value = v
	default:
		return o, badParam(`"encoding" is "base64" or absent`)
	}
	if int64(len(o.Value)) > a.cfg.MaxValue {
		return o, fmt.Errorf("%w: the value's %d bytes are over the limit of %d (-max-value)", errTooLarge, len(o.Value), a.cfg.MaxValue)
	}
	o.ContentType = op.ContentType
	if o.ContentType == "" {
		o.ContentType = "application/octet-stream"
	} else if err := checkContentType(o.ContentType); err != nil {
		return o, err
	}
	if op.TTL != nil {
		ttl, err := ttlOf(op.TTL)
		if err != nil {
			return o, err
		}
		o.TTL = ttl
	}
	return o, nil
}

// ttlOf reads a time to live as JSON: a string, a Go duration or a number
// of seconds as for ?ttl=, or a number of seconds.
func ttlOf(raw json.RawMessage) (time.Duration, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		s = string(raw) // a JSON number
	}
	if s == "" {
		return 0, badParam("ttl must be a positive Go duration (30s, 5m) or a number of seconds")
	}
	return parseTTL(s)
}

// checkPrefix checks the prefix of a delete_prefix: a non-empty string
// of valid UTF-8 without control characters, of at most 1024 bytes.
func checkPrefix(p string) error {
	switch {
	case p == "":
		return badParam("a prefix must not be empty: it would delete every key")
	case len(p) > 1024 || !utf8.ValidString(p) || strings.ContainsFunc(p, isControl):
		return badParam("a prefix is valid UTF-8 of at most 1024 bytes without control characters")
	}
	return nil
}

// checkContentType checks a content type given with a value.
func checkContentType(ctype string) error {
	if _, _, err := mime.ParseMediaType(ctype); err != nil || len(ctype) > 256 || !utf8.ValidString(ctype) {
		return badParam("Content-Type is not a valid media type")
	}
	return nil
}
