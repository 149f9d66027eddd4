package wal

import (
	"encoding/binary"
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
			if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ErrCorrupt) {
				return off, err
			}
			if validAfter(data, off) {
				return off, &DamageError{Offset: int64(off), Err: err}
			}
			return off, nil
		}
		if err := fn(r); err != nil {
			return off, err
		}
		off += n
	}
	return off, nil
}

// validAfter reports whether the damaged frame at off is followed by valid
// records, which cutting the file at off would lose.
//
// Past the end that the frame's length field claims, any valid frame
// counts. Inside it (or everywhere, when the length is out of range) the
// bytes may be a value, which is opaque and may itself hold well-formed
// frames: there a frame counts only when it starts a chain of valid frames
// that runs to the end of the file, or to a torn frame there, as the real
// records after a damaged length field do, and the rest of a value after
// an embedded frame does not.
func validAfter(data []byte, off int) bool {
	end := -1 // where the damaged frame claims to end
	if len(data)-off >= HeaderSize {
		if n := binary.LittleEndian.Uint32(data[off:]); n > 0 && n <= MaxPayload {
			end = off + HeaderSize + int(n)
		}
	}
	for i := off + 1; i+HeaderSize < len(data); i++ {
		if end >= 0 && i >= end {
			if _, _, err := Decode(data[i:]); err == nil {
				return true
			}
			continue
		}
		if chainToEnd(data[i:]) {
			return true
		}
	}
	return false
}

// chainToEnd reports whether data is one or more valid frames, the last of
// which may be torn by the end of data after a whole header.
func chainToEnd(data []byte) bool {
	for frames := 0; len(data) > 0; frames++ {
		_, n, err := Decode(data)
		if err != nil {
			return frames > 0 && len(data) >= HeaderSize && errors.Is(err, io.ErrUnexpectedEOF)
		}
		data = data[n:]
	}
	return true
}
