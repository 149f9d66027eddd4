package kv

import (
	"errors"
	"fmt"
	"strings"
	"time"
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
	// empty prefix, a time to live that is not positive. The error is a
	// *TxnOpError naming the part.
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
