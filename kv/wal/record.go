// Package wal is the on-disk format of kvsse: a write-ahead log of
// length-prefixed, checksummed records, and snapshot files made of the same
// records.
//
// A frame is
//
//	length  uint32 little endian: the payload's length, 1..MaxPayload
//	crc     uint32 little endian: CRC-32C (Castagnoli) of the payload
//	payload length bytes
//
// and a payload is an op byte followed by uvarint/varint fields (see
// Append), and, for a change record, an optional part that carries the
// key's previous value (see Record.HasPrev). Every file starts with an
// 8-byte magic naming its kind and format version, so that a file of
// another kind or version is refused, not misread.
//
// A log segment (LogMagic, "kvsseLG2") is a sequence of batches. A batch
// is one or more change records (OpPut, OpDelete, OpExpire) and the
// OpCommit marker that ends it, whose Rev is the revision of the batch's
// last record. The store writes a batch with one write and makes it
// durable with one fsync, and a batch counts only once its marker has been
// read: records after the last marker are what is left of a batch that was
// never completely written, so never acknowledged, and ScanLog reports
// them as a tail to cut off. Several records of a batch may share a
// revision (the changes of one transaction): the marker makes them whole
// or absent together.
//
// Segments of format 1 (LogMagicV1, "kvsseLG1") have no markers: each
// whole record counts on its own. They are still read, never appended to.
//
// A snapshot (SnapMagic) is an OpSnapRev record, one OpPut record per key
// and an OpSnapEnd record.
package wal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Op is the kind of a record.
type Op byte

// The record kinds. The numbers are part of the on-disk format.
const (
	OpPut     Op = 1 // a key was set
	OpDelete  Op = 2 // a key was deleted by a client
	OpExpire  Op = 3 // a key was deleted because its time to live ran out
	OpSnapRev Op = 4 // first record of a snapshot: the revision it starts from
	OpSnapEnd Op = 5 // last record of a snapshot: Rev holds the number of keys
	OpCommit  Op = 6 // last record of a batch in a log: Rev is the revision of the batch's last record
)

// MaxPayload bounds a record's payload. Decoders refuse larger lengths
// without allocating, so a damaged length field cannot make them allocate
// without bound. Values are limited well below it.
const MaxPayload = 64 << 20

// HeaderSize is the size of a frame's length and checksum.
const HeaderSize = 8

// Magics start every log segment and snapshot file. LogMagic is the
// format that segments are written in; LogMagicV1 is the format before
// commit markers, which is still read.
var (
	LogMagic   = [8]byte{'k', 'v', 's', 's', 'e', 'L', 'G', '2'}
	LogMagicV1 = [8]byte{'k', 'v', 's', 's', 'e', 'L', 'G', '1'}
	SnapMagic  = [8]byte{'k', 'v', 's', 's', 'e', 'S', 'N', '1'}
)

// ErrCorrupt reports a record that fails its length or checksum test, or
// whose payload does not parse.
var ErrCorrupt = errors.New("corrupt record")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Decoding errors, made once so that Decode never allocates.
var (
	errShortHeader = fmt.Errorf("frame header: %w", io.ErrUnexpectedEOF)
	errShortFrame  = fmt.Errorf("frame: %w", io.ErrUnexpectedEOF)
	errLength      = fmt.Errorf("%w: length out of range", ErrCorrupt)
	errChecksum    = fmt.Errorf("%w: checksum mismatch", ErrCorrupt)
	errOp          = fmt.Errorf("%w: unknown op", ErrCorrupt)
	errVarint      = fmt.Errorf("%w: bad varint", ErrCorrupt)
	errRevision    = fmt.Errorf("%w: revision out of range", ErrCorrupt)
	errOverrun     = fmt.Errorf("%w: field overruns the record", ErrCorrupt)
	errTrailing    = fmt.Errorf("%w: trailing bytes", ErrCorrupt)
)

// Record is one change, a snapshot marker or a commit marker. Slices returned by Decode
// point into the decoded buffer.
type Record struct {
	Op          Op
	Rev         int64  // the revision this change took
	PrevRev     int64  // the key's revision before the change; 0 if it was absent
	Key         []byte // empty in snapshot and commit markers
	ContentType []byte // OpPut only
	Expires     int64  // OpPut only: Unix nanoseconds, 0 for no expiry
	Value       []byte // OpPut only

	// HasPrev says that a change record (OpPut, OpDelete, OpExpire)
	// carries the key's value before the change, PrevValue, and its
	// content type, PrevContentType: the store writes them only when the
	// key's previous revision lies before the segment the record is
	// written to, since a reader of the segment finds the others in it.
	// They are an optional part at the end of the payload, a byte 1 then
	// the two fields; records without it are those of logs written
	// before it existed, which read as before.
	HasPrev         bool
	PrevContentType []byte
	PrevValue       []byte
}

// prevPart is the byte that starts a change record's optional part.
const prevPart = 1

// Append appends r as one whole frame to b and returns the extended slice.
// It allocates only when b lacks capacity.
func Append(b []byte, r *Record) []byte {
	start := len(b)
	b = append(b, 0, 0, 0, 0, 0, 0, 0, 0)
	b = append(b, byte(r.Op))
	b = binary.AppendUvarint(b, uint64(r.Rev))
	b = binary.AppendUvarint(b, uint64(r.PrevRev))
	b = binary.AppendUvarint(b, uint64(len(r.Key)))
	b = append(b, r.Key...)
	if r.Op == OpPut {
		b = binary.AppendUvarint(b, uint64(len(r.ContentType)))
		b = append(b, r.ContentType...)
		b = binary.AppendVarint(b, r.Expires)
		b = binary.AppendUvarint(b, uint64(len(r.Value)))
		b = append(b, r.Value...)
	}
	if r.HasPrev && r.Op >= OpPut && r.Op <= OpExpire {
		b = append(b, prevPart)
		b = binary.AppendUvarint(b, uint64(len(r.PrevContentType)))
		b = append(b, r.PrevContentType...)
		b = binary.AppendUvarint(b, uint64(len(r.PrevValue)))
		b = append(b, r.PrevValue...)
	}
	payload := b[start+HeaderSize:]
	binary.LittleEndian.PutUint32(b[start:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(b[start+4:], crc32.Checksum(payload, castagnoli))
	return b
}

// Encoder writes records to an io.Writer, one Write call per record.
// It is not safe for concurrent use.
type Encoder struct {
	w   io.Writer
	buf []byte
}

// NewEncoder returns an Encoder writing to w.
func NewEncoder(w io.Writer) *Encoder { return &Encoder{w: w} }

// Encode writes r as one frame.
func (e *Encoder) Encode(r *Record) error {
	e.buf = Append(e.buf[:0], r)
	_, err := e.w.Write(e.buf)
	return err
}

// Decode reads the frame at the start of buf. It returns the record, the
// frame's size, and an error wrapping io.ErrUnexpectedEOF when buf ends
// inside the frame, or ErrCorrupt when the frame is damaged. It never
// allocates: the record's slices point into buf.
func Decode(buf []byte) (Record, int, error) {
	if len(buf) < HeaderSize {
		return Record{}, 0, errShortHeader
	}
	n := binary.LittleEndian.Uint32(buf)
	if n == 0 || n > MaxPayload {
		return Record{}, 0, errLength
	}
	if uint64(len(buf)-HeaderSize) < uint64(n) {
		return Record{}, 0, errShortFrame
	}
	payload := buf[HeaderSize : HeaderSize+int(n)]
	if crc32.Checksum(payload, castagnoli) != binary.LittleEndian.Uint32(buf[4:]) {
		return Record{}, 0, errChecksum
	}
	r, err := parsePayload(payload)
	if err != nil {
		return Record{}, 0, err
	}
	return r, HeaderSize + int(n), nil
}

func parsePayload(p []byte) (Record, error) {
	d := decoder{b: p[1:]}
	r := Record{Op: Op(p[0])}
	if r.Op < OpPut || r.Op > OpCommit {
		return Record{}, errOp
	}
	r.Rev = d.int()
	r.PrevRev = d.int()
	r.Key = d.bytes()
	if r.Op == OpPut {
		r.ContentType = d.bytes()
		r.Expires = d.varint()
		r.Value = d.bytes()
	}
	if len(d.b) > 0 && d.b[0] == prevPart && r.Op >= OpPut && r.Op <= OpExpire {
		d.b = d.b[1:]
		r.HasPrev = true
		r.PrevContentType = d.bytes()
		r.PrevValue = d.bytes()
	}
	if d.err != nil {
		return Record{}, d.err
	}
	if len(d.b) != 0 {
		return Record{}, errTrailing
	}
	return r, nil
}

// decoder reads fields from a payload, remembering the first error.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 || n > 1 && d.b[n-1] == 0 { // overlong encodings are not ours
		d.err = errVarint
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) int() int64 {
	v := d.uvarint()
	if v > 1<<62 {
		d.err = errRevision
		return 0
	}
	return int64(v)
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 || n > 1 && d.b[n-1] == 0 {
		d.err = errVarint
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = errOverrun
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}
