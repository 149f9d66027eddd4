package kv_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"kvsse/kv"
)

// The keys and prefixes that fuzzed transactions name: a few that
// overlap, and invalid ones.
var (
	fuzzKeys     = []string{"a", "b", "p/a", "p/b", "p/c/d", "q", "bad//key"}
	fuzzPrefixes = []string{"p/", "p", "a", "p/c/", "q", "", "p\x01", "z"}
	fuzzKinds    = []kv.TxnKind{kv.TxnPut, kv.TxnPut, kv.TxnPut, kv.TxnDelete, kv.TxnDelete, kv.TxnDeletePrefix, kv.TxnDeletePrefix, 0}
)

// fuzzBytes hands out the bytes of a fuzz input, then zeros.
type fuzzBytes []byte

func (b *fuzzBytes) next() int {
	if len(*b) == 0 {
		return 0
	}
	v := (*b)[0]
	*b = (*b)[1:]
	return int(v)
}

// FuzzTxn runs random transactions, valid or not, on a store holding
// random keys with random limits, and checks the answer and the store
// after it against a model written from the contract: Txn never panics,
// and does what the model does.
func FuzzTxn(f *testing.F) {
	f.Add([]byte{0x3f, 2, 0, 0, 2, 0, 0, 1, 2, 3, 0, 1, 2, 1, 1})
	f.Add([]byte{0x0f, 5, 3, 1, 0, 1, 1, 2, 2, 3, 2, 1, 0, 0, 5, 2})
	f.Add([]byte{0x15, 1, 0, 2, 3, 0, 1, 3, 0, 2, 0, 2, 3, 2, 1, 0, 3})
	f.Add([]byte{0x2a, 3, 4, 9, 1, 2, 3, 1, 4, 0, 0, 2, 6, 1, 3})
	f.Fuzz(func(t *testing.T, data []byte) { checkTxn(t, data) })
}

// checkTxn runs the transaction that data describes, as FuzzTxn says, and
// returns what its error must be.
func checkTxn(t *testing.T, data []byte) string {
	in := fuzzBytes(data)
	present := in.next()
	opts := kv.Options{MaxTxnOps: 1 + in.next()%6, MaxKeys: int64(in.next() % 8), MaxBytes: int64(in.next()%4) * 4}
	// The limits apply from the transaction on: the keys are written
	// before, by a store without them.
	opts.Dir = t.TempDir()
	s, err := kv.Open(kv.Options{Dir: opts.Dir})
	if err != nil {
		t.Fatal(err)
	}
	m := newTxnModel(opts)
	for i, k := range fuzzKeys[:6] {
		if present&(1<<i) != 0 {
			put(t, s, k, k[:1])
			m.put(k, k[:1])
		}
	}
	closeStore(t, s)
	if s, err = kv.Open(opts); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var txn kv.Txn
	for range in.next() % 4 {
		c := kv.Compare{Key: fuzzKeys[in.next()%len(fuzzKeys)]}
		switch in.next() % 4 {
		case 0:
			c.Cond = kv.IfAbsent()
		case 1:
			c.Cond = kv.IfExists()
		case 2:
			c.Cond = kv.IfRevision(int64(in.next() % 8))
		}
		txn.If = append(txn.If, c)
	}
	for range in.next() % 6 {
		op := kv.TxnOp{Kind: fuzzKinds[in.next()%len(fuzzKinds)]}
		switch op.Kind {
		case kv.TxnPut:
			op.Value = []byte(strings.Repeat("v", in.next()%6))
			op.Key = fuzzKeys[in.next()%len(fuzzKeys)]
		case kv.TxnDeletePrefix:
			op.Key = fuzzPrefixes[in.next()%len(fuzzPrefixes)]
		default:
			op.Key = fuzzKeys[in.next()%len(fuzzKeys)]
		}
		txn.Then = append(txn.Then, op)
	}

	got, err := s.Txn(context.Background(), txn)
	want, wantErr := m.txn(txn)
	if diff := cmp.Diff(wantErr, describeTxnErr(err)); diff != "" {
		t.Fatalf("Txn(%+v) error: %v (-want +got):\n%s", txn, err, diff)
	}
	if err == nil {
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("Txn(%+v) (-want +got):\n%s", txn, diff)
		}
	}
	if diff := cmp.Diff(m.state(), stateOf(t, s)); diff != "" {
		t.Fatalf("after Txn(%+v): state (-want +got):\n%s", txn, diff)
	}
	if s.Revision() != m.rev {
		t.Fatalf("after Txn(%+v): Revision %d, want %d", txn, s.Revision(), m.rev)
	}
	return wantErr
}

// describeTxnErr says what a Txn error is, in the words of txnModel.
func describeTxnErr(err error) string {
	var (
		opErr  *kv.TxnOpError
		failed *kv.TxnFailedError
		size   *kv.TxnSizeError
		full   *kv.FullError
	)
	switch {
	case err == nil:
		return ""
	case errors.As(err, &opErr) && errors.Is(err, kv.ErrInvalidKey):
		return fmt.Sprintf("invalid key %s[%d]", opErr.Part, opErr.Index)
	case errors.As(err, &opErr) && errors.Is(err, kv.ErrInvalidTxn):
		return fmt.Sprintf("invalid txn %s[%d]", opErr.Part, opErr.Index)
	case errors.As(err, &failed):
		return fmt.Sprintf("failed %v", failed.Failed)
	case errors.As(err, &size):
		return fmt.Sprintf("too large %d of %d", size.Ops, size.Max)
	case errors.As(err, &full):
		return "full " + full.Limit
	}
	return "other " + err.Error()
}

// txnModel is a store as the contract describes it, without expiry.
type txnModel struct {
	opts kv.Options
	keys map[string]kv.Entry
	rev  int64
}

func newTxnModel(opts kv.Options) *txnModel {
	return &txnModel{opts: opts, keys: make(map[string]kv.Entry)}
}

func (m *txnModel) put(key, value string) {
	m.rev++
	m.keys[key] = kv.Entry{Key: key, Value: []byte(value), Revision: m.rev}
}

func (m *txnModel) state() map[string]string {
	out := make(map[string]string)
	for k, e := range m.keys {
		out[k] = fmt.Sprintf("%s@%d", e.Value, e.Revision)
	}
	return out
}

// txn does what Txn must do, and says what its error must be.
func (m *txnModel) txn(t kv.Txn) (kv.TxnResult, string) {
	for i, c := range t.If {
		if kv.ValidateKey(c.Key) != nil {
			return kv.TxnResult{}, fmt.Sprintf("invalid key if[%d]", i)
		}
	}
	if len(t.Then) == 0 {
		return kv.TxnResult{}, "invalid txn then[0]"
	}
	for i, op := range t.Then {
		switch {
		case op.Kind == kv.TxnDeletePrefix && op.Key == "":
			return kv.TxnResult{}, fmt.Sprintf("invalid txn then[%d]", i)
		case op.Kind == kv.TxnDeletePrefix && strings.ContainsFunc(op.Key, func(r rune) bool { return r < 0x20 }):
			return kv.TxnResult{}, fmt.Sprintf("invalid key then[%d]", i)
		case op.Kind == kv.TxnDeletePrefix:
		case op.Kind != kv.TxnPut && op.Kind != kv.TxnDelete:
			return kv.TxnResult{}, fmt.Sprintf("invalid txn then[%d]", i)
		case kv.ValidateKey(op.Key) != nil:
			return kv.TxnResult{}, fmt.Sprintf("invalid key then[%d]", i)
		case slices.ContainsFunc(t.Then[:i], func(o kv.TxnOp) bool { return o.Kind != kv.TxnDeletePrefix && o.Key == op.Key }):
			return kv.TxnResult{}, fmt.Sprintf("invalid txn then[%d]", i)
		}
	}
	var failed []kv.Failure
	for _, c := range t.If {
		e, ok := m.keys[c.Key]
		var cur *kv.Entry
		if ok {
			cur = &e
		}
		if !c.Cond.Holds(cur) {
			failed = append(failed, kv.Failure{Key: c.Key, Revision: e.Revision})
		}
	}
	if failed != nil {
		return kv.TxnResult{}, fmt.Sprintf("failed %v", failed)
	}
	touched := make([][]string, len(t.Then)) // the keys each op changes or names
	total := 0
	for i, op := range t.Then {
		if op.Kind != kv.TxnDeletePrefix {
			touched[i] = []string{op.Key}
			total++
			continue
		}
		for k := range m.keys {
			if strings.HasPrefix(k, op.Key) {
				touched[i] = append(touched[i], k)
			}
		}
		slices.Sort(touched[i])
		total += len(touched[i])
	}
	if total > m.opts.MaxTxnOps {
		return kv.TxnResult{}, fmt.Sprintf("too large %d of %d", total, m.opts.MaxTxnOps)
	}
	for i := range t.Then {
		for j := range i {
			for _, k := range touched[i] {
				if slices.Contains(touched[j], k) {
					return kv.TxnResult{}, fmt.Sprintf("invalid txn then[%d]", i)
				}
			}
		}
	}
	var keys, bytes int64
	var held, heldBytes int64
	for _, e := range m.keys {
		held++
		heldBytes += int64(len(e.Value))
	}
	res := kv.TxnResult{Revision: m.rev + 1}
	next := make(map[string]kv.Entry)
	for k, e := range m.keys {
		next[k] = e
	}
	for i, op := range t.Then {
		for _, k := range touched[i] {
			e, ok := m.keys[k]
			if ok {
				keys--
				bytes -= int64(len(e.Value))
			}
			if op.Kind == kv.TxnPut {
				keys++
				bytes += int64(len(op.Value))
				next[k] = kv.Entry{Key: k, Value: op.Value, Revision: m.rev + 1}
				res.Changes = append(res.Changes, kv.TxnChange{Key: k, Op: kv.OpPut, PrevRevision: e.Revision})
			} else if ok {
				delete(next, k)
				res.Changes = append(res.Changes, kv.TxnChange{Key: k, Op: kv.OpDelete, PrevRevision: e.Revision})
			}
		}
	}
	if res.Changes == nil {
		return kv.TxnResult{Revision: m.rev}, ""
	}
	if keys > 0 && m.opts.MaxKeys > 0 && held+keys > m.opts.MaxKeys {
		return kv.TxnResult{}, "full " + kv.LimitKeys
	}
	if bytes > 0 && m.opts.MaxBytes > 0 && heldBytes+bytes > m.opts.MaxBytes {
		return kv.TxnResult{}, "full " + kv.LimitBytes
	}
	m.keys = next
	m.rev++
	return res, ""
}
