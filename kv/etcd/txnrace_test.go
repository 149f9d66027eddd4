package etcd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"kvsse/kv"
)

// interposer stands between a store and etcd and passes everything on;
// before each txn that writes, it calls before with the number of that
// txn (1 for the first), as another client's write would come between a
// transaction's read and its txn.
type interposer struct {
	proxy  *httputil.ReverseProxy
	before func(n int) error

	mu     sync.Mutex // guards the fields below
	writes int        // txns that write, passed on
	err    error      // the first error of before
}

// interpose starts an interposer in front of the etcd at etcdURL, closed
// at the end of the test, and returns it with its URL.
func interpose(t *testing.T, etcdURL string, before func(n int) error) (*interposer, string) {
	t.Helper()
	u, err := url.Parse(etcdURL)
	if err != nil {
		t.Fatal(err)
	}
	ip := &interposer{proxy: httputil.NewSingleHostReverseProxy(u), before: before}
	ip.proxy.FlushInterval = -1 // watches stream
	srv := httptest.NewServer(ip)
	t.Cleanup(srv.Close)
	return ip, srv.URL
}

func (ip *interposer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/v3/kv/txn" {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
		var req txnRequest
		if json.Unmarshal(b, &req) == nil && writes(req.Success) {
			ip.mu.Lock()
			ip.writes++
			if err := ip.before(ip.writes); err != nil && ip.err == nil {
				ip.err = err
			}
			ip.mu.Unlock()
		}
	}
	ip.proxy.ServeHTTP(w, r)
}

// writes reports whether ops change something.
func writes(ops []requestOp) bool {
	for _, op := range ops {
		if op.Put != nil || op.Delete != nil {
			return true
		}
	}
	return false
}

// result is how many txns that write it passed on, and the first error
// of before.
func (ip *interposer) result() (int, error) {
	ip.mu.Lock()
	defer ip.mu.Unlock()
	return ip.writes, ip.err
}

// rawPutFunc puts key as another client would, and returns the revision
// of the write.
type rawPutFunc func(key, value string) (int64, error)

// putBeforeFirst is a before of TestTxnRace that puts key once, before
// the first txn that writes, and lets the later ones through.
func putBeforeFirst(key, value string) func(n int, rawPut rawPutFunc) (int64, error) {
	return func(n int, rawPut rawPutFunc) (int64, error) {
		if n > 1 {
			return 0, nil
		}
		return rawPut(key, value)
	}
}

// A key that another client creates or changes between a transaction's
// read and its txn makes the txn fail its compare; the transaction is
// decided again on the new state, and is exact.
func TestTxnRace(t *testing.T) {
	etcdURL := startEtcd(t)
	c := newClient([]string{etcdURL})
	var mu sync.Mutex // guards rev
	var rev int64     // of the last write of before
	for i, tc := range []struct {
		name string
		// before runs before the n-th txn that writes, and writes with
		// rawPut.
		before func(n int, rawPut rawPutFunc) (int64, error)
		txn    func(r revs) kv.Txn
		// want are the changes, given the revision of the last write
		// of before.
		want       func(r revs, rev int64) []kv.TxnChange
		wantErr    error
		wantWrites int
		after      map[string]string
	}{{
		name:   "a key created under the prefix",
		before: putBeforeFirst("p/c", "new"),
		txn:    func(revs) kv.Txn { return kv.Txn{Then: []kv.TxnOp{prefixOp("p/")}} },
		want: func(r revs, rev int64) []kv.TxnChange {
			return []kv.TxnChange{
				{Key: "p/a", Op: kv.OpDelete, PrevRevision: r["p/a"]},
				{Key: "p/b", Op: kv.OpDelete, PrevRevision: r["p/b"]},
				{Key: "p/c", Op: kv.OpDelete, PrevRevision: rev},
			}
		},
		wantWrites: 2,
		after:      map[string]string{"a": "a"},
	}, {
		name:   "a key changed under the prefix",
		before: putBeforeFirst("p/a", "changed"),
		txn:    func(revs) kv.Txn { return kv.Txn{Then: []kv.TxnOp{prefixOp("p/")}} },
		want: func(r revs, rev int64) []kv.TxnChange {
			return []kv.TxnChange{
				{Key: "p/a", Op: kv.OpDelete, PrevRevision: rev},
				{Key: "p/b", Op: kv.OpDelete, PrevRevision: r["p/b"]},
			}
		},
		wantWrites: 2,
		after:      map[string]string{"a": "a"},
	}, {
		name: "a key created under the prefix every time",
		before: func(n int, rawPut rawPutFunc) (int64, error) {
			return rawPut("p/new/"+string(rune('a'+n)), "new")
		},
		txn:        func(revs) kv.Txn { return kv.Txn{Then: []kv.TxnOp{prefixOp("p/"), putOp("x", "1")}} },
		wantErr:    kv.ErrUnavailable,
		wantWrites: maxTxnAttempts,
		after: map[string]string{"a": "a", "p/a": "p/a", "p/b": "p/b",
			"p/new/b": "new", "p/new/c": "new", "p/new/d": "new", "p/new/e": "new",
			"p/new/f": "new", "p/new/g": "new", "p/new/h": "new", "p/new/i": "new"},
	}, {
		name:   "a condition's key changed",
		before: putBeforeFirst("a", "changed"),
		txn: func(r revs) kv.Txn {
			return kv.Txn{If: []kv.Compare{{Key: "a", Cond: kv.IfRevision(r["a"])}}, Then: []kv.TxnOp{putOp("x", "1")}}
		},
		wantErr:    kv.ErrPrecondition,
		wantWrites: 1,
		after:      map[string]string{"a": "changed", "p/a": "p/a", "p/b": "p/b"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := fmt.Sprintf("/race-%d/", i)
			// rawPut puts key under the store's prefix as another
			// client would.
			rawPut := func(key, value string) (int64, error) {
				var r putResponse
				err := c.call(context.Background(), "/v3/kv/put", putRequest{Key: []byte(prefix + key), Value: encodeValue([]byte(value), "", 0)}, &r)
				return r.Header.Revision, err
			}
			ip, u := interpose(t, etcdURL, func(n int) error {
				r, err := tc.before(n, rawPut)
				if r != 0 {
					mu.Lock()
					rev = r
					mu.Unlock()
				}
				return err
			})
			s := openStore(t, u, Options{Prefix: prefix})
			r := revs{}
			for _, k := range []string{"a", "p/a", "p/b"} {
				r[k] = put(t, s, k, k)
			}
			res, err := s.Txn(context.Background(), tc.txn(r))
			n, ierr := ip.result()
			if ierr != nil {
				t.Fatal(ierr)
			}
			if n != tc.wantWrites {
				t.Errorf("%d txns that write reached etcd, want %d", n, tc.wantWrites)
			}
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Errorf("Txn = %v, want an error matching %v", err, tc.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			} else {
				mu.Lock()
				want := tc.want(r, rev)
				mu.Unlock()
				if diff := cmp.Diff(want, res.Changes); diff != "" {
					t.Errorf("changes (-want +got):\n%s", diff)
				}
			}
			var fe *kv.TxnFailedError
			if errors.As(err, &fe) {
				mu.Lock()
				want := []kv.Failure{{Key: "a", Revision: rev}}
				mu.Unlock()
				if diff := cmp.Diff(want, fe.Failed); diff != "" {
					t.Errorf("failed conditions (-want +got):\n%s", diff)
				}
			}
			if diff := cmp.Diff(tc.after, contents(t, s, "")); diff != "" {
				t.Errorf("keys afterwards (-want +got):\n%s", diff)
			}
		})
	}
}
