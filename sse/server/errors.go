package server

import (
	"errors"
	"log/slog"
	"net/http"
	"strconv"

	"kvsse/kv"
	"kvsse/sse"
)

// Errors of the HTTP layer; kv's sentinels are mapped beside them.
var (
	errBadParam     = errors.New("bad parameter")
	errTooLarge     = errors.New("too large")
	errMethod       = errors.New("method not allowed")
	errNoRoute      = errors.New("no such route")
	errStarting     = errors.New("the server is starting")
	errShuttingDown = errors.New("the server is shutting down")
	errTooManySubs  = errors.New("too many subscribers")
)

// paramError is a bad request parameter, with a message for the user.
type paramError struct{ msg string }

func (e *paramError) Error() string        { return e.msg }
func (e *paramError) Is(target error) bool { return target == errBadParam }

func badParam(msg string) error { return &paramError{msg: msg} }

// errorTable maps errors to a status and a code, first match wins.
var errorTable = []struct {
	err    error
	status int
	code   string
}{
	{kv.ErrInvalidKey, http.StatusBadRequest, "invalid_key"},
	{kv.ErrInvalidPattern, http.StatusBadRequest, "invalid_pattern"},
	{kv.ErrInvalidRevision, http.StatusBadRequest, "invalid_revision"},
	{errBadParam, http.StatusBadRequest, "bad_parameter"},
	{errUnauthorized, http.StatusUnauthorized, "unauthorized"},
	{errForbidden, http.StatusForbidden, "forbidden"},
	{errCrossOrigin, http.StatusForbidden, "cross_origin"},
	{kv.ErrNotFound, http.StatusNotFound, "not_found"},
	{errNoRoute, http.StatusNotFound, "no_route"},
	{errMethod, http.StatusMethodNotAllowed, "method_not_allowed"},
	{kv.ErrInvalidTxn, http.StatusBadRequest, "invalid_transaction"},
	{kv.ErrPrecondition, http.StatusPreconditionFailed, "precondition_failed"},
	{kv.ErrTxnTooLarge, http.StatusRequestEntityTooLarge, "too_large"},
	{errTooLarge, http.StatusRequestEntityTooLarge, "too_large"},
	{errTooManySubs, http.StatusTooManyRequests, "too_many_subscribers"},
	{errRateLimited, http.StatusTooManyRequests, "rate_limited"},
	{kv.ErrFull, http.StatusInsufficientStorage, "store_full"},
	{errNotImplemented, http.StatusNotImplemented, "not_implemented"},
	{errStarting, http.StatusServiceUnavailable, "starting"},
	{errShuttingDown, http.StatusServiceUnavailable, "shutting_down"},
	{kv.ErrClosed, http.StatusServiceUnavailable, "shutting_down"},
	{kv.ErrUnavailable, http.StatusServiceUnavailable, "unavailable"},
}

// limitFlag is the flag that sets a store limit of kv.FullError.
func limitFlag(limit string) string {
	if limit == kv.LimitKeys {
		return "-max-keys"
	}
	return "-max-bytes"
}

// errorStatus returns the status and code of err, from errorTable: 500
// "internal" for an error it does not hold.
func errorStatus(err error) (status int, code string) {
	for _, e := range errorTable {
		if errors.Is(err, e.err) {
			return e.status, e.code
		}
	}
	return http.StatusInternalServerError, "internal"
}

// writeError answers err as the JSON {"error","code"} with its status; a
// failed precondition adds the key's current "revision". Errors not in the
// table are 500 with a plain message; the details go to the log only.
func writeError(w http.ResponseWriter, r *http.Request, logger *slog.Logger, err error) {
	status, code := errorStatus(err)
	msg := "internal error"
	if status != http.StatusInternalServerError {
		msg = err.Error()
	}
	var full *kv.FullError
	if errors.As(err, &full) {
		msg += " (" + limitFlag(full.Limit) + ")"
	}
	var size *kv.TxnSizeError
	if errors.As(err, &size) && size.Limit == "MaxTxnOps" {
		msg += " (-max-txn-ops)"
	}
	if status == http.StatusInternalServerError {
		logger.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	b := sse.AppendString([]byte(`{"error":`), msg)
	b = append(b, `,"code":"`...)
	b = append(b, code...)
	b = append(b, '"')
	var ce *kv.ConflictError
	if errors.As(err, &ce) {
		b = append(b, `,"revision":`...)
		b = strconv.AppendInt(b, ce.Revision, 10)
	}
	var tf *kv.TxnFailedError
	if errors.As(err, &tf) {
		b = append(b, `,"failed":[`...)
		for i, f := range tf.Failed {
			if i > 0 {
				b = append(b, ',')
			}
			b = sse.AppendString(append(b, `{"key":`...), f.Key)
			b = append(b, `,"revision":`...)
			b = strconv.AppendInt(b, f.Revision, 10)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", "Bearer")
	}
	writeJSON(w, status, append(b, '}'))
}
