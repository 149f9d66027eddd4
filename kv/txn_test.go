package kv_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"kvsse/kv"
)

func putOp(key, value string) kv.TxnOp {
	return kv.TxnOp{Kind: kv.TxnPut, Key: key, Value: []byte(value)}
}

func delOp(key string) kv.TxnOp { return kv.TxnOp{Kind: kv.TxnDelete, Key: key} }

func prefixOp(prefix string) kv.TxnOp { return kv.TxnOp{Kind: kv.TxnDeletePrefix, Key: prefix} }

// many returns puts of k0...k<n-1>, then more.
func many(n int, more ...kv.TxnOp) []kv.TxnOp {
	var ops []kv.TxnOp
	for i := range n {
		ops = append(ops, putOp(fmt.Sprintf("k%d", i), "v"))
	}
	return append(ops, more...)
}

// stateOf returns every key of the store as "value@revision".
func stateOf(t testing.TB, s *kv.Store) map[string]string {
	t.Helper()
	out := make(map[string]string)
	for _, e := range listAll(t, s).Items {
		out[e.Key] = fmt.Sprintf("%s@%d", e.Value, e.Revision)
	}
	return out
}

// unchanged checks that s still holds before, at revision rev: a
// refused transaction writes nothing.
func unchanged(t testing.TB, s *kv.Store, before map[string]string, rev int64) {
	t.Helper()
	if diff := cmp.Diff(before, stateOf(t, s)); diff != "" || s.Revision() != rev {
		t.Errorf("Revision %d, want %d; state (-before +after):\n%s", s.Revision(), rev, diff)
	}
}

// seed puts each key with its name as value, in order: key i takes
// revision i+1.
func seed(t testing.TB, s *kv.Store, keys ...string) {
	t.Helper()
	for _, k := range keys {
		put(t, s, k, k)
	}
}

// TestTxn runs transactions that succeed on a store holding a@1, b@2,
// p/a@3, p/b@4, p/c@5, q@6: what they answer and what the store then
// holds.
func TestTxn(t *testing.T) {
	tests := []struct {
		name  string
		txn   kv.Txn
		want  kv.TxnResult
		state map[string]string // the keys that differ from the seed; "" for deleted
	}{
		{
			name: "puts",
			txn:  kv.Txn{Then: []kv.TxnOp{putOp("new", "1"), putOp("a", "2")}},
			want: kv.TxnResult{Revision: 7, Changes: []kv.TxnChange{
				{Key: "new", Op: kv.OpPut}, {Key: "a", Op: kv.OpPut, PrevRevision: 1}}},
			state: map[string]string{"new": "1@7", "a": "2@7"},
		},
		{
			name: "deletes, one of a missing key",
			txn:  kv.Txn{Then: []kv.TxnOp{delOp("b"), delOp("missing"), delOp("a")}},
			want: kv.TxnResult{Revision: 7, Changes: []kv.TxnChange{
				{Key: "b", Op: kv.OpDelete, PrevRevision: 2}, {Key: "a", Op: kv.OpDelete, PrevRevision: 1}}},
			state: map[string]string{"a": "", "b": ""},
		},
		{
			name: "a prefix among other ops: the order of Then, its keys in key order",
			txn:  kv.Txn{Then: []kv.TxnOp{putOp("x", "1"), prefixOp("p/"), delOp("q")}},
			want: kv.TxnResult{Revision: 7, Changes: []kv.TxnChange{
				{Key: "x", Op: kv.OpPut},
				{Key: "p/a", Op: kv.OpDelete, PrevRevision: 3},
				{Key: "p/b", Op: kv.OpDelete, PrevRevision: 4},
				{Key: "p/c", Op: kv.OpDelete, PrevRevision: 5},
				{Key: "q", Op: kv.OpDelete, PrevRevision: 6}}},
			state: map[string]string{"x": "1@7", "p/a": "", "p/b": "", "p/c": "", "q": ""},
		},
		{
			name:  "a prefix that is not a whole key",
			txn:   kv.Txn{Then: []kv.TxnOp{prefixOp("p/b")}},
			want:  kv.TxnResult{Revision: 7, Changes: []kv.TxnChange{{Key: "p/b", Op: kv.OpDelete, PrevRevision: 4}}},
			state: map[string]string{"p/b": ""},
		},
		{
			name:  "a new key under a prefix it deletes",
			txn:   kv.Txn{Then: []kv.TxnOp{putOp("p/new", "n"), prefixOp("p/")}},
			want:  kv.TxnResult{Revision: 7, Changes: []kv.TxnChange{{Key: "p/new", Op: kv.OpPut}, {Key: "p/a", Op: kv.OpDelete, PrevRevision: 3}, {Key: "p/b", Op: kv.OpDelete, PrevRevision: 4}, {Key: "p/c", Op: kv.OpDelete, PrevRevision: 5}}},
			state: map[string]string{"p/new": "n@7", "p/a": "", "p/b": "", "p/c": ""},
		},
		{
			name: "every kind of condition, holding, also on the keys it changes",
			txn: kv.Txn{
				If: []kv.Compare{
					{Key: "a", Cond: kv.IfRevision(1)},
					{Key: "missing", Cond: kv.IfAbsent()},
					{Key: "b", Cond: kv.IfExists()},
					{Key: "q", Cond: kv.Cond{}},
					{Key: "missing", Cond: kv.Cond{}},
				},
				Then: []kv.TxnOp{putOp("a", "v"), putOp("missing", "m"), delOp("b")},
			},
			want: kv.TxnResult{Revision: 7, Changes: []kv.TxnChange{
				{Key: "a", Op: kv.OpPut, PrevRevision: 1}, {Key: "missing", Op: kv.OpPut}, {Key: "b", Op: kv.OpDelete, PrevRevision: 2}}},
			state: map[string]string{"a": "v@7", "missing": "m@7", "b": ""},
		},
		{
			name: "nothing to change takes no revision",
			txn:  kv.Txn{If: []kv.Compare{{Key: "a", Cond: kv.IfExists()}}, Then: []kv.TxnOp{delOp("missing"), prefixOp("none/"), prefixOp("p/a/")}},
			want: kv.TxnResult{Revision: 6},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t, kv.Options{})
			seed(t, s, "a", "b", "p/a", "p/b", "p/c", "q")
			want := stateOf(t, s)
			for k, v := range tt.state {
				if v == "" {
					delete(want, k)
				} else {
					want[k] = v
				}
			}
			got, err := s.Txn(context.Background(), tt.txn)
			if err != nil {
				t.Fatalf("Txn: %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Txn (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(want, stateOf(t, s)); diff != "" {
				t.Errorf("state (-want +got):\n%s", diff)
			}
			if s.Revision() != tt.want.Revision {
				t.Errorf("Revision = %d, want %d", s.Revision(), tt.want.Revision)
			}
		})
	}
}

// TestTxnValues checks what a transaction's puts store, and the events
// its changes make, on a watch that is live and on one that resumes from
// the revision before it.
func TestTxnValues(t *testing.T) {
	ctx := context.Background()
	s := open(t, kv.Options{})
	seed(t, s, "a", "p/a", "p/b")
	live := watch(t, s, kv.WatchOptions{Patterns: patterns(t, "**")})
	_, err := s.Txn(ctx, kv.Txn{Then: []kv.TxnOp{
		{Kind: kv.TxnPut, Key: "img", Value: []byte{0xff, 0}, ContentType: "image/png"},
		prefixOp("p/"),
		putOp("a", "2"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	e, err := s.Get(ctx, "img")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(kv.Entry{Key: "img", Value: []byte{0xff, 0}, ContentType: "image/png", Revision: 4}, e); diff != "" {
		t.Errorf("Get (-want +got):\n%s", diff)
	}
	want := []change{
		{Op: kv.OpPut, Key: "img", Value: "\xff\x00", ContentType: "image/png", Revision: 4},
		{Op: kv.OpDelete, Key: "p/a", Revision: 4, PrevRevision: 2, Reason: "deleted"},
		{Op: kv.OpDelete, Key: "p/b", Revision: 4, PrevRevision: 3, Reason: "deleted"},
		{Op: kv.OpPut, Key: "a", Value: "2", Revision: 4, PrevRevision: 1},
	}
	got, _ := live.Take(nil) // the Txn returned: its changes are queued, all of them
	if diff := cmp.Diff(want, changesOf(got)); diff != "" {
		t.Errorf("live changes (-want +got):\n%s", diff)
	}
	resumed := watch(t, s, kv.WatchOptions{Patterns: patterns(t, "**"), Resume: true, From: 3})
	if diff := cmp.Diff(want, changesOf(resumed.Replay)); diff != "" || resumed.Reset != "" {
		t.Errorf("resume from 3: reset %q (-want +got):\n%s", resumed.Reset, diff)
	}
	if st := s.Stats(); st.Txns.Load() != 1 || st.TxnChanges.Load() != 4 || st.Writes.Load() != 7 {
		t.Errorf("stats: %d transactions, %d of their changes, %d writes; want 1, 4, 7", st.Txns.Load(), st.TxnChanges.Load(), st.Writes.Load())
	}
}

// TestTxnFailed checks that a transaction whose conditions fail changes
// nothing and lists every failed condition, in order, with the keys'
// revisions.
func TestTxnFailed(t *testing.T) {
	s := open(t, kv.Options{})
	seed(t, s, "a", "b", "c")
	before := stateOf(t, s)
	_, err := s.Txn(context.Background(), kv.Txn{
		If: []kv.Compare{
			{Key: "a", Cond: kv.IfRevision(9)},
			{Key: "b", Cond: kv.IfExists()},
			{Key: "c", Cond: kv.IfAbsent()},
			{Key: "d", Cond: kv.IfExists()},
			{Key: "d", Cond: kv.IfRevision(0)},
			{Key: "a", Cond: kv.IfRevision(1)},
		},
		Then: []kv.TxnOp{putOp("a", "x"), putOp("d", "x")},
	})
	var failed *kv.TxnFailedError
	if !errors.As(err, &failed) || !errors.Is(err, kv.ErrPrecondition) {
		t.Fatalf("Txn: %v, want a *TxnFailedError matching ErrPrecondition", err)
	}
	want := []kv.Failure{{Key: "a", Revision: 1}, {Key: "c", Revision: 3}, {Key: "d"}, {Key: "d"}}
	if diff := cmp.Diff(want, failed.Failed); diff != "" {
		t.Errorf("failed (-want +got):\n%s", diff)
	}
	unchanged(t, s, before, 3)
}

// TestTxnInvalid checks the transactions that are refused, with the part
// that is wrong, and that they change nothing. The store holds a, p/a and
// p/b.
func TestTxnInvalid(t *testing.T) {
	tests := []struct {
		name  string
		txn   kv.Txn
		part  string
		index int
		err   error
	}{
		{"an invalid key in a condition", kv.Txn{If: []kv.Compare{{Key: "a"}, {Key: "a//b"}}, Then: []kv.TxnOp{putOp("a", "1")}}, "if", 1, kv.ErrInvalidKey},
		{"no change", kv.Txn{If: []kv.Compare{{Key: "a"}}}, "then", 0, kv.ErrInvalidTxn},
		{"an invalid key to put", kv.Txn{Then: []kv.TxnOp{putOp("a", "1"), putOp("b/", "1")}}, "then", 1, kv.ErrInvalidKey},
		{"an invalid key to delete", kv.Txn{Then: []kv.TxnOp{delOp("x/*")}}, "then", 0, kv.ErrInvalidKey},
		{"an empty key", kv.Txn{Then: []kv.TxnOp{putOp("", "1")}}, "then", 0, kv.ErrInvalidKey},
		{"an empty prefix", kv.Txn{Then: []kv.TxnOp{putOp("a", "1"), prefixOp("")}}, "then", 1, kv.ErrInvalidTxn},
		{"a prefix with a control character", kv.Txn{Then: []kv.TxnOp{prefixOp("p/\n")}}, "then", 0, kv.ErrInvalidKey},
		{"a prefix with DEL", kv.Txn{Then: []kv.TxnOp{prefixOp("p\x7f")}}, "then", 0, kv.ErrInvalidKey},
		{"a prefix of invalid UTF-8", kv.Txn{Then: []kv.TxnOp{prefixOp("p/\xff")}}, "then", 0, kv.ErrInvalidKey},
		{"a negative time to live", kv.Txn{Then: []kv.TxnOp{{Kind: kv.TxnPut, Key: "a", TTL: -time.Second}}}, "then", 0, kv.ErrInvalidTxn},
		{"an unknown kind", kv.Txn{Then: []kv.TxnOp{{Key: "a"}}}, "then", 0, kv.ErrInvalidTxn},
		{"a put and a delete of one key", kv.Txn{Then: []kv.TxnOp{putOp("a", "1"), putOp("b", "1"), delOp("a")}}, "then", 2, kv.ErrInvalidTxn},
		{"two puts of one missing key", kv.Txn{Then: []kv.TxnOp{putOp("x", "1"), putOp("x", "2")}}, "then", 1, kv.ErrInvalidTxn},
		{"two ops of one key in a large transaction", kv.Txn{Then: many(40, prefixOp("k1"), delOp("k17"))}, "then", 41, kv.ErrInvalidTxn},
		{"two ops of one key in a transaction of 16", kv.Txn{Then: many(15, delOp("k3"))}, "then", 15, kv.ErrInvalidTxn},
		{"a put of a key a prefix removes", kv.Txn{Then: []kv.TxnOp{prefixOp("p/"), putOp("a", "1"), putOp("p/b", "1")}}, "then", 2, kv.ErrInvalidTxn},
		{"a prefix that removes a key put before", kv.Txn{Then: []kv.TxnOp{putOp("p/a", "1"), prefixOp("p/")}}, "then", 1, kv.ErrInvalidTxn},
		{"a prefix that removes a key deleted before", kv.Txn{Then: []kv.TxnOp{delOp("p/b"), prefixOp("p")}}, "then", 1, kv.ErrInvalidTxn},
		{"two prefixes that remove one key", kv.Txn{Then: []kv.TxnOp{prefixOp("p/"), prefixOp("p/b")}}, "then", 1, kv.ErrInvalidTxn},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t, kv.Options{})
			seed(t, s, "a", "p/a", "p/b")
			before := stateOf(t, s)
			_, err := s.Txn(context.Background(), tt.txn)
			var opErr *kv.TxnOpError
			if !errors.As(err, &opErr) || !errors.Is(err, tt.err) {
				t.Fatalf("Txn: %v, want a *TxnOpError matching %v", err, tt.err)
			}
			if opErr.Part != tt.part || opErr.Index != tt.index {
				t.Errorf("Txn: %v, want it on %s[%d]", err, tt.part, tt.index)
			}
			unchanged(t, s, before, 3)
		})
	}
}

// TestTxnTooLarge checks MaxTxnOps, counting the puts and deletes, found
// or not, and the keys that each delete_prefix removes. The store holds
// p/a, p/b, p/c.
func TestTxnTooLarge(t *testing.T) {
	tests := []struct {
		name string
		max  int
		then []kv.TxnOp
		ops  int // 0: it fits
	}{
		{"at the limit", 3, many(3), 0},
		{"one over", 3, many(4), 4},
		{"deletes of missing keys count", 3, []kv.TxnOp{putOp("a", "1"), delOp("m1"), delOp("m2"), delOp("m3")}, 4},
		{"a prefix counts its keys", 3, []kv.TxnOp{prefixOp("p/")}, 0},
		{"a prefix and a put", 3, []kv.TxnOp{putOp("a", "1"), prefixOp("p/")}, 4},
		{"prefixes that remove nothing count nothing", 1, []kv.TxnOp{putOp("a", "1"), prefixOp("x/"), prefixOp("y/")}, 0},
		{"a prefix over the limit alone", 2, []kv.TxnOp{prefixOp("p")}, 3},
		{"the default", 0, many(kv.DefaultMaxTxnOps + 1), kv.DefaultMaxTxnOps + 1},
		{"the default, reached", 0, many(kv.DefaultMaxTxnOps), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t, kv.Options{MaxTxnOps: tt.max})
			seed(t, s, "p/a", "p/b", "p/c")
			before := stateOf(t, s)
			_, err := s.Txn(context.Background(), kv.Txn{Then: tt.then})
			if tt.ops == 0 {
				if err != nil {
					t.Fatalf("Txn: %v", err)
				}
				return
			}
			var size *kv.TxnSizeError
			if !errors.As(err, &size) || !errors.Is(err, kv.ErrTxnTooLarge) {
				t.Fatalf("Txn: %v, want a *TxnSizeError matching ErrTxnTooLarge", err)
			}
			max := tt.max
			if max == 0 {
				max = kv.DefaultMaxTxnOps
			}
			if diff := cmp.Diff(kv.TxnSizeError{Ops: tt.ops, Max: max, Limit: "MaxTxnOps"}, *size); diff != "" {
				t.Errorf("TxnSizeError (-want +got):\n%s", diff)
			}
			unchanged(t, s, before, 3)
		})
	}
}

// TestTxnFull checks that the store's limits apply to a transaction as a
// whole: what it deletes makes room for what it puts. The store holds
// a=12345 and b=1, written before the limits were set.
func TestTxnFull(t *testing.T) {
	tests := []struct {
		name  string
		opts  kv.Options
		then  []kv.TxnOp
		limit string // "": it fits
	}{
		{"keys: two more than room for one", kv.Options{MaxKeys: 3}, []kv.TxnOp{putOp("c", "1"), putOp("d", "1")}, kv.LimitKeys},
		{"keys: room made by a delete", kv.Options{MaxKeys: 3}, []kv.TxnOp{putOp("c", "1"), delOp("a"), putOp("d", "1")}, ""},
		{"keys: replacing takes no room", kv.Options{MaxKeys: 2}, []kv.TxnOp{putOp("a", "1"), putOp("b", "2")}, ""},
		{"bytes: over", kv.Options{MaxBytes: 10}, []kv.TxnOp{putOp("c", "12"), putOp("d", "123")}, kv.LimitBytes},
		{"bytes: room made by a prefix", kv.Options{MaxBytes: 10}, []kv.TxnOp{putOp("c", "123456"), prefixOp("a"), putOp("d", "123")}, ""},
		{"bytes: one over, with a prefix", kv.Options{MaxBytes: 10}, []kv.TxnOp{putOp("c", "1234567"), prefixOp("a"), putOp("d", "123")}, kv.LimitBytes},
		{"bytes: room made by shrinking", kv.Options{MaxBytes: 10}, []kv.TxnOp{putOp("a", "1"), putOp("c", "12345678")}, ""},
		{"bytes: shrinking a store past a lowered limit", kv.Options{MaxBytes: 3}, []kv.TxnOp{putOp("a", "12"), putOp("b", "1")}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, kv.Options{Dir: dir})
			put(t, s, "a", "12345")
			put(t, s, "b", "1")
			closeStore(t, s)
			tt.opts.Dir = dir
			s = open(t, tt.opts)
			before := stateOf(t, s)
			_, err := s.Txn(context.Background(), kv.Txn{Then: tt.then})
			if tt.limit == "" {
				if err != nil {
					t.Fatalf("Txn: %v", err)
				}
				return
			}
			var full *kv.FullError
			if !errors.As(err, &full) || !errors.Is(err, kv.ErrFull) || full.Limit != tt.limit {
				t.Fatalf("Txn: %v, want a *FullError on %s", err, tt.limit)
			}
			unchanged(t, s, before, 2)
		})
	}
}

// TestTxnTTL puts keys with a time to live in a transaction: they expire
// like any other, each with a write of its own, before the transaction
// that comes when their time has run out, whose conditions and prefixes
// find them absent.
func TestTxnTTL(t *testing.T) {
	ctx := context.Background()
	s, clk, sub := ttlStore(t)
	r, err := s.Txn(ctx, kv.Txn{Then: []kv.TxnOp{
		{Kind: kv.TxnPut, Key: "t/short", Value: []byte("s"), TTL: 10 * time.Second},
		{Kind: kv.TxnPut, Key: "t/long", Value: []byte("l"), TTL: time.Hour},
		putOp("t/forever", "f"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	short := clk.Now().Add(10 * time.Second).UnixNano()
	e, err := s.Get(ctx, "t/short")
	if err != nil || e.Expires != short {
		t.Fatalf("Get = %+v, %v; want it to expire in 10s", e, err)
	}
	receive(t, sub, 3)

	clk.Advance(11 * time.Second)
	if _, err := s.Get(ctx, "t/short"); !errors.Is(err, kv.ErrNotFound) {
		t.Errorf("Get after its time to live: %v, want ErrNotFound", err)
	}
	rev := r.Revision
	if _, err = s.Txn(ctx, kv.Txn{If: []kv.Compare{{Key: "t/short", Cond: kv.IfAbsent()}}, Then: []kv.TxnOp{putOp("t/short", "again")}}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Hour)
	r, err = s.Txn(ctx, kv.Txn{If: []kv.Compare{{Key: "t/long", Cond: kv.IfAbsent()}}, Then: []kv.TxnOp{prefixOp("t/")}})
	if err != nil {
		t.Fatal(err)
	}
	want := []change{
		{Op: kv.OpExpire, Key: "t/short", Revision: rev + 1, PrevRevision: rev, Reason: "expired"},
		{Op: kv.OpPut, Key: "t/short", Value: "again", Revision: rev + 2},
		{Op: kv.OpExpire, Key: "t/long", Revision: rev + 3, PrevRevision: rev, Reason: "expired"},
		{Op: kv.OpDelete, Key: "t/forever", Revision: rev + 4, PrevRevision: rev, Reason: "deleted"},
		{Op: kv.OpDelete, Key: "t/short", Revision: rev + 4, PrevRevision: rev + 2, Reason: "deleted"},
	}
	if diff := cmp.Diff(want, receive(t, sub, len(want))); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
	if r.Revision != rev+4 || len(r.Changes) != 2 {
		t.Errorf("the last Txn = %+v, want the two deletes at %d", r, rev+4)
	}
}

// TestDeletePrefix deletes the keys under a prefix as one write.
func TestDeletePrefix(t *testing.T) {
	ctx := context.Background()
	s := open(t, kv.Options{})
	seed(t, s, "app/a", "app/b/c", "apple", "b")
	r, err := s.DeletePrefix(ctx, "app/")
	if err != nil {
		t.Fatal(err)
	}
	want := kv.TxnResult{Revision: 5, Changes: []kv.TxnChange{{Key: "app/a", Op: kv.OpDelete, PrevRevision: 1}, {Key: "app/b/c", Op: kv.OpDelete, PrevRevision: 2}}}
	if diff := cmp.Diff(want, r); diff != "" {
		t.Errorf("DeletePrefix (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]string{"apple": "apple@3", "b": "b@4"}, stateOf(t, s)); diff != "" {
		t.Errorf("state (-want +got):\n%s", diff)
	}
	if r, err := s.DeletePrefix(ctx, "app/"); err != nil || r.Revision != 5 || r.Changes != nil {
		t.Errorf("DeletePrefix of nothing = %+v, %v; want revision 5 and no change", r, err)
	}
	if _, err := s.DeletePrefix(ctx, ""); !errors.Is(err, kv.ErrInvalidTxn) {
		t.Errorf("DeletePrefix(\"\") = %v, want ErrInvalidTxn", err)
	}
}

// TestTxnInBatch runs transactions in the same batches as puts and
// deletes of their keys: each transaction sees the writes handed to the
// committer before it, as its prefixes and conditions show.
func TestTxnInBatch(t *testing.T) {
	ctx := context.Background()
	s := open(t, kv.Options{})
	seed(t, s, "p/old")
	const n = 200
	errc := make(chan error, n)
	for i := range n {
		go func() {
			key := fmt.Sprintf("p/%03d", i)
			if _, err := s.Put(ctx, key, []byte("v"), kv.PutOptions{}); err != nil {
				errc <- err
				return
			}
			// The put is acknowledged: the transaction, handed over
			// after it, must remove it, whatever batch it falls in.
			r, err := s.Txn(ctx, kv.Txn{If: []kv.Compare{{Key: key, Cond: kv.IfExists()}}, Then: []kv.TxnOp{prefixOp(key)}})
			switch {
			case err != nil:
				errc <- err
			case len(r.Changes) != 1 || r.Changes[0].Key != key:
				errc <- fmt.Errorf("delete_prefix %s removed %+v", key, r.Changes)
			default:
				errc <- nil
			}
		}()
	}
	for range n {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if diff := cmp.Diff(map[string]string{"p/old": "p/old@1"}, stateOf(t, s)); diff != "" {
		t.Errorf("state (-want +got):\n%s", diff)
	}
	if s.Revision() != 1+2*n {
		t.Errorf("Revision = %d, want %d", s.Revision(), 1+2*n)
	}
}

func TestTxnClosed(t *testing.T) {
	s := open(t, kv.Options{})
	s.Close()
	if _, err := s.Txn(context.Background(), kv.Txn{Then: []kv.TxnOp{putOp("a", "1")}}); !errors.Is(err, kv.ErrClosed) {
		t.Errorf("Txn on a closed store: %v, want ErrClosed", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := open(t, kv.Options{}).Txn(ctx, kv.Txn{Then: []kv.TxnOp{putOp("a", "1")}}); !errors.Is(err, context.Canceled) {
		t.Errorf("Txn with a cancelled context: %v, want context.Canceled", err)
	}
	if _, err := s.Txn(context.Background(), kv.Txn{}); err == nil || !strings.Contains(err.Error(), "then[0]") {
		t.Errorf("an empty Txn: %v, want an error naming then[0]", err)
	}
}
