package etcd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"kvsse/kv"
)

// Txn carries out t as one etcd txn, so that all its changes take etcd's
// revision of that txn and etcd's watch delivers them together. It keeps
// the contract of kv.Store's Txn:
//
//   - t is checked first: an invalid key, an empty Then, a negative TTL,
//     an empty prefix, an unknown kind or two ops on one key is a
//     *kv.TxnOpError, more puts and deletes than Options.MaxTxnOps a
//     *kv.TxnSizeError, and nothing is asked of etcd.
//   - The conditions' keys and the keys under each prefix are read at one
//     revision. A prefix's key that another op changes too (two ops on
//     one key) is a *kv.TxnOpError naming the later op; more changes
//     than MaxTxnOps, counting each key a prefix removes, a
//     *kv.TxnSizeError; then conditions that do not hold a
//     *kv.TxnFailedError listing each, in If order, with the key's
//     revision there (0: missing or expired).
//   - The txn compares that each condition's key is still as read and
//     that no key under a prefix was created or changed since, so that
//     the conditions are decided, and the keys a prefix removes known,
//     on the state the txn commits on. When that compare fails, the same
//     decision is taken again on the state etcd answers with, up to
//     maxTxnAttempts times; then the error wraps kv.ErrUnavailable.
//   - A TTL is an etcd lease (one for each whole number of seconds that
//     the TTLs round up to), granted once the conditions hold, and the
//     exact expiry is kept with the value, as Put does.
//   - etcd's refusal of a txn over its --max-txn-ops is a
//     *kv.TxnSizeError naming that limit, with Ops the longest list of
//     the txn (compares or changes) and Max 128: etcd's default, as etcd
//     does not say its setting.
//
// A transaction that finds nothing to change (deletes of missing keys,
// prefixes that match nothing) takes no revision, and its result carries
// etcd's revision. A delete of a key whose time to live has run out but
// that etcd still holds is no change in the result; etcd deletes it, and
// watchers see it expire.
func (s *Store) Txn(ctx context.Context, t kv.Txn) (kv.TxnResult, error) {
	res, err := s.transact(ctx, t)
	if err != nil {
		return kv.TxnResult{}, fmt.Errorf("kv: txn: %w", err)
	}
	return res, nil
}

// DeletePrefix deletes every key that starts with prefix (not empty) as
// a Txn of one TxnDeletePrefix: its Changes are the keys deleted, in key
// order.
func (s *Store) DeletePrefix(ctx context.Context, prefix string) (kv.TxnResult, error) {
	res, err := s.transact(ctx, kv.Txn{Then: []kv.TxnOp{{Kind: kv.TxnDeletePrefix, Key: prefix}}})
	if err != nil {
		return kv.TxnResult{}, fmt.Errorf("kv: delete prefix %q: %w", prefix, err)
	}
	return res, nil
}

// maxTxnAttempts bounds how often a transaction is decided again because
// a key it read changed before its txn reached etcd.
const maxTxnAttempts = 8

// etcdMaxTxnOps is etcd's default --max-txn-ops, named when etcd refuses
// a txn as too large.
const etcdMaxTxnOps = 128

// transact is Txn without the error's context.
func (s *Store) transact(ctx context.Context, t kv.Txn) (kv.TxnResult, error) {
	p, err := s.plan(t)
	if err != nil {
		return kv.TxnResult{}, err
	}
	var st txnState
	switch {
	case len(p.reads) > 0:
		var r txnResponse
		if err := s.call(ctx, "/v3/kv/txn", txnRequest{Success: p.reads}, &r); err != nil {
			return kv.TxnResult{}, etcdTxnError(err, len(p.reads))
		}
		if st, err = s.state(p, &r); err != nil {
			return kv.TxnResult{}, err
		}
	case p.ops == 0:
		// Only prefixes that no key starts with: nothing to do, at
		// etcd's revision.
		if st.rev, err = s.currentRevision(ctx); err != nil {
			return kv.TxnResult{}, err
		}
	}
	leases := make(map[int64]txnLease)
	for attempt := 1; ; attempt++ {
		if err := s.decide(ctx, p, &st); err != nil {
			s.revoke(leases)
			return kv.TxnResult{}, err
		}
		if p.ops == 0 && st.removes() == 0 {
			// Every condition holds and no prefix matches a key at
			// st.rev: the transaction is done, there.
			return kv.TxnResult{Revision: st.rev}, nil
		}
		if err := s.grant(ctx, p, leases); err != nil {
			s.revoke(leases)
			return kv.TxnResult{}, err
		}
		req := txnRequest{Compare: s.compares(p, &st), Success: s.changes(p, &st, leases), Failure: p.reads}
		var r txnResponse
		if err := s.call(ctx, "/v3/kv/txn", req, &r); err != nil {
			err = etcdTxnError(err, max(len(req.Compare), len(req.Success), len(req.Failure)))
			if errors.Is(err, kv.ErrTxnTooLarge) {
				s.revoke(leases) // refused: nothing uses them
			}
			return kv.TxnResult{}, err
		}
		if r.Succeeded {
			return s.result(p, &st, &r)
		}
		if attempt == maxTxnAttempts {
			s.revoke(leases)
			return kv.TxnResult{}, fmt.Errorf("%w: the keys the transaction reads changed before it reached etcd, %d times", kv.ErrUnavailable, attempt)
		}
		// A key read changed: etcd answered the reads again, at the
		// revision that failed the compare.
		if st, err = s.state(p, &r); err != nil {
			return kv.TxnResult{}, err
		}
	}
}

// txnPlan is a transaction checked for what needs no reading.
type txnPlan struct {
	t    kv.Txn
	keys map[string]int // the key of each put and delete: its index in Then
	ops  int            // puts and deletes
	// prefixes are the indexes in Then of the TxnDeletePrefix ops that
	// may match a key, in order.
	prefixes []int
	// reads are the ranges of the conditions' keys, in If order, then
	// of the keys under each of prefixes (keys only).
	reads []requestOp
}

// plan checks t as far as it can without etcd, and lists what to read.
func (s *Store) plan(t kv.Txn) (*txnPlan, error) {
	p := &txnPlan{t: t, keys: make(map[string]int)}
	for i, c := range t.If {
		if err := kv.ValidateKey(c.Key); err != nil {
			return nil, &kv.TxnOpError{Part: "if", Index: i, Err: err}
		}
		p.reads = append(p.reads, requestOp{Range: &rangeRequest{Key: s.etcdKey(c.Key)}})
	}
	if len(t.Then) == 0 {
		return nil, &kv.TxnOpError{Part: "then", Index: 0, Err: fmt.Errorf("%w: no change", kv.ErrInvalidTxn)}
	}
	for i, op := range t.Then {
		if err := s.planOp(p, i, op); err != nil {
			return nil, &kv.TxnOpError{Part: "then", Index: i, Err: err}
		}
	}
	if p.ops > s.opts.MaxTxnOps {
		return nil, &kv.TxnSizeError{Ops: p.ops, Max: s.opts.MaxTxnOps, Limit: "MaxTxnOps"}
	}
	return p, nil
}

// planOp checks Then[i], op, and adds it to p.
func (s *Store) planOp(p *txnPlan, i int, op kv.TxnOp) error {
	switch op.Kind {
	case kv.TxnPut, kv.TxnDelete:
		if err := kv.ValidateKey(op.Key); err != nil {
			return err
		}
		if op.TTL < 0 {
			return fmt.Errorf("%w: negative time to live %v", kv.ErrInvalidTxn, op.TTL)
		}
		if j, ok := p.keys[op.Key]; ok {
			return fmt.Errorf("%w: key %q is also changed by then[%d]", kv.ErrInvalidTxn, op.Key, j)
		}
		p.keys[op.Key] = i
		p.ops++
	case kv.TxnDeletePrefix:
		if op.Key == "" {
			return fmt.Errorf("%w: empty prefix", kv.ErrInvalidTxn)
		}
		if noKeyStartsWith(op.Key) {
			return nil // it deletes nothing
		}
		start := s.etcdKey(op.Key)
		// One key more than the limit is enough to tell that a prefix
		// is over it; the range's count says by how much.
		p.reads = append(p.reads, requestOp{Range: &rangeRequest{Key: start, RangeEnd: rangeEnd(start), KeysOnly: true, Limit: int64(s.opts.MaxTxnOps) + 1}})
		p.prefixes = append(p.prefixes, i)
	default:
		return fmt.Errorf("%w: unknown kind of change %d", kv.ErrInvalidTxn, op.Kind)
	}
	return nil
}

// noKeyStartsWith reports whether prefix holds a byte that no key holds
// (a control character or "*"), so that it matches no key. Reading it
// would find only what is not a kvsse key, such as fenceKey.
func noKeyStartsWith(prefix string) bool {
	return strings.ContainsFunc(prefix, func(r rune) bool { return r < 0x20 || r == 0x7f || r == '*' })
}

// txnState is the state of the keys a transaction reads, at a revision.
type txnState struct {
	rev   int64
	conds []condState // for each condition of If
	// prefixKeys are, for each of the plan's prefixes, the kvsse keys
	// under it in etcd, in key order (expired ones that etcd still holds
	// included), as far as the read went; prefixCount is how many keys
	// there are in all when the read did not reach the end, else -1.
	prefixKeys  [][]keyValue
	prefixCount []int64
}

// condState is a condition's key: its entry when it is live, and its
// mod_revision in etcd (0: absent), expired or not.
type condState struct {
	live *kv.Entry
	mod  int64
}

// removes is how many keys the prefixes remove.
func (st *txnState) removes() int {
	n := 0
	for i, keys := range st.prefixKeys {
		if c := st.prefixCount[i]; c >= 0 {
			n += int(c)
		} else {
			n += len(keys)
		}
	}
	return n
}

// state reads the answers to p.reads.
func (s *Store) state(p *txnPlan, r *txnResponse) (txnState, error) {
	if len(r.Responses) != len(p.reads) {
		return txnState{}, fmt.Errorf("etcd: txn answered %d reads of %d", len(r.Responses), len(p.reads))
	}
	st := txnState{rev: r.Header.Revision}
	now := s.opts.Now().UnixNano()
	for i, resp := range r.Responses {
		rr := resp.Range
		if rr == nil {
			return txnState{}, fmt.Errorf("etcd: txn answered read %d without a range", i)
		}
		if i < len(p.t.If) {
			var cs condState
			if len(rr.KVs) > 0 {
				cs.mod = rr.KVs[0].ModRevision
				if e, ok := s.entry(&rr.KVs[0], now); ok {
					cs.live = &e
				}
			}
			st.conds = append(st.conds, cs)
			continue
		}
		var keys []keyValue
		for _, x := range rr.KVs {
			if _, ok := cutKey(x.Key, s.prefix); ok {
				keys = append(keys, x)
			}
		}
		count := int64(-1)
		if rr.More {
			count = rr.Count
		}
		st.prefixKeys = append(st.prefixKeys, keys)
		st.prefixCount = append(st.prefixCount, count)
	}
	return st, nil
}

// decide checks the transaction on st: that no key is changed twice,
// its size, its conditions. A key under a prefix that another op changes
// too is left out of the prefix when it has expired.
func (s *Store) decide(ctx context.Context, p *txnPlan, st *txnState) error {
	by := make(map[string]int, len(p.keys)) // the op that changes a key
	for k, i := range p.keys {
		by[k] = i
	}
	for n, j := range p.prefixes {
		var keys []keyValue
		for _, x := range st.prefixKeys[n] {
			key, _ := cutKey(x.Key, s.prefix)
			i, twice := by[key]
			if twice && x.Lease != 0 {
				expired, err := s.expiredAt(ctx, x.Key, st.rev)
				if err != nil {
					return err
				}
				if expired {
					continue // absent to kvsse: the other op may have it
				}
			}
			if twice {
				return &kv.TxnOpError{Part: "then", Index: max(i, j),
					Err: fmt.Errorf("%w: key %q is changed by then[%d] and then[%d]", kv.ErrInvalidTxn, key, min(i, j), max(i, j))}
			}
			by[key] = j
			keys = append(keys, x)
		}
		st.prefixKeys[n] = keys
	}
	if n := p.ops + st.removes(); n > s.opts.MaxTxnOps {
		return &kv.TxnSizeError{Ops: n, Max: s.opts.MaxTxnOps, Limit: "MaxTxnOps"}
	}
	var failed []kv.Failure
	for i, c := range p.t.If {
		if live := st.conds[i].live; !c.Cond.Holds(live) {
			f := kv.Failure{Key: c.Key}
			if live != nil {
				f.Revision = live.Revision
			}
			failed = append(failed, f)
		}
	}
	if failed != nil {
		return &kv.TxnFailedError{Failed: failed}
	}
	return nil
}

// expiredAt reports whether the key k of etcd, which holds a lease, had
// expired for kvsse at revision rev.
func (s *Store) expiredAt(ctx context.Context, k []byte, rev int64) (bool, error) {
	var r rangeResponse
	if err := s.call(ctx, "/v3/kv/range", rangeRequest{Key: k, Revision: rev}, &r); err != nil {
		return false, err
	}
	if len(r.KVs) == 0 {
		return true, nil
	}
	_, ok := s.entry(&r.KVs[0], s.opts.Now().UnixNano())
	return !ok, nil
}

// txnLease is a lease granted for a transaction's puts.
type txnLease struct {
	id int64
	at time.Time // when it was asked for: the TTLs count from then
}

// grant grants the leases of p's puts that leases (by whole seconds)
// lacks.
func (s *Store) grant(ctx context.Context, p *txnPlan, leases map[int64]txnLease) error {
	for _, op := range p.t.Then {
		if op.Kind != kv.TxnPut || op.TTL <= 0 {
			continue
		}
		secs := leaseSeconds(op.TTL)
		if _, ok := leases[secs]; ok {
			continue
		}
		at := s.opts.Now()
		var g leaseGrantResponse
		if err := s.call(ctx, "/v3/lease/grant", leaseGrantRequest{TTL: secs}, &g); err != nil {
			return fmt.Errorf("lease of %d s: %w", secs, err)
		}
		leases[secs] = txnLease{id: g.ID, at: at}
	}
	return nil
}

// revoke revokes leases that no key uses, as a courtesy to etcd: they
// would expire by themselves. It must not be called when a txn that uses
// them may have been carried out.
func (s *Store) revoke(leases map[int64]txnLease) {
	for _, l := range leases {
		var r struct{}
		if err := s.call(s.ctx, "/v3/lease/revoke", leaseRevokeRequest{ID: l.id}, &r); err != nil {
			s.opts.Logger.Debug("etcd lease not revoked", "lease", l.id, "err", err)
		}
	}
}

// leaseSeconds is the TTL of the lease of a key with time to live ttl:
// whole seconds, rounded up (etcd raises it to its minimum).
func leaseSeconds(ttl time.Duration) int64 {
	return int64((ttl + time.Second - 1) / time.Second)
}

// compares are the txn's compares: each condition's key is as read, and
// no key under a prefix changed (or appeared) after st.rev.
func (s *Store) compares(p *txnPlan, st *txnState) []compare {
	var cmp []compare
	for i, c := range p.t.If {
		cmp = append(cmp, compare{Key: s.etcdKey(c.Key), Result: "EQUAL", Target: "MOD", ModRevision: st.conds[i].mod})
	}
	for n := range p.prefixes {
		r := p.reads[len(p.t.If)+n].Range
		cmp = append(cmp, compare{Key: r.Key, RangeEnd: r.RangeEnd, Result: "LESS", Target: "MOD", ModRevision: st.rev + 1})
	}
	return cmp
}

// changes are the txn's changes, in the order of Then, a prefix's keys in
// key order: each asks for the key's previous state.
func (s *Store) changes(p *txnPlan, st *txnState, leases map[int64]txnLease) []requestOp {
	var ops []requestOp
	n := 0 // the next of p.prefixes
	for i, op := range p.t.Then {
		switch {
		case op.Kind == kv.TxnPut:
			var expires, lease int64
			if op.TTL > 0 {
				l := leases[leaseSeconds(op.TTL)]
				expires, lease = l.at.Add(op.TTL).UnixNano(), l.id
			}
			value := encodeValue(op.Value, op.ContentType, expires)
			ops = append(ops, requestOp{Put: &putRequest{Key: s.etcdKey(op.Key), Value: value, Lease: lease, PrevKV: true}})
		case op.Kind == kv.TxnDelete:
			ops = append(ops, requestOp{Delete: &deleteRequest{Key: s.etcdKey(op.Key), PrevKV: true}})
		case n < len(p.prefixes) && p.prefixes[n] == i:
			// Key by key rather than the range: the compares keep the
			// range as read, and a put of a key in it that was not there
			// stays.
			for _, x := range st.prefixKeys[n] {
				ops = append(ops, requestOp{Delete: &deleteRequest{Key: x.Key, PrevKV: true}})
			}
			n++
		}
	}
	return ops
}

// result reads what the txn r of p on st did.
func (s *Store) result(p *txnPlan, st *txnState, r *txnResponse) (kv.TxnResult, error) {
	res := kv.TxnResult{Revision: r.Header.Revision}
	k, n := 0, 0 // the next response, the next of p.prefixes
	next := func() (*responseOp, error) {
		if k == len(r.Responses) {
			return nil, fmt.Errorf("etcd: txn answered %d responses, fewer than its changes", len(r.Responses))
		}
		k++
		return &r.Responses[k-1], nil
	}
	deleted := func(key string) error {
		resp, err := next()
		if err != nil {
			return err
		}
		if resp.Delete == nil {
			return fmt.Errorf("etcd: txn answered a delete of %q with no delete", key)
		}
		if len(resp.Delete.PrevKVs) > 0 {
			if prev := s.live(&resp.Delete.PrevKVs[0]); prev != 0 {
				res.Changes = append(res.Changes, kv.TxnChange{Key: key, Op: kv.OpDelete, PrevRevision: prev})
			}
		}
		return nil
	}
	for i, op := range p.t.Then {
		switch {
		case op.Kind == kv.TxnPut:
			resp, err := next()
			if err != nil {
				return kv.TxnResult{}, err
			}
			if resp.Put == nil {
				return kv.TxnResult{}, fmt.Errorf("etcd: txn answered a put of %q with no put", op.Key)
			}
			res.Changes = append(res.Changes, kv.TxnChange{Key: op.Key, Op: kv.OpPut, PrevRevision: s.live(resp.Put.PrevKV)})
		case op.Kind == kv.TxnDelete:
			if err := deleted(op.Key); err != nil {
				return kv.TxnResult{}, err
			}
		case n < len(p.prefixes) && p.prefixes[n] == i:
			for _, x := range st.prefixKeys[n] {
				key, _ := cutKey(x.Key, s.prefix)
				if err := deleted(key); err != nil {
					return kv.TxnResult{}, err
				}
			}
			n++
		}
	}
	return res, nil
}

// etcdTxnError is err, or, when etcd refused a txn of ops operations (the
// longest of its lists) as more than its --max-txn-ops, a
// *kv.TxnSizeError.
func etcdTxnError(err error, ops int) error {
	var ge *gatewayError
	if errors.As(err, &ge) && ge.Code == codeInvalidArgument && strings.Contains(ge.Message, "too many operations in txn request") {
		return &kv.TxnSizeError{Ops: ops, Max: etcdMaxTxnOps, Limit: "etcd's --max-txn-ops"}
	}
	return err
}
