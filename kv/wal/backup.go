package wal

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
)

// A backup file is a snapshot made to travel: the records of a snapshot
// (an OpSnapRev record, one OpPut record a key in strictly increasing key
// order, an OpSnapEnd record with the count) after its own magic, then a
// trailer that makes a file cut short, or with records dropped or
// reordered, fail as a whole:
//
//	"kvsseBK1"                      BackupMagic
//	records                         as in a snapshot
//	"kvsseEND"                      trailer magic
//	crc32c  uint32 little endian    CRC-32C of every byte before the trailer
//	size    uint64 little endian    the number of those bytes
//
// Nothing may follow the trailer.
var (
	BackupMagic = [8]byte{'k', 'v', 's', 's', 'e', 'B', 'K', '1'}
	backupEnd   = [8]byte{'k', 'v', 's', 's', 'e', 'E', 'N', 'D'}
)

// backupTrailerSize is the length of a backup's trailer.
const backupTrailerSize = 8 + 4 + 8

// writeRecords writes magic, an OpSnapRev record for rev, every record
// that each passes to add, and an OpSnapEnd record with the count: the
// body of a snapshot and of a backup.
func writeRecords(w io.Writer, magic [8]byte, rev int64, each func(add func(*Record) error) error) error {
	enc := NewEncoder(w)
	if _, err := w.Write(magic[:]); err != nil {
		return err
	}
	if err := enc.Encode(&Record{Op: OpSnapRev, Rev: rev}); err != nil {
		return err
	}
	var count int64
	err := each(func(r *Record) error {
		count++
		return enc.Encode(r)
	})
	if err != nil {
		return err
	}
	return enc.Encode(&Record{Op: OpSnapEnd, Rev: count})
}

// WriteBackup writes a backup of revision rev to w: the records that each
// passes to add, which must be OpPut records in strictly increasing key
// order, and the trailer. It returns the bytes written. An error from w or
// each stops it; what it wrote then is no backup (the trailer is missing).
func WriteBackup(w io.Writer, rev int64, each func(add func(*Record) error) error) (int64, error) {
	cw := &crcWriter{w: w, crc: crc32.New(castagnoli)}
	bw := bufio.NewWriterSize(cw, 256<<10)
	if err := writeRecords(bw, BackupMagic, rev, each); err != nil {
		return cw.n, fmt.Errorf("write backup: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return cw.n, fmt.Errorf("write backup: %w", err)
	}
	t := append(backupEnd[:0:0], backupEnd[:]...)
	t = binary.LittleEndian.AppendUint32(t, cw.crc.Sum32())
	t = binary.LittleEndian.AppendUint64(t, uint64(cw.n))
	if _, err := cw.Write(t); err != nil {
		return cw.n, fmt.Errorf("write backup: %w", err)
	}
	return cw.n, nil
}

// crcWriter counts and checksums what it passes on to w.
type crcWriter struct {
	w   io.Writer
	crc hash.Hash32
	n   int64
}

func (c *crcWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.crc.Write(p[:n])
	c.n += int64(n)
	return n, err
}

// BackupError is a backup file that is damaged, cut short or not a
// backup: where, in bytes from its start, and what is wrong.
type BackupError struct {
	Offset int64
	Err    error
}

func (e *BackupError) Error() string {
	return fmt.Sprintf("backup damaged at offset %d: %v", e.Offset, e.Err)
}

func (e *BackupError) Unwrap() error { return e.Err }

// BackupReader reads a backup file as a stream and checks all of it:
// each record's checksum and place, the key order, the count, the
// trailer's checksum and size, and that nothing follows. Records come
// before the whole file is checked: the caller must not trust what it did
// with them until Next has returned io.EOF.
type BackupReader struct {
	r        *bufio.Reader
	crc      hash.Hash32
	off      int64 // bytes read so far
	buf      []byte
	prev     []byte // the previous record's key
	Revision int64  // the revision the backup was taken at
	Keys     int64  // the key records read so far
	done     bool
}

// NewBackupReader reads the magic and first record of a backup from r.
// Errors are *BackupError, or r's own errors.
func NewBackupReader(r io.Reader) (*BackupReader, error) {
	br := &BackupReader{r: bufio.NewReaderSize(r, 256<<10), crc: crc32.New(castagnoli)}
	var magic [8]byte
	if err := br.read(magic[:]); err != nil {
		return nil, br.fail(err)
	}
	if magic != BackupMagic {
		return nil, &BackupError{Offset: 0, Err: ErrMagic}
	}
	start := br.off
	rec, err := br.record()
	if err != nil {
		return nil, err
	}
	if rec.Op != OpSnapRev {
		return nil, &BackupError{Offset: start, Err: fmt.Errorf("%w: first record is op %d, not the revision", ErrCorrupt, rec.Op)}
	}
	br.Revision = rec.Rev
	return br, nil
}

// Next returns the next key record, whose slices stay valid until the
// next call, or io.EOF once the end record, the trailer and the end of
// the file were read and found right. Other errors are *BackupError, or
// r's own errors.
func (br *BackupReader) Next() (Record, error) {
	if br.done {
		return Record{}, io.EOF
	}
	start := br.off
	rec, err := br.record()
	if err != nil {
		return Record{}, err
	}
	bad := func(format string, a ...any) (Record, error) {
		return Record{}, &BackupError{Offset: start, Err: fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, a...)...)}
	}
	switch {
	case rec.Op == OpSnapEnd:
		if rec.Rev != br.Keys {
			return bad("the end record counts %d keys, the backup holds %d", rec.Rev, br.Keys)
		}
		return Record{}, br.trailer()
	case rec.Op != OpPut:
		return bad("op %d in a backup", rec.Op)
	case br.Keys > 0 && bytes.Compare(rec.Key, br.prev) <= 0:
		return bad("key %q does not sort after %q", rec.Key, br.prev)
	case rec.Rev <= 0 || rec.Rev > br.Revision:
		return bad("key %q at revision %d, outside 1..%d", rec.Key, rec.Rev, br.Revision)
	}
	br.prev = append(br.prev[:0], rec.Key...)
	br.Keys++
	return rec, nil
}

// trailer checks the trailer and that nothing follows it.
func (br *BackupReader) trailer() error {
	sum, size := br.crc.Sum32(), br.off
	var t [backupTrailerSize]byte
	if err := br.read(t[:]); err != nil {
		return br.fail(err)
	}
	switch {
	case [8]byte(t[:8]) != backupEnd:
		return &BackupError{Offset: size, Err: fmt.Errorf("%w: no trailer after the end record", ErrCorrupt)}
	case binary.LittleEndian.Uint32(t[8:]) != sum:
		return &BackupError{Offset: size, Err: fmt.Errorf("%w: the file's checksum does not match its trailer", ErrCorrupt)}
	case binary.LittleEndian.Uint64(t[12:]) != uint64(size):
		return &BackupError{Offset: size, Err: fmt.Errorf("%w: the trailer gives a size of %d bytes, not %d", ErrCorrupt, binary.LittleEndian.Uint64(t[12:]), size)}
	}
	if _, err := br.r.ReadByte(); err != io.EOF {
		if err == nil {
			err = fmt.Errorf("%w: bytes after the trailer", ErrCorrupt)
		}
		return br.fail(err)
	}
	br.done = true
	return io.EOF
}

// record reads one whole frame and decodes it.
func (br *BackupReader) record() (Record, error) {
	start := br.off
	br.buf = append(br.buf[:0], make([]byte, HeaderSize)...)
	if err := br.read(br.buf); err != nil {
		return Record{}, br.fail(err)
	}
	n := binary.LittleEndian.Uint32(br.buf)
	if n == 0 || n > MaxPayload {
		return Record{}, &BackupError{Offset: start, Err: errLength}
	}
	br.buf = append(br.buf, make([]byte, n)...)
	if err := br.read(br.buf[HeaderSize:]); err != nil {
		return Record{}, br.fail(err)
	}
	rec, _, err := Decode(br.buf)
	if err != nil {
		return Record{}, &BackupError{Offset: start, Err: err}
	}
	return rec, nil
}

// read fills p from the file, checksumming it; the end of the file
// before p is full is io.ErrUnexpectedEOF.
func (br *BackupReader) read(p []byte) error {
	n, err := io.ReadFull(br.r, p)
	br.crc.Write(p[:n])
	br.off += int64(n)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// fail names where the file ended or failed to be read.
func (br *BackupReader) fail(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return &BackupError{Offset: br.off, Err: fmt.Errorf("the file ends early (cut short?): %w", err)}
	}
	if errors.Is(err, ErrCorrupt) {
		return &BackupError{Offset: br.off, Err: err}
	}
	return fmt.Errorf("read backup at offset %d: %w", br.off, err)
}
