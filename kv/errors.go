package kv

import (
	"errors"
	"fmt"
	"os"
)

// The errors a Store returns, to be tested with errors.Is. The HTTP layer
// maps each to one status code.
var (
	// ErrNotFound: the key does not exist (or has expired).
	ErrNotFound = errors.New("key not found")
	// ErrPrecondition: a put's or delete's precondition did not hold. The
	// error is a *ConflictError carrying the key's current revision.
	ErrPrecondition = errors.New("precondition failed")
	// ErrUnavailable: the log could not take a write. When writing to the
	// log failed (a full disk, say), the write was refused and later
	// writes succeed once the log takes them again. When an fsync failed,
	// or cutting a failed write off the log did, the store refuses every
	// write until it is reopened.
	ErrUnavailable = errors.New("store unavailable")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("store closed")
	// ErrInvalidRevision: a revision argument is negative.
	ErrInvalidRevision = errors.New("invalid revision")
	// ErrFull: a put would take the store past Options.MaxKeys keys or
	// Options.MaxBytes bytes of values.
	ErrFull = errors.New("store full")
)

// The limits a FullError names.
const (
	LimitKeys  = "keys"  // Options.MaxKeys
	LimitBytes = "bytes" // Options.MaxBytes
)

// FullError is the error of a put that a store limit refused: it matches
// ErrFull, and says which limit (LimitKeys or LimitBytes) and its value,
// so that a server can name the setting behind it.
type FullError struct {
	Limit string
	Max   int64
	msg   string
}

func (e *FullError) Error() string { return ErrFull.Error() + ": " + e.msg }

// Is makes a FullError match ErrFull.
func (e *FullError) Is(target error) bool { return target == ErrFull }

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

// logError is the error of writes that the log failed to take. Its text
// names the cause, the system's error such as "no space left on device",
// but not the data file, which is no business of the clients that see it:
// the full error goes to the store's Logger. It matches ErrUnavailable and
// unwraps to the cause.
type logError struct{ cause error }

func newLogError(err error) *logError {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return &logError{cause: pe.Err}
	}
	for u := errors.Unwrap(err); u != nil; u = errors.Unwrap(err) {
		err = u
	}
	return &logError{cause: err}
}

func (e *logError) Error() string { return "the log failed: " + e.cause.Error() }

// Is reports whether target is ErrUnavailable.
func (e *logError) Is(target error) bool { return target == ErrUnavailable }

func (e *logError) Unwrap() error { return e.cause }
