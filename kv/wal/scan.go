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
	return scan(data, magic, func(r Record, _, _ int) error { return fn(r) })
}

// scan is Scan, whose fn is also given where the record's frame starts
// and ends in data.
func scan(data []byte, magic [8]byte, fn func(r Record, start, end int) error) (int, error) {
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
		if err := fn(r, off, off+n); err != nil {
			return off, err
		}
		off += n
	}
	return off, nil
}

// LogScan is what ScanLog found in a log segment.
type LogScan struct {
	// Version is the segment's format: 2 (LogMagic), 1 (LogMagicV1), or 0
	// for a file shorter than the magic, which was created and never
	// synced.
	Version int
	// Committed is how many bytes of the segment are its magic and whole
	// batches, each with its marker (in format 1, whole records). The
	// rest is a tail that no complete batch reaches into.
	Committed int
	// Uncommitted counts the whole records in that tail: a batch whose
	// marker was never written.
	Uncommitted int
}

// ScanLog calls fn with each committed batch of data, the whole contents
// of a log segment of either format, in order, and returns what it found.
// The batch holds the change records without the marker; fn must not keep
// the slice, which is reused, but the records' fields point into data. In
// a segment of format 1 each record is a batch of its own.
//
// The tail after Committed holds no complete batch: whole records whose
// marker is missing, then possibly a torn or corrupt frame. The caller may
// cut it off. Damage followed by valid records is a *DamageError, as in
// Scan. A record that cannot stand where it is in a log (a snapshot
// record, a marker in format 1, a marker with no record before it or
// whose revision is not that of the record before it) is an error
// wrapping ErrCorrupt that gives its offset. An error returned by fn stops
// the scan and is returned as is.
func ScanLog(data []byte, fn func(batch []Record) error) (LogScan, error) {
	var ls LogScan
	magic := LogMagic
	switch {
	case hasPrefix(data, LogMagic):
		ls.Version, ls.Committed = 2, len(LogMagic)
	case hasPrefix(data, LogMagicV1):
		ls.Version, ls.Committed, magic = 1, len(LogMagicV1), LogMagicV1
	}
	var batch []Record
	_, err := scan(data, magic, func(r Record, start, end int) error {
		switch {
		case r.Op == OpPut || r.Op == OpDelete || r.Op == OpExpire:
			batch = append(batch, r)
			if ls.Version == 2 {
				return nil
			}
		case r.Op == OpCommit && ls.Version == 2:
			if len(batch) == 0 {
				return fmt.Errorf("%w: commit marker at offset %d ends no record", ErrCorrupt, start)
			}
			if last := batch[len(batch)-1].Rev; r.Rev != last {
				return fmt.Errorf("%w: commit marker at offset %d is for revision %d, but its batch ends at %d", ErrCorrupt, start, r.Rev, last)
			}
		default:
			return fmt.Errorf("%w: op %d at offset %d in a log of format %d", ErrCorrupt, r.Op, start, ls.Version)
		}
		if err := fn(batch); err != nil {
			return err
		}
		batch, ls.Committed = batch[:0], end
		return nil
	})
	ls.Uncommitted = len(batch)
	return ls, err
}

func hasPrefix(data []byte, magic [8]byte) bool {
	return len(data) >= len(magic) && string(data[:len(magic)]) == string(magic[:])
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
