package etcd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"kvsse/kv"
)

// client calls etcd's HTTP/JSON gateway (the grpc-gateway in front of
// etcd's v3 API). It sticks to one endpoint and moves to the next when
// that one cannot be reached or has no leader.
type client struct {
	endpoints []string
	cur       atomic.Int64 // index into endpoints of the one in use
	hc        *http.Client
}

func newClient(endpoints []string) *client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	tr.ResponseHeaderTimeout = 0 // a watch answers its headers late
	return &client{endpoints: endpoints, hc: &http.Client{Transport: tr}}
}

// gatewayError is an error answered by etcd: gRPC's code and message.
type gatewayError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Status  int    `json:"-"`
}

func (e *gatewayError) Error() string { return "etcd: " + e.Message }

// The gRPC codes that change what kvsse answers.
const (
	codeInvalidArgument   = 3
	codeResourceExhausted = 8
	codeOutOfRange        = 11
	codeUnavailable       = 14
)

// Is maps etcd's errors onto kv's: a full database is kv.ErrFull; a
// member without leader, a timeout or a stopping member is
// kv.ErrUnavailable.
func (e *gatewayError) Is(target error) bool {
	switch target {
	case kv.ErrFull:
		return e.Code == codeResourceExhausted
	case kv.ErrUnavailable:
		return e.Code == codeUnavailable || e.Status == http.StatusServiceUnavailable
	}
	return false
}

// unreachable is a transport failure: the endpoint could not be used.
type unreachable struct {
	endpoint string
	err      error
}

func (e *unreachable) Error() string {
	return fmt.Sprintf("etcd at %s unreachable: %v", e.endpoint, e.err)
}
func (e *unreachable) Unwrap() error        { return e.err }
func (e *unreachable) Is(target error) bool { return target == kv.ErrUnavailable }

// retryable reports whether a call that failed with err was certainly not
// carried out, so that it may go to the next endpoint: the connection was
// refused, or the member had no leader.
func retryable(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	var ge *gatewayError
	return errors.As(err, &ge) && ge.Code == codeUnavailable && strings.Contains(ge.Message, "no leader")
}

// call posts req as JSON to path and decodes the answer into resp.
func (c *client) call(ctx context.Context, path string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("etcd %s: %w", path, err)
	}
	err = c.try(ctx, func(endpoint string) error { return c.callOne(ctx, endpoint, path, body, resp) })
	if err != nil {
		return fmt.Errorf("etcd %s: %w", path, err)
	}
	return nil
}

// try runs f on the current endpoint, then on the next ones while f fails
// in a way that shows it was not carried out; each endpoint at most once.
func (c *client) try(ctx context.Context, f func(endpoint string) error) error {
	var err error
	start := c.cur.Load()
	for i := range int64(len(c.endpoints)) {
		n := (start + i) % int64(len(c.endpoints))
		err = f(c.endpoints[n])
		if err == nil || !retryable(err) || ctx.Err() != nil {
			break
		}
		c.cur.CompareAndSwap(n, (n+1)%int64(len(c.endpoints)))
	}
	return err
}

func (c *client) callOne(ctx context.Context, endpoint, path string, body []byte, resp any) error {
	r, err := c.post(ctx, endpoint, path, body)
	if err != nil {
		return err
	}
	defer r.Body.Close()
	if err := json.NewDecoder(r.Body).Decode(resp); err != nil {
		return &unreachable{endpoint, fmt.Errorf("read answer: %w", err)}
	}
	return nil
}

// post sends one request and returns the response of a 200; any other
// status is read as a gatewayError.
func (c *client) post(ctx context.Context, endpoint, path string, body []byte) (*http.Response, error) {
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hr.Header.Set("Content-Type", "application/json")
	// Ask etcd to refuse (rather than stall) when the member has lost
	// its leader, so that the call or the watch moves to another member.
	hr.Header.Set("Grpc-Metadata-hasleader", "true")
	r, err := c.hc.Do(hr)
	if err != nil {
		return nil, &unreachable{endpoint, err}
	}
	if r.StatusCode == http.StatusOK {
		return r, nil
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	ge := &gatewayError{Status: r.StatusCode}
	if json.Unmarshal(b, ge) != nil || ge.Message == "" {
		ge.Message = fmt.Sprintf("%s: %s", r.Status, bytes.TrimSpace(b))
	}
	return nil, ge
}

// The gateway's JSON: bytes are base64 (as encoding/json does it), 64-bit
// integers are strings.

type header struct {
	Revision int64 `json:"revision,string"`
}

type keyValue struct {
	Key            []byte `json:"key"`
	CreateRevision int64  `json:"create_revision,string"`
	ModRevision    int64  `json:"mod_revision,string"`
	Version        int64  `json:"version,string"`
	Value          []byte `json:"value"`
	Lease          int64  `json:"lease,string"`
}

type rangeRequest struct {
	Key          []byte `json:"key"`
	RangeEnd     []byte `json:"range_end,omitempty"`
	Limit        int64  `json:"limit,string,omitempty"`
	Revision     int64  `json:"revision,string,omitempty"`
	Serializable bool   `json:"serializable,omitempty"`
	KeysOnly     bool   `json:"keys_only,omitempty"`
	CountOnly    bool   `json:"count_only,omitempty"`
}

type rangeResponse struct {
	Header header     `json:"header"`
	KVs    []keyValue `json:"kvs"`
	More   bool       `json:"more"`
	Count  int64      `json:"count,string"` // every key in the range, beyond Limit too
}

type putRequest struct {
	Key    []byte `json:"key"`
	Value  []byte `json:"value"`
	Lease  int64  `json:"lease,string,omitempty"`
	PrevKV bool   `json:"prev_kv,omitempty"`
}

type putResponse struct {
	Header header    `json:"header"`
	PrevKV *keyValue `json:"prev_kv"`
}

type deleteRequest struct {
	Key    []byte `json:"key"`
	PrevKV bool   `json:"prev_kv,omitempty"`
}

type deleteResponse struct {
	Header  header     `json:"header"`
	Deleted int64      `json:"deleted,string"`
	PrevKVs []keyValue `json:"prev_kvs"`
}

// compare is one condition of a txn: the mod_revision of Key, or of
// every key in [Key, RangeEnd) when RangeEnd is set, stands to
// ModRevision as Result says. A missing key's mod_revision is 0, and a
// range that holds no key meets any condition.
type compare struct {
	Key         []byte `json:"key"`
	RangeEnd    []byte `json:"range_end,omitempty"`
	Result      string `json:"result"` // "EQUAL" or "LESS"
	Target      string `json:"target"` // "MOD"
	ModRevision int64  `json:"mod_revision,string"`
}

type requestOp struct {
	Range  *rangeRequest  `json:"request_range,omitempty"`
	Put    *putRequest    `json:"request_put,omitempty"`
	Delete *deleteRequest `json:"request_delete_range,omitempty"`
}

// txnRequest carries out Success when every compare holds, else Failure.
type txnRequest struct {
	Compare []compare   `json:"compare"`
	Success []requestOp `json:"success"`
	Failure []requestOp `json:"failure,omitempty"`
}

type responseOp struct {
	Range  *rangeResponse  `json:"response_range"`
	Put    *putResponse    `json:"response_put"`
	Delete *deleteResponse `json:"response_delete_range"`
}

type txnResponse struct {
	Header    header       `json:"header"`
	Succeeded bool         `json:"succeeded"`
	Responses []responseOp `json:"responses"`
}

type leaseGrantRequest struct {
	TTL int64 `json:"TTL,string"`
}

type leaseGrantResponse struct {
	ID  int64 `json:"ID,string"`
	TTL int64 `json:"TTL,string"`
}

type leaseRevokeRequest struct {
	ID int64 `json:"ID,string"`
}

type watchCreate struct {
	Key            []byte `json:"key"`
	RangeEnd       []byte `json:"range_end"`
	StartRevision  int64  `json:"start_revision,string"`
	PrevKV         bool   `json:"prev_kv"`
	ProgressNotify bool   `json:"progress_notify"`
}

type watchRequest struct {
	Create watchCreate `json:"create_request"`
}

type event struct {
	Type   string    `json:"type"` // "" (PUT) or "DELETE"
	KV     keyValue  `json:"kv"`
	PrevKV *keyValue `json:"prev_kv"`
}

type watchResponse struct {
	Header          header  `json:"header"`
	Created         bool    `json:"created"`
	Canceled        bool    `json:"canceled"`
	CompactRevision int64   `json:"compact_revision,string"`
	CancelReason    string  `json:"cancel_reason"`
	Events          []event `json:"events"`
}

// watchMessage is one line of the gateway's watch stream.
type watchMessage struct {
	Result *watchResponse `json:"result"`
	Error  *gatewayError  `json:"error"`
}

// watch opens a watch of [key, end) from revision from on the current
// endpoint (or the next ones, if it cannot be reached). The caller reads
// watchMessages from the body and closes it.
func (c *client) watch(ctx context.Context, key, end []byte, from int64) (io.ReadCloser, error) {
	body, err := json.Marshal(watchRequest{Create: watchCreate{Key: key, RangeEnd: end, StartRevision: from, PrevKV: true, ProgressNotify: true}})
	if err != nil {
		return nil, err
	}
	var rc io.ReadCloser
	err = c.try(ctx, func(endpoint string) error {
		r, err := c.post(ctx, endpoint, "/v3/watch", body)
		if err == nil {
			rc = r.Body
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("etcd watch: %w", err)
	}
	return rc, nil
}

// next moves to the next endpoint, after a failure on the current one
// that the caller saw.
func (c *client) next() {
	n := c.cur.Load()
	c.cur.CompareAndSwap(n, (n+1)%int64(len(c.endpoints)))
}

// rangeEnd is the end of the range of every key that starts with p.
func rangeEnd(p []byte) []byte {
	end := bytes.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return []byte{0} // every key
}

// backoff is the wait before the attempt-th retry: doubling from 50 ms up
// to 2 s.
func backoff(attempt int) time.Duration {
	return min(50*time.Millisecond<<min(attempt, 6), 2*time.Second)
}
