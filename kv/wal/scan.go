package wal

import (
	"errors"
	"fmt"
	"io"
)

// DamageError reports damage followed by valid records: cutting the file
// there would silently drop those records, so the file must be refused.
type DamageError struct {
	Offset int64 // where the damaged record starts
	Err    error // what is wrong with it
}

func (e *DamageError) Error() string {
	return fmt.Sprintf("damaged record at offset %d, with valid records after it: %v", e.Offset, e.Err)
}

func (e *DamageError) Unwrap() error { return e.Err }

// ErrMagic reports a file that does not start with the expected magic.
var ErrMagic = errors.New("not a kvsse file of this kind or version")

// Scan calls fn with each record of data, the whole contents of a file
// that starts with magic, and returns how many bytes of data are the magic
// and whole, valid records.
//
// When that is less than len(data), the rest is a torn or corrupt tail
// with no valid record in it, which the caller may cut off. When a valid
// record follows a damaged one, Scan returns a *DamageError instead. An
// error returned by fn stops the scan and is returned as is. A file shorter
// than the magic that is a prefix of it counts as empty (0 valid bytes):
// it was created and never synced.
func Scan(data []byte, magic [8]byte, fn func(Record) error) (int, error) {
	if len(data) < len(magic) {
		if string(data) == string(magic[:len(data)]) {
			return 0, nil
		}
		return 0, ErrMagic
	}
	if string(data[:len(magic)]) != string(magic[:]) {
		return 0, ErrMagic
	}
	off := len(magic)
	for off < len(data) {
		r, n, err := Decode(data[off:])
		if err != nil {
			if next := findRecord(data, off+1); next >= 0 {
				return off, &DamageError{Offset: int64(off), Err: err}
			}
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, ErrCorrupt) {
				return off, nil
			}
			return off, err
		}
		if err := fn(r); err != nil {
			return off, err
		}
		off += n
	}
	return off, nil
}

// findRecord returns the first offset at or after from where a valid frame
// starts, or -1.
func findRecord(data []byte, from int) int {
	for i := from; i+HeaderSize < len(data); i++ {
		if _, _, err := Decode(data[i:]); err == nil {
			return i
		}
	}
	return -1
}
