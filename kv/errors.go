package kv

import (
	"errors"
	"fmt"
)

// The errors a Store returns, to be tested with errors.Is. The HTTP layer
// maps each to one status code.
var (
	// ErrNotFound: the key does not exist (or has expired).
	ErrNotFound = errors.New("key not found")
	// ErrPrecondition: a put's or delete's precondition did not hold. The
	// error is a *ConflictError carrying the key's current revision.
	ErrPrecondition = errors.New("precondition failed")
	// ErrUnavailable: the store cannot make writes durable any more (a
	// write or fsync of the log failed) and refuses all further writes.
	ErrUnavailable = errors.New("store unavailable")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("store closed")
	// ErrInvalidRevision: a revision argument is negative.
	ErrInvalidRevision = errors.New("invalid revision")
	// ErrFull: a put would take the store past Options.MaxKeys keys or
	// Options.MaxBytes bytes of values.
	ErrFull = errors.New("store full")
)

// ConflictError is the error of a failed precondition. It matches
// ErrPrecondition with errors.Is.
type ConflictError struct {
	Key      string
	Revision int64 // the key's current revision, 0 when it is absent
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("%v: key %q is at revision %d", ErrPrecondition, e.Key, e.Revision)
}

// Is reports whether target is ErrPrecondition.
func (e *ConflictError) Is(target error) bool { return target == ErrPrecondition }
