package kv

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// A Txn is a transaction: conditions on keys and changes to keys, applied
// as one write. When every condition holds, every change takes the same
// revision and they are logged, synced, made visible and published
// together: no reader (Get, List, a snapshot, a stream) ever sees part of
// them, also across a crash. When a condition does not hold, nothing
// changes.
type Txn struct {
	If   []Compare
	Then []TxnOp
}

// Compare is a condition of a Txn: Cond must hold for Key's current
// entry (IfRevision, IfAbsent for revision 0, IfExists or IfAbsent for
// exists true or false).
type Compare struct {
	Key  string
	Cond Cond
}

// TxnKind is the kind of a TxnOp.
type TxnKind uint8

// The kinds of TxnOp.
const (
	TxnPut          TxnKind = iota + 1 // set Key to Value
	TxnDelete                          // delete Key, if it exists
	TxnDeletePrefix                    // delete every key starting with Key (non-empty)
)

// TxnOp is one change of a Txn. A TxnDelete of a missing key and a
// TxnDeletePrefix that matches nothing change nothing.
type TxnOp struct {
	Kind        TxnKind
	Key         string        // the key; the prefix of a TxnDeletePrefix
	Value       []byte        // TxnPut: kept by the store, not to be modified afterwards
	ContentType string        // TxnPut
	TTL         time.Duration // TxnPut: > 0: the key expires this long after the write
}

// TxnResult is what a transaction did.
type TxnResult struct {
	// Revision is the revision its changes took, or the store's revision
	// when it changed nothing (it then takes none).
	Revision int64
	// Changes are its changes, in the order of Then, the keys of a
	// TxnDeletePrefix in key order.
	Changes []TxnChange
}

// TxnChange is one change a transaction made.
type TxnChange struct {
	Key          string
	Op           Op    // OpPut or OpDelete
	PrevRevision int64 // the key's revision before; 0 when it was absent
}

// More errors of transactions, to be tested with errors.Is.
var (
	// ErrInvalidTxn: a transaction is malformed: no change, two changes
	// of one key (a TxnDeletePrefix counts for every key it removes), an
	// empty prefix, a negative time to live, an unknown kind of change.
	// The error is a *TxnOpError naming the part.
	ErrInvalidTxn = errors.New("invalid transaction")
	// ErrTxnTooLarge: a transaction's changes, with the keys its
	// TxnDeletePrefix ops remove, are more than the store allows
	// (Options.MaxTxnOps; with etcd, etcd's --max-txn-ops). The error is
	// a *TxnSizeError.
	ErrTxnTooLarge = errors.New("transaction too large")
)

// TxnOpError names the part of a transaction that is wrong: Part is "if"
// or "then" and Index the position in it. Err wraps ErrInvalidKey,
// ErrInvalidTxn or another sentinel.
type TxnOpError struct {
	Part  string
	Index int
	Err   error
}

func (e *TxnOpError) Error() string { return fmt.Sprintf("%s[%d]: %v", e.Part, e.Index, e.Err) }
func (e *TxnOpError) Unwrap() error { return e.Err }

// TxnSizeError is the error of a transaction over a size limit: it
// matches ErrTxnTooLarge. Ops is how many changes it would make (the keys
// its TxnDeletePrefix ops remove included) and Max the limit; Limit names
// it for people ("MaxTxnOps", or etcd's "--max-txn-ops").
type TxnSizeError struct {
	Ops, Max int
	Limit    string
}

func (e *TxnSizeError) Error() string {
	return fmt.Sprintf("%v: %d changes, the most %s allows is %d", ErrTxnTooLarge, e.Ops, e.Limit, e.Max)
}

// Is makes a TxnSizeError match ErrTxnTooLarge.
func (e *TxnSizeError) Is(target error) bool { return target == ErrTxnTooLarge }

// Failure is a condition of a transaction that did not hold: the key and
// its current revision (0: missing).
type Failure struct {
	Key      string
	Revision int64
}

// TxnFailedError is the error of a transaction whose conditions did not
// all hold: it matches ErrPrecondition, and lists every failed condition
// in the order of If, with the key's current revision.
type TxnFailedError struct {
	Failed []Failure
}

func (e *TxnFailedError) Error() string {
	var b strings.Builder
	b.WriteString(ErrPrecondition.Error())
	for i, f := range e.Failed {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "key %q is at revision %d", f.Key, f.Revision)
	}
	return b.String()
}

// Is makes a TxnFailedError match ErrPrecondition.
func (e *TxnFailedError) Is(target error) bool { return target == ErrPrecondition }

// DefaultMaxTxnOps is the most changes a transaction may make when
// Options.MaxTxnOps is 0.
const DefaultMaxTxnOps = 1000

// Txn runs t: when every condition of t.If holds, the changes of t.Then
// are made as one write, once it is durable, and TxnResult says what they
// were; otherwise nothing changes. The store keeps the values of puts: the
// caller must not modify them afterwards.
//
// Every condition and every op reads the keys as they are before the
// transaction (ops never see each other's changes; two ops may not change
// one key). A key past its expiry is absent: it expires first, as a write
// of its own, when a condition or a put or delete names it; a
// TxnDeletePrefix leaves it to expire by itself.
//
// Errors wrap ErrInvalidKey or ErrInvalidTxn (a *TxnOpError naming the
// part), ErrPrecondition (a *TxnFailedError listing every condition that
// failed), ErrTxnTooLarge (a *TxnSizeError), ErrFull (a *FullError: the
// limits apply to the transaction as a whole), ErrUnavailable or
// ErrClosed, or are ctx's error when ctx ended before the transaction was
// handed to the committer. t is checked before it reaches the committer,
// but for what depends on the store: the conditions, the keys that a
// TxnDeletePrefix removes (which may be another op's key), the size and
// the limits.
//
// It may be called concurrently, like every write. The committer's work
// is about that of as many puts and deletes, plus, for each
// TxnDeletePrefix, a walk of the keys with its prefix (all of them, even
// past MaxTxnOps, to tell how many) and of the keys that the batch it
// shares changed before it.
func (s *Store) Txn(ctx context.Context, t Txn) (TxnResult, error) {
	if err := validateTxn(t); err != nil {
		return TxnResult{}, fmt.Errorf("kv: txn: %w", err)
	}
	req := &txnReq{Txn: t}
	for i, o := range t.Then {
		if o.Kind == TxnPut && o.TTL > 0 {
			if req.expires == nil {
				req.expires = make([]int64, len(t.Then))
			}
			req.expires[i] = s.opts.Now().Add(o.TTL).UnixNano()
		}
	}
	r := s.waitOp(ctx, &op{txn: req, done: make(chan result, 1)})
	if r.err != nil {
		return TxnResult{}, fmt.Errorf("kv: txn: %w", r.err)
	}
	return req.res, nil // set by the committer before it answered
}

// DeletePrefix deletes every key that starts with prefix, a non-empty
// string, as one write: it is the Txn of one TxnDeletePrefix, whose
// errors it returns.
func (s *Store) DeletePrefix(ctx context.Context, prefix string) (TxnResult, error) {
	return s.Txn(ctx, Txn{Then: []TxnOp{{Kind: TxnDeletePrefix, Key: prefix}}})
}

// txnReq is a transaction on its way to the committer.
type txnReq struct {
	Txn
	expires []int64   // by op of Then: when its put expires (Unix nanoseconds); nil when none does
	res     TxnResult // what it did, when the committer answers with no error
}

// validateTxn checks what can be checked of t without the store: its
// keys and prefixes, its kinds, its times to live, and that no two puts
// or deletes name the same key. The error is a *TxnOpError.
func validateTxn(t Txn) error {
	for i, c := range t.If {
		if err := ValidateKey(c.Key); err != nil {
			return &TxnOpError{Part: "if", Index: i, Err: err}
		}
	}
	if len(t.Then) == 0 {
		return &TxnOpError{Part: "then", Index: 0, Err: fmt.Errorf("%w: no change", ErrInvalidTxn)}
	}
	var named map[string]int // key: the op that names it, for a large t
	for i, o := range t.Then {
		var err error
		switch o.Kind {
		case TxnPut:
			err = ValidateKey(o.Key)
			if err == nil && o.TTL < 0 {
				err = fmt.Errorf("%w: negative time to live %v", ErrInvalidTxn, o.TTL)
			}
		case TxnDelete:
			err = ValidateKey(o.Key)
		case TxnDeletePrefix:
			err = validatePrefix(o.Key)
		default:
			err = fmt.Errorf("%w: unknown kind of change %d", ErrInvalidTxn, o.Kind)
		}
		if err == nil && o.Kind != TxnDeletePrefix {
			j := -1
			switch {
			case len(t.Then) <= 16: // cheaper than a map
				for k := range i {
					if t.Then[k].Kind != TxnDeletePrefix && t.Then[k].Key == o.Key {
						j = k
						break
					}
				}
			case named == nil:
				named = map[string]int{o.Key: i}
			default:
				var ok bool
				if j, ok = named[o.Key]; !ok {
					j, named[o.Key] = -1, i
				}
			}
			if j >= 0 {
				err = fmt.Errorf("%w: key %s is changed by then[%d] already", ErrInvalidTxn, quoteForError(o.Key), j)
			}
		}
		if err != nil {
			return &TxnOpError{Part: "then", Index: i, Err: err}
		}
	}
	return nil
}

// validatePrefix checks the prefix of a TxnDeletePrefix: a non-empty
// string of valid UTF-8 without control characters, which need not be a
// whole key.
func validatePrefix(p string) error {
	if p == "" {
		return fmt.Errorf("%w: empty prefix", ErrInvalidTxn)
	}
	for i, r := range p {
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(p[i:], string(utf8.RuneError)):
			return fmt.Errorf("%w prefix %s: invalid UTF-8 at byte %d", ErrInvalidKey, quoteForError(p), i)
		case r < 0x20 || r == 0x7f:
			return fmt.Errorf("%w prefix %s: control character %U at byte %d", ErrInvalidKey, quoteForError(p), r, i)
		}
	}
	return nil
}
