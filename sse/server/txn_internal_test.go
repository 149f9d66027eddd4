package server

import (
	"strings"
	"testing"

	"kvsse/kv"
)

// FuzzTxnRequest: decoding and checking a transaction's body never
// panics, and a transaction it accepts is one the store may be given:
// 1 to max ops, valid keys, non-empty prefixes, values within -max-value,
// a time to live only on puts and never negative.
func FuzzTxnRequest(f *testing.F) {
	for _, seed := range []string{
		`{"if": [{"key": "cfg/version", "revision": 41}, {"key": "cfg/lock", "revision": 0}, {"key": "cfg/owner", "exists": true}],
		  "then": [{"put": "cfg/a", "value": "on"}, {"put": "cfg/logo", "value": "iVBORw0=", "encoding": "base64", "content_type": "image/png"},
		  {"put": "cfg/lease", "value": "me", "ttl": "30s"}, {"delete": "cfg/old"}, {"delete_prefix": "cfg/tmp/"}]}`,
		`{"then": [{"put": "a", "value": "1", "ttl": 5}]}`,
		`{"then": [{"put": "a//b", "value": "1"}]}`,
		`{"then": []}`,
		`{"then": [{"put": "a", "delete": "b"}]}`,
		`{"then": [{"delete_prefix": ""}]}`,
		`{"if": [{"key": "a"}], "then": [{"delete": "a"}]}`,
		`{}`, `[]`, `null`,
	} {
		f.Add([]byte(seed))
	}
	a := &api{cfg: &Config{MaxValue: 64, MaxTxnOps: 8}}
	f.Fuzz(func(t *testing.T, body []byte) {
		var req txnRequest
		if decodeTxn(body, a.cfg.MaxTxnOps, &req) != nil {
			return
		}
		txn, err := a.txnOf(&req)
		if err != nil {
			return
		}
		if len(txn.Then) == 0 || len(txn.Then) > a.cfg.MaxTxnOps {
			t.Fatalf("accepted %d ops from %q", len(txn.Then), body)
		}
		for _, c := range txn.If {
			if kv.ValidateKey(c.Key) != nil {
				t.Fatalf("accepted the condition key %q from %q", c.Key, body)
			}
		}
		for _, op := range txn.Then {
			switch op.Kind {
			case kv.TxnPut:
				if kv.ValidateKey(op.Key) != nil || int64(len(op.Value)) > a.cfg.MaxValue || op.TTL < 0 || op.ContentType == "" {
					t.Fatalf("accepted the put %+v from %q", op, body)
				}
			case kv.TxnDelete:
				if kv.ValidateKey(op.Key) != nil || op.TTL != 0 || op.Value != nil {
					t.Fatalf("accepted the delete %+v from %q", op, body)
				}
			case kv.TxnDeletePrefix:
				if op.Key == "" || strings.ContainsAny(op.Key, "\x00\n") || op.Value != nil {
					t.Fatalf("accepted the prefix delete %+v from %q", op, body)
				}
			default:
				t.Fatalf("accepted an op of kind %d from %q", op.Kind, body)
			}
		}
	})
}
