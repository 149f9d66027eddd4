package etcd

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"kvsse/kv"
)

// revs are the revisions of the keys a test case wrote, by key.
type revs map[string]int64

func putOp(key, value string) kv.TxnOp {
	return kv.TxnOp{Kind: kv.TxnPut, Key: key, Value: []byte(value)}
}

func delOp(key string) kv.TxnOp { return kv.TxnOp{Kind: kv.TxnDelete, Key: key} }

func prefixOp(prefix string) kv.TxnOp { return kv.TxnOp{Kind: kv.TxnDeletePrefix, Key: prefix} }

func TestTxn(t *testing.T) {
	url := startEtcd(t)
	for i, tc := range []struct {
		name  string
		setup func(t *testing.T, url string, s *Store) revs
		txn   func(r revs) kv.Txn
		want  func(r revs) []kv.TxnChange
		after map[string]string // the store's keys and values afterwards
	}{{
		name: "puts create and replace",
		setup: func(t *testing.T, _ string, s *Store) revs {
			return revs{"a": put(t, s, "a", "1")}
		},
		txn: func(revs) kv.Txn {
			return kv.Txn{Then: []kv.TxnOp{
				{Kind: kv.TxnPut, Key: "a", Value: []byte("2"), ContentType: "text/plain"},
				putOp("b/c", "3"),
			}}
		},
		want: func(r revs) []kv.TxnChange {
			return []kv.TxnChange{{Key: "a", Op: kv.OpPut, PrevRevision: r["a"]}, {Key: "b/c", Op: kv.OpPut}}
		},
		after: map[string]string{"a": "2", "b/c": "3"},
	}, {
		name: "deletes of a key and of a missing one",
		setup: func(t *testing.T, _ string, s *Store) revs {
			return revs{"a": put(t, s, "a", "1"), "b": put(t, s, "b", "2")}
		},
		txn: func(revs) kv.Txn { return kv.Txn{Then: []kv.TxnOp{delOp("missing"), delOp("a")}} },
		want: func(r revs) []kv.TxnChange {
			return []kv.TxnChange{{Key: "a", Op: kv.OpDelete, PrevRevision: r["a"]}}
		},
		after: map[string]string{"b": "2"},
	}, {
		name: "a prefix deletes its keys in key order, between the other ops",
		setup: func(t *testing.T, _ string, s *Store) revs {
			r := revs{}
			for _, k := range []string{"p/b", "p/a/x", "p", "pz", "q"} {
				r[k] = put(t, s, k, k)
			}
			return r
		},
		txn: func(revs) kv.Txn {
			return kv.Txn{Then: []kv.TxnOp{putOp("x", "1"), prefixOp("p/"), delOp("q")}}
		},
		want: func(r revs) []kv.TxnChange {
			return []kv.TxnChange{
				{Key: "x", Op: kv.OpPut},
				{Key: "p/a/x", Op: kv.OpDelete, PrevRevision: r["p/a/x"]},
				{Key: "p/b", Op: kv.OpDelete, PrevRevision: r["p/b"]},
				{Key: "q", Op: kv.OpDelete, PrevRevision: r["q"]},
			}
		},
		after: map[string]string{"p": "p", "pz": "pz", "x": "1"},
	}, {
		name: "a put of a key that the prefix did not hold",
		setup: func(t *testing.T, _ string, s *Store) revs {
			return revs{"p/a": put(t, s, "p/a", "1")}
		},
		txn: func(revs) kv.Txn { return kv.Txn{Then: []kv.TxnOp{prefixOp("p/"), putOp("p/new", "2")}} },
		want: func(r revs) []kv.TxnChange {
			return []kv.TxnChange{{Key: "p/a", Op: kv.OpDelete, PrevRevision: r["p/a"]}, {Key: "p/new", Op: kv.OpPut}}
		},
		after: map[string]string{"p/new": "2"},
	}, {
		name: "an expired key that etcd still holds is absent",
		setup: func(t *testing.T, url string, s *Store) revs {
			return revs{"e": putExpired(t, url, s, "e", 0), "f": putExpired(t, url, s, "f", 0)}
		},
		txn: func(revs) kv.Txn { return kv.Txn{Then: []kv.TxnOp{delOp("e"), putOp("f", "new")}} },
		want: func(revs) []kv.TxnChange {
			return []kv.TxnChange{{Key: "f", Op: kv.OpPut}}
		},
		after: map[string]string{"f": "new"},
	}, {
		name: "an expired key under a prefix may be put",
		setup: func(t *testing.T, url string, s *Store) revs {
			var g leaseGrantResponse
			etcdRaw(t, url, "/v3/lease/grant", leaseGrantRequest{TTL: 60}, &g)
			return revs{"p/x": putExpired(t, url, s, "p/x", g.ID), "p/a": put(t, s, "p/a", "1")}
		},
		txn: func(revs) kv.Txn { return kv.Txn{Then: []kv.TxnOp{prefixOp("p/"), putOp("p/x", "new")}} },
		want: func(r revs) []kv.TxnChange {
			return []kv.TxnChange{{Key: "p/a", Op: kv.OpDelete, PrevRevision: r["p/a"]}, {Key: "p/x", Op: kv.OpPut}}
		},
		after: map[string]string{"p/x": "new"},
	}, {
		name: "conditions of every kind that hold",
		setup: func(t *testing.T, url string, s *Store) revs {
			return revs{"a": put(t, s, "a", "1"), "e": putExpired(t, url, s, "e", 0)}
		},
		txn: func(r revs) kv.Txn {
			return kv.Txn{
				If: []kv.Compare{
					{Key: "a", Cond: kv.IfRevision(r["a"])},
					{Key: "a", Cond: kv.IfExists()},
					{Key: "missing", Cond: kv.IfAbsent()},
					{Key: "e", Cond: kv.IfAbsent()},
					{Key: "a"},
				},
				Then: []kv.TxnOp{putOp("c", "1")},
			}
		},
		want:  func(revs) []kv.TxnChange { return []kv.TxnChange{{Key: "c", Op: kv.OpPut}} },
		after: map[string]string{"a": "1", "c": "1"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t, url, Options{Prefix: fmt.Sprintf("/txn-%d/", i)})
			r := tc.setup(t, url, s)
			before := etcdRevision(t, s)
			txn := tc.txn(r)
			res, err := s.Txn(context.Background(), txn)
			if err != nil {
				t.Fatal(err)
			}
			if res.Revision <= before {
				t.Errorf("revision %d, want one after %d", res.Revision, before)
			}
			if diff := cmp.Diff(tc.want(r), res.Changes); diff != "" {
				t.Errorf("changes (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.after, contents(t, s, "")); diff != "" {
				t.Errorf("keys afterwards (-want +got):\n%s", diff)
			}
			for _, op := range txn.Then {
				if op.Kind != kv.TxnPut {
					continue
				}
				got, err := s.Get(context.Background(), op.Key)
				if err != nil {
					t.Fatal(err)
				}
				want := kv.Entry{Key: op.Key, Value: op.Value, ContentType: op.ContentType, Revision: res.Revision}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("Get(%q) (-want +got):\n%s", op.Key, diff)
				}
			}
		})
	}
}

// A transaction that finds nothing to change writes nothing to etcd and
// answers etcd's revision; so does DeletePrefix of a prefix without keys.
func TestTxnNothingToChange(t *testing.T) {
	url := startEtcd(t)
	s := openStore(t, url, Options{})
	put(t, s, "a", "1")
	before := etcdRevision(t, s)
	res, err := s.Txn(context.Background(), kv.Txn{
		If: []kv.Compare{{Key: "a", Cond: kv.IfExists()}},
		// "\x00" covers the key kvsse writes for itself.
		Then: []kv.TxnOp{delOp("missing"), prefixOp("none/"), prefixOp("\x00")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(kv.TxnResult{Revision: before}, res); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
	for _, prefix := range []string{"none/", "a*", "\x00"} {
		res, err = s.DeletePrefix(context.Background(), prefix)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(kv.TxnResult{Revision: before}, res); diff != "" {
			t.Errorf("DeletePrefix(%q)'s result (-want +got):\n%s", prefix, diff)
		}
	}
	if after := etcdRevision(t, s); after != before {
		t.Errorf("etcd moved from revision %d to %d", before, after)
	}
}

func TestDeletePrefix(t *testing.T) {
	url := startEtcd(t)
	s := openStore(t, url, Options{})
	ra, rb := put(t, s, "p/a", "1"), put(t, s, "p/b", "2")
	put(t, s, "q", "3")
	res, err := s.DeletePrefix(context.Background(), "p/")
	if err != nil {
		t.Fatal(err)
	}
	want := []kv.TxnChange{{Key: "p/a", Op: kv.OpDelete, PrevRevision: ra}, {Key: "p/b", Op: kv.OpDelete, PrevRevision: rb}}
	if diff := cmp.Diff(want, res.Changes); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]string{"q": "3"}, contents(t, s, "")); diff != "" {
		t.Errorf("keys afterwards (-want +got):\n%s", diff)
	}
	_, err = s.DeletePrefix(context.Background(), "")
	var oe *kv.TxnOpError
	if !errors.As(err, &oe) || !errors.Is(err, kv.ErrInvalidTxn) || oe.Part != "then" || oe.Index != 0 {
		t.Errorf("DeletePrefix(\"\") = %v, want a *kv.TxnOpError at then[0] wrapping kv.ErrInvalidTxn", err)
	}
}

// When conditions fail, the error lists every one that failed, in If
// order, with the key's revision, and nothing changes.
func TestTxnFailed(t *testing.T) {
	url := startEtcd(t)
	s := openStore(t, url, Options{})
	ra, rb := put(t, s, "a", "1"), put(t, s, "b", "2")
	re := putExpired(t, url, s, "e", 0)
	put(t, s, "p/x", "3")
	before := etcdRevision(t, s)
	_, err := s.Txn(context.Background(), kv.Txn{
		If: []kv.Compare{
			{Key: "a", Cond: kv.IfRevision(ra)},   // holds
			{Key: "b", Cond: kv.IfRevision(ra)},   // b is at rb
			{Key: "missing", Cond: kv.IfExists()}, // missing
			{Key: "a", Cond: kv.IfAbsent()},       // a exists
			{Key: "e", Cond: kv.IfExists()},       // e expired
			{Key: "e", Cond: kv.IfRevision(re)},   // e expired
			{Key: "b", Cond: kv.IfExists()},       // holds
		},
		Then: []kv.TxnOp{putOp("a", "new"), delOp("b"), prefixOp("p/")},
	})
	var fe *kv.TxnFailedError
	if !errors.As(err, &fe) || !errors.Is(err, kv.ErrPrecondition) {
		t.Fatalf("Txn = %v, want a *kv.TxnFailedError matching kv.ErrPrecondition", err)
	}
	want := []kv.Failure{{Key: "b", Revision: rb}, {Key: "missing"}, {Key: "a", Revision: ra}, {Key: "e"}, {Key: "e"}}
	if diff := cmp.Diff(want, fe.Failed); diff != "" {
		t.Errorf("failed conditions (-want +got):\n%s", diff)
	}
	if after := etcdRevision(t, s); after != before {
		t.Errorf("etcd moved from revision %d to %d", before, after)
	}
	if diff := cmp.Diff(map[string]string{"a": "1", "b": "2", "p/x": "3"}, contents(t, s, "")); diff != "" {
		t.Errorf("keys afterwards (-want +got):\n%s", diff)
	}
}

// An invalid transaction is an error naming its part, and changes nothing.
func TestTxnInvalid(t *testing.T) {
	url := startEtcd(t)
	s := openStore(t, url, Options{})
	put(t, s, "p/a/b", "1")
	before := etcdRevision(t, s)
	type where struct {
		Part  string
		Index int
	}
	for _, tc := range []struct {
		name string
		txn  kv.Txn
		want where
		is   error
	}{
		{"a condition's key", kv.Txn{If: []kv.Compare{{Key: "x"}, {Key: "a//b"}}, Then: []kv.TxnOp{putOp("x", "1")}}, where{"if", 1}, kv.ErrInvalidKey},
		{"no change", kv.Txn{If: []kv.Compare{{Key: "x"}}}, where{"then", 0}, kv.ErrInvalidTxn},
		{"a put's key", kv.Txn{Then: []kv.TxnOp{putOp("x", "1"), putOp("x/", "1")}}, where{"then", 1}, kv.ErrInvalidKey},
		{"a delete's key", kv.Txn{Then: []kv.TxnOp{delOp("a*")}}, where{"then", 0}, kv.ErrInvalidKey},
		{"a negative time to live", kv.Txn{Then: []kv.TxnOp{{Kind: kv.TxnPut, Key: "x", TTL: -1}}}, where{"then", 0}, kv.ErrInvalidTxn},
		{"an empty prefix", kv.Txn{Then: []kv.TxnOp{putOp("x", "1"), prefixOp("")}}, where{"then", 1}, kv.ErrInvalidTxn},
		{"an unknown kind", kv.Txn{Then: []kv.TxnOp{{Kind: 9, Key: "x"}}}, where{"then", 0}, kv.ErrInvalidTxn},
		{"a put and a delete of one key", kv.Txn{Then: []kv.TxnOp{putOp("x", "1"), putOp("y", "1"), delOp("x")}}, where{"then", 2}, kv.ErrInvalidTxn},
		{"a put of a key a prefix removes", kv.Txn{Then: []kv.TxnOp{prefixOp("p/"), putOp("p/a/b", "2")}}, where{"then", 1}, kv.ErrInvalidTxn},
		{"a delete of a key a prefix removes", kv.Txn{Then: []kv.TxnOp{delOp("p/a/b"), prefixOp("p/a")}}, where{"then", 1}, kv.ErrInvalidTxn},
		{"prefixes that remove one key", kv.Txn{Then: []kv.TxnOp{prefixOp("p/"), prefixOp("p/a/")}}, where{"then", 1}, kv.ErrInvalidTxn},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Txn(context.Background(), tc.txn)
			var oe *kv.TxnOpError
			if !errors.As(err, &oe) || !errors.Is(err, tc.is) {
				t.Fatalf("Txn = %v, want a *kv.TxnOpError wrapping %v", err, tc.is)
			}
			if diff := cmp.Diff(tc.want, where{oe.Part, oe.Index}); diff != "" {
				t.Errorf("the part named (-want +got):\n%s", diff)
			}
		})
	}
	if after := etcdRevision(t, s); after != before {
		t.Errorf("etcd moved from revision %d to %d", before, after)
	}
	if diff := cmp.Diff(map[string]string{"p/a/b": "1"}, contents(t, s, "")); diff != "" {
		t.Errorf("keys afterwards (-want +got):\n%s", diff)
	}
}

// A transaction may make at most Options.MaxTxnOps changes, counting each
// key a prefix removes; one over it is refused whole.
func TestTxnMaxTxnOps(t *testing.T) {
	url := startEtcd(t)
	s := openStore(t, url, Options{MaxTxnOps: 3})
	for _, k := range []string{"p/1", "p/2", "q/1", "q/2", "q/3", "q/4", "q/5"} {
		put(t, s, k, k)
	}
	before := contents(t, s, "")
	for _, tc := range []struct {
		name string
		then []kv.TxnOp
		ops  int // 0: the transaction is not too large
	}{
		{"puts over the limit", []kv.TxnOp{putOp("x", "1"), putOp("y", "1"), delOp("z"), putOp("w", "1")}, 4},
		{"a prefix counts each key", []kv.TxnOp{putOp("x", "1"), prefixOp("p/"), putOp("y", "1")}, 4},
		{"a prefix over the limit by itself", []kv.TxnOp{prefixOp("q/")}, 5},
		{"at the limit", []kv.TxnOp{prefixOp("none/"), putOp("x", "1"), prefixOp("p/")}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := s.Txn(context.Background(), kv.Txn{Then: tc.then})
			if tc.ops == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if len(res.Changes) != 3 {
					t.Errorf("changes %v, want 3", res.Changes)
				}
				return
			}
			var se *kv.TxnSizeError
			if !errors.As(err, &se) || !errors.Is(err, kv.ErrTxnTooLarge) {
				t.Fatalf("Txn = %v, want a *kv.TxnSizeError matching kv.ErrTxnTooLarge", err)
			}
			want := kv.TxnSizeError{Ops: tc.ops, Max: 3, Limit: "MaxTxnOps"}
			if diff := cmp.Diff(want, *se); diff != "" {
				t.Errorf("error (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(before, contents(t, s, "")); diff != "" {
				t.Errorf("keys afterwards (-want +got):\n%s", diff)
			}
		})
	}
}

// etcd's own --max-txn-ops refuses a txn with more compares or changes; the
// error names it, and nothing changes, not even a lease remains.
func TestTxnEtcdMaxTxnOps(t *testing.T) {
	url := startEtcd(t, "--max-txn-ops", "8")
	s := openStore(t, url, Options{})
	var keys []string
	for i := range 9 {
		keys = append(keys, fmt.Sprintf("p/%d", i))
		put(t, s, keys[i], "1")
	}
	puts := func(n int) []kv.TxnOp {
		var ops []kv.TxnOp
		for i := range n {
			ops = append(ops, kv.TxnOp{Kind: kv.TxnPut, Key: fmt.Sprintf("x/%d", i), TTL: time.Duration(i+1) * time.Minute})
		}
		return ops
	}
	var conds []kv.Compare
	for _, k := range keys {
		conds = append(conds, kv.Compare{Key: k, Cond: kv.IfExists()})
	}
	before := contents(t, s, "")
	for _, tc := range []struct {
		name string
		txn  kv.Txn
	}{
		{"puts", kv.Txn{Then: puts(9)}},
		{"the keys of a prefix", kv.Txn{Then: []kv.TxnOp{prefixOp("p/")}}},
		{"conditions", kv.Txn{If: conds, Then: puts(1)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Txn(context.Background(), tc.txn)
			var se *kv.TxnSizeError
			if !errors.As(err, &se) || !errors.Is(err, kv.ErrTxnTooLarge) {
				t.Fatalf("Txn = %v, want a *kv.TxnSizeError matching kv.ErrTxnTooLarge", err)
			}
			want := kv.TxnSizeError{Ops: 9, Max: 128, Limit: "etcd's --max-txn-ops"}
			if diff := cmp.Diff(want, *se); diff != "" {
				t.Errorf("error (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(before, contents(t, s, "")); diff != "" {
				t.Errorf("keys afterwards (-want +got):\n%s", diff)
			}
			var leases struct {
				Leases []struct {
					ID string `json:"ID"`
				} `json:"leases"`
			}
			etcdRaw(t, url, "/v3/lease/leases", struct{}{}, &leases)
			if len(leases.Leases) != 0 {
				t.Errorf("leases left in etcd: %v", leases.Leases)
			}
		})
	}
	res, err := s.Txn(context.Background(), kv.Txn{Then: puts(8)})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Changes) != 8 {
		t.Errorf("changes %v, want 8", res.Changes)
	}
}
