package wal_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"hash/crc32"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"kvsse/kv/wal"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// equateEmpty treats nil and empty slices as equal: Decode returns empty,
// non-nil slices pointing into its buffer.
var equateEmpty = cmpopts.EquateEmpty()

// goldenRecords is the fixed list pinned by testdata/records.golden. Never
// change it without also thinking about files already on disk.
func goldenRecords() []wal.Record {
	return []wal.Record{
		{Op: wal.OpPut, Rev: 1, Key: []byte("config/a"), ContentType: []byte("text/plain"), Value: []byte("on")},
		{Op: wal.OpPut, Rev: 2, PrevRev: 1, Key: []byte("config/a"), Expires: 1_700_000_000_000_000_000, Value: []byte("off")},
		{Op: wal.OpPut, Rev: 3, Key: []byte("empty")},
		{Op: wal.OpPut, Rev: 4, Key: []byte("bin"), ContentType: []byte("application/octet-stream"), Value: []byte{0, 0xff, '\n', '\r', 0x80}},
		{Op: wal.OpDelete, Rev: 5, PrevRev: 2, Key: []byte("config/a")},
		{Op: wal.OpExpire, Rev: 300, PrevRev: 4, Key: []byte("bin")},
		{Op: wal.OpCommit, Rev: 300},
		{Op: wal.OpSnapRev, Rev: 300},
		{Op: wal.OpPut, Rev: 1 << 62, PrevRev: 1<<62 - 1, Key: []byte("max"), Expires: math.MaxInt64, Value: []byte("x")},
		{Op: wal.OpPut, Rev: 1 << 62, Key: []byte("min"), Expires: math.MinInt64},
		{Op: wal.OpSnapEnd, Rev: 2},
	}
}

func encodeAll(records []wal.Record) []byte {
	return encodeAllWith(wal.LogMagic, records)
}

func encodeAllWith(magic [8]byte, records []wal.Record) []byte {
	var buf bytes.Buffer
	buf.Write(magic[:])
	enc := wal.NewEncoder(&buf)
	for i := range records {
		if err := enc.Encode(&records[i]); err != nil {
			panic(err) // bytes.Buffer never fails
		}
	}
	return buf.Bytes()
}

func TestGolden(t *testing.T) { checkGolden(t, "records.golden", goldenRecords()) }

// checkGolden holds records to the file name in testdata, both ways:
// they encode to its bytes, and its bytes decode to them.
func checkGolden(t *testing.T, name string, records []wal.Record) {
	t.Helper()
	path := filepath.Join("testdata", name)
	got := encodeAll(records)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./kv/wal -update to create it)", err)
	}
	if !bytes.Equal(want, got) {
		t.Errorf("the encoding changed: it no longer matches %s (-want +got):\n%s\nIf the change is meant, the format version in the magic must change too; then run go test ./kv/wal -update.",
			path, cmp.Diff(want, got))
	}

	// The golden file decodes back to the list, whatever the encoder does.
	decoded, valid, err := scanAll(want)
	if err != nil || valid != len(want) {
		t.Fatalf("Scan(%s) = %d, %v; want %d, nil", name, valid, err, len(want))
	}
	if diff := cmp.Diff(records, decoded, equateEmpty); diff != "" {
		t.Errorf("%s records (-want +got):\n%s", name, diff)
	}
}

// TestGoldenV1 pins the frames of format 1, which are still read: the
// file in testdata was written before commit markers existed, and records
// of every other kind still encode to the same bytes.
func TestGoldenV1(t *testing.T) {
	want, err := os.ReadFile(filepath.Join("testdata", "records-v1.golden"))
	if err != nil {
		t.Fatal(err)
	}
	records := slices.DeleteFunc(goldenRecords(), func(r wal.Record) bool { return r.Op == wal.OpCommit })
	if got := encodeAllWith(wal.LogMagicV1, records); !bytes.Equal(want, got) {
		t.Errorf("records of format 1 no longer encode to the same bytes (-want +got):\n%s", cmp.Diff(want, got))
	}
	decoded, valid, err := scanMagic(want, wal.LogMagicV1)
	if err != nil || valid != len(want) {
		t.Fatalf("Scan(golden v1) = %d, %v; want %d, nil", valid, err, len(want))
	}
	if diff := cmp.Diff(records, decoded, equateEmpty); diff != "" {
		t.Errorf("golden v1 records (-want +got):\n%s", diff)
	}
}

// prevRecords are change records that carry their key's previous value,
// pinned by testdata/records-prev.golden: the optional part that logs
// written before it lack (records.golden), which still read the same.
func prevRecords() []wal.Record {
	return []wal.Record{
		{Op: wal.OpPut, Rev: 40, PrevRev: 2, Key: []byte("config/a"), ContentType: []byte("text/plain"), Value: []byte("on"),
			HasPrev: true, PrevContentType: []byte("text/plain"), PrevValue: []byte("off")},
		{Op: wal.OpDelete, Rev: 41, PrevRev: 4, Key: []byte("bin"), HasPrev: true, PrevContentType: []byte("application/octet-stream"), PrevValue: []byte{0, 0xff, '\n'}},
		{Op: wal.OpExpire, Rev: 42, PrevRev: 3, Key: []byte("empty"), HasPrev: true},
		{Op: wal.OpCommit, Rev: 42},
	}
}

func TestGoldenPrev(t *testing.T) {
	checkGolden(t, "records-prev.golden", prevRecords())
	// The optional part belongs to change records only, and starts with
	// its own byte: anything else after a record's fields is damage.
	for _, tail := range [][]byte{{2}, {1}, {1, 0}, {1, 5, 'a'}} {
		payload := append([]byte{byte(wal.OpDelete), 5, 4, 1, 'k'}, tail...)
		if _, _, err := wal.Decode(frame(payload)); !errors.Is(err, wal.ErrCorrupt) {
			t.Errorf("a delete followed by %x: %v, want ErrCorrupt", tail, err)
		}
	}
	if _, _, err := wal.Decode(frame([]byte{byte(wal.OpCommit), 5, 0, 0, 1, 0, 0})); !errors.Is(err, wal.ErrCorrupt) {
		t.Errorf("a commit marker with a previous value: %v, want ErrCorrupt", err)
	}
}

func TestRoundTrip(t *testing.T) {
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	tests := []struct {
		name string
		r    wal.Record
	}{
		{"put", wal.Record{Op: wal.OpPut, Rev: 7, PrevRev: 3, Key: []byte("a/b"), ContentType: []byte("text/plain"), Expires: 12345, Value: []byte("hello")}},
		{"put empty value", wal.Record{Op: wal.OpPut, Rev: 1, Key: []byte("k")}},
		{"put empty key", wal.Record{Op: wal.OpPut, Rev: 1, Value: []byte("v")}},
		{"put binary value", wal.Record{Op: wal.OpPut, Rev: 1, Key: []byte("k"), Value: all}},
		{"put large value", wal.Record{Op: wal.OpPut, Rev: 1, Key: []byte("k"), Value: bytes.Repeat([]byte("xyz"), 6000)}},
		{"put negative expiry", wal.Record{Op: wal.OpPut, Rev: 1, Key: []byte("k"), Expires: -1}},
		{"put max varints", wal.Record{Op: wal.OpPut, Rev: 1 << 62, PrevRev: 1 << 62, Key: []byte("k"), Expires: math.MaxInt64, Value: []byte("v")}},
		{"put min expiry", wal.Record{Op: wal.OpPut, Rev: 1 << 62, PrevRev: 1 << 62, Key: []byte("k"), Expires: math.MinInt64}},
		{"delete", wal.Record{Op: wal.OpDelete, Rev: 9, PrevRev: 8, Key: []byte("a/b")}},
		{"expire", wal.Record{Op: wal.OpExpire, Rev: 10, PrevRev: 9, Key: []byte("a/b")}},
		{"put with prev", wal.Record{Op: wal.OpPut, Rev: 7, PrevRev: 3, Key: []byte("k"), Value: []byte("new"),
			HasPrev: true, PrevContentType: []byte("text/plain"), PrevValue: []byte("old")}},
		{"put with empty prev", wal.Record{Op: wal.OpPut, Rev: 7, PrevRev: 3, Key: []byte("k"), Value: []byte("new"), HasPrev: true}},
		{"delete with binary prev", wal.Record{Op: wal.OpDelete, Rev: 9, PrevRev: 8, Key: []byte("k"), HasPrev: true, PrevValue: all}},
		{"expire with prev", wal.Record{Op: wal.OpExpire, Rev: 10, PrevRev: 9, Key: []byte("k"), HasPrev: true, PrevContentType: []byte("a"), PrevValue: []byte("b")}},
		{"snapshot start", wal.Record{Op: wal.OpSnapRev, Rev: 1 << 62}},
		{"snapshot end", wal.Record{Op: wal.OpSnapEnd, Rev: 0}},
		{"commit marker", wal.Record{Op: wal.OpCommit, Rev: 1 << 62}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := []byte("prefix")
			frame := wal.Append(bytes.Clone(prefix), &tt.r)
			if !bytes.HasPrefix(frame, prefix) {
				t.Fatalf("Append overwrote the bytes already in the slice")
			}
			frame = frame[len(prefix):]
			// Trailing bytes after the frame belong to the next frame.
			buf := append(bytes.Clone(frame), "next"...)
			got, n, err := wal.Decode(buf)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if n != len(frame) {
				t.Errorf("Decode size = %d, want %d", n, len(frame))
			}
			if diff := cmp.Diff(tt.r, got, equateEmpty); diff != "" {
				t.Errorf("Decode(Append(r)) (-want +got):\n%s", diff)
			}
			if again := wal.Append(nil, &got); !bytes.Equal(again, frame) {
				t.Errorf("re-encoding the decoded record gives other bytes:\n%x\nwant\n%x", again, frame)
			}

			var w bytes.Buffer
			if err := wal.NewEncoder(&w).Encode(&tt.r); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(w.Bytes(), frame) {
				t.Errorf("Encoder and Append disagree")
			}
		})
	}
}

// TestEncoderOneWritePerRecord pins the Encoder's contract: one Write call
// per record, so that a record is never split between two writes.
func TestEncoderOneWritePerRecord(t *testing.T) {
	var w countingWriter
	enc := wal.NewEncoder(&w)
	for _, r := range goldenRecords() {
		if err := enc.Encode(&r); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := w.writes, len(goldenRecords()); got != want {
		t.Errorf("%d writes for %d records", got, want)
	}
	if err := enc.Encode(&wal.Record{Op: wal.OpDelete, Rev: 1, Key: []byte("k")}); !errors.Is(err, errWrite) {
		t.Errorf("Encode returned %v, want the writer's error", err)
	}
}

var errWrite = errors.New("write failed")

type countingWriter struct{ writes int }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.writes++
	if w.writes > len(goldenRecords()) {
		return 0, errWrite
	}
	return len(p), nil
}

// frame wraps payload in a frame header with its length and a correct
// checksum, so that tests reach the payload parser.
func frame(payload []byte) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(payload)))
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(payload, crc32.MakeTable(crc32.Castagnoli)))
	return append(b, payload...)
}

// header is a frame header with the given length and checksum.
func header(length, crc uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, length)
	return binary.LittleEndian.AppendUint32(b, crc)
}

func decodeErrorCases() []struct {
	name string
	buf  []byte
	want error
} {
	good := wal.Append(nil, &wal.Record{Op: wal.OpPut, Rev: 1, Key: []byte("key"), Value: []byte("value")})
	badCRC := bytes.Clone(good)
	badCRC[4] ^= 1
	flipped := bytes.Clone(good)
	flipped[len(flipped)-1] ^= 0x40
	uvarint := func(v uint64) []byte { return binary.AppendUvarint(nil, v) }
	payload := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	return []struct {
		name string
		buf  []byte
		want error
	}{
		{"empty", nil, io.ErrUnexpectedEOF},
		{"short header", good[:wal.HeaderSize-1], io.ErrUnexpectedEOF},
		{"header only", good[:wal.HeaderSize], io.ErrUnexpectedEOF},
		{"zero length", header(0, 0), wal.ErrCorrupt},
		{"zero length with bytes after", append(header(0, 0), good...), wal.ErrCorrupt},
		{"length MaxPayload+1", header(wal.MaxPayload+1, 0), wal.ErrCorrupt},
		{"length MaxUint32", append(header(math.MaxUint32, 0), make([]byte, 64)...), wal.ErrCorrupt},
		{"length MaxPayload, short buffer", header(wal.MaxPayload, 0), io.ErrUnexpectedEOF},
		{"bad CRC", badCRC, wal.ErrCorrupt},
		{"bit flip in payload", flipped, wal.ErrCorrupt},
		{"truncated payload", good[:len(good)-1], io.ErrUnexpectedEOF},
		{"unknown op 0", frame([]byte{0, 1, 0, 1, 'k'}), wal.ErrCorrupt},
		{"unknown op 7", frame([]byte{7, 1, 0, 1, 'k'}), wal.ErrCorrupt},
		{"unknown op 255", frame([]byte{255}), wal.ErrCorrupt},
		{"trailing bytes in payload", frame(payload([]byte{byte(wal.OpDelete)}, uvarint(1), uvarint(0), uvarint(1), []byte("kX"))), wal.ErrCorrupt},
		{"trailing bytes after snapshot marker", frame([]byte{byte(wal.OpSnapEnd), 1, 0, 0, 0}), wal.ErrCorrupt},
		{"op only", frame([]byte{byte(wal.OpDelete)}), wal.ErrCorrupt},
		{"unterminated varint", frame([]byte{byte(wal.OpDelete), 0x80}), wal.ErrCorrupt},
		{"varint overflow", frame(payload([]byte{byte(wal.OpDelete)}, bytes.Repeat([]byte{0xff}, 10), []byte{1})), wal.ErrCorrupt},
		{"revision above 1<<62", frame(payload([]byte{byte(wal.OpDelete)}, uvarint(1<<62+1), uvarint(0), uvarint(0))), wal.ErrCorrupt},
		{"previous revision above 1<<62", frame(payload([]byte{byte(wal.OpDelete)}, uvarint(1), uvarint(math.MaxUint64), uvarint(0))), wal.ErrCorrupt},
		{"key overruns the record", frame(payload([]byte{byte(wal.OpDelete)}, uvarint(1), uvarint(0), uvarint(5), []byte("k"))), wal.ErrCorrupt},
		{"huge key length", frame(payload([]byte{byte(wal.OpDelete)}, uvarint(1), uvarint(0), uvarint(math.MaxUint64))), wal.ErrCorrupt},
		{"put without value", frame(payload([]byte{byte(wal.OpPut)}, uvarint(1), uvarint(0), uvarint(1), []byte("k"), uvarint(0))), wal.ErrCorrupt},
		{"value overruns the record", frame(payload([]byte{byte(wal.OpPut)}, uvarint(1), uvarint(0), uvarint(1), []byte("k"), uvarint(0), []byte{0}, uvarint(3), []byte("v"))), wal.ErrCorrupt},
	}
}

func TestDecodeErrors(t *testing.T) {
	for _, tt := range decodeErrorCases() {
		t.Run(tt.name, func(t *testing.T) {
			r, n, err := wal.Decode(tt.buf)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Decode(%x) error = %v, want %v", tt.buf, err, tt.want)
			}
			other := wal.ErrCorrupt
			if tt.want == wal.ErrCorrupt {
				other = io.ErrUnexpectedEOF
			}
			if errors.Is(err, other) {
				t.Errorf("Decode error %v matches both ErrCorrupt and io.ErrUnexpectedEOF", err)
			}
			if diff := cmp.Diff(wal.Record{}, r); diff != "" || n != 0 {
				t.Errorf("Decode = %+v, %d with an error; want the zero Record and 0", r, n)
			}
		})
	}
}

// TestDecodeDoesNotAllocate checks Decode's documented contract: "It never
// allocates". That matters most for a damaged length field: MaxPayload's
// doc promises decoders refuse larger lengths without allocating, and Scan
// calls Decode at every offset after a damaged record.
func TestDecodeDoesNotAllocate(t *testing.T) {
	good := wal.Append(nil, &wal.Record{Op: wal.OpPut, Rev: 1, Key: []byte("key"), Value: []byte("value")})
	badCRC := bytes.Clone(good)
	badCRC[4] ^= 1
	tests := []struct {
		name string
		buf  []byte
	}{
		{"valid frame", good},
		{"length MaxPayload+1", header(wal.MaxPayload+1, 0)},
		{"length MaxUint32", append(header(math.MaxUint32, 0), make([]byte, 64)...)},
		// One case for each other way to fail: they share the cause.
		{"short header", good[:wal.HeaderSize-1]},
		{"zero length", header(0, 0)},
		{"truncated payload", good[:len(good)-1]},
		{"bad CRC", badCRC},
		{"unknown op", frame([]byte{7, 1, 0, 1, 'k'})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			allocs := testing.AllocsPerRun(100, func() { _, _, _ = wal.Decode(tt.buf) })
			if allocs != 0 {
				t.Errorf("Decode(%.40x) allocates %v times per call, want 0", tt.buf, allocs)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	for _, r := range goldenRecords() {
		f.Add(wal.Append(nil, &r))
	}
	f.Add(encodeAll(goldenRecords()))
	f.Add(encodeAll(prevRecords()))
	f.Add(encodeAll(goldenRecords()[:3])[:60])
	for _, tt := range decodeErrorCases() {
		f.Add(tt.buf)
	}
	log, _, ends, _ := logFile()
	f.Add(log[len(wal.LogMagic):])
	f.Add(log[len(wal.LogMagic) : ends[1]+5])
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1024 {
			// Scan tries Decode at every offset of a damaged tail: long
			// inputs cost much and find nothing that short ones do not.
			return
		}
		checkDecode(t, data)
		// The same bytes as a payload in a well-formed frame, to get past
		// the checksum into the payload parser.
		checkDecode(t, frame(data))
		checkScan(t, data)
		checkScan(t, append(wal.LogMagic[:len(wal.LogMagic):len(wal.LogMagic)], data...))
		checkScanLog(t, append(wal.LogMagic[:len(wal.LogMagic):len(wal.LogMagic)], data...))
		checkScanLog(t, append(wal.LogMagicV1[:len(wal.LogMagicV1):len(wal.LogMagicV1)], data...))
	})
}

// checkScanLog checks what ScanLog makes of data: the committed part
// re-encodes, batch by batch, to the same bytes and scans alone to the
// same batches, and the tail after it holds no complete batch.
func checkScanLog(t *testing.T, data []byte) {
	t.Helper()
	batches, ls, err := scanLog(data)
	if ls.Committed < 0 || ls.Committed > len(data) {
		t.Fatalf("ScanLog(%x) = %+v, out of range", data, ls)
	}
	if err != nil {
		var damage *wal.DamageError
		if !errors.Is(err, wal.ErrCorrupt) && !errors.As(err, &damage) {
			t.Fatalf("ScanLog(%x): unexpected error %v", data, err)
		}
		return
	}
	magic := map[int][8]byte{1: wal.LogMagicV1, 2: wal.LogMagic}[ls.Version]
	enc := slices.Clone(magic[:])
	for _, b := range batches {
		if len(b) == 0 || ls.Version == 1 && len(b) != 1 {
			t.Fatalf("ScanLog(%x) gave a batch of %d records in format %d", data, len(b), ls.Version)
		}
		for i := range b {
			if op := b[i].Op; op != wal.OpPut && op != wal.OpDelete && op != wal.OpExpire {
				t.Fatalf("ScanLog(%x) gave a record of op %d", data, op)
			}
			enc = wal.Append(enc, &b[i])
		}
		if ls.Version == 2 {
			enc = wal.Append(enc, &wal.Record{Op: wal.OpCommit, Rev: b[len(b)-1].Rev})
		}
	}
	if !bytes.Equal(enc, data[:ls.Committed]) {
		t.Fatalf("ScanLog(%x) commits %d bytes, but its batches encode to %x", data, ls.Committed, enc)
	}
	again, ls2, err := scanLog(data[:ls.Committed])
	if err != nil || ls2 != (wal.LogScan{Version: ls.Version, Committed: ls.Committed}) {
		t.Fatalf("ScanLog of the committed part of %x = %+v, %v; want %d bytes committed, nothing after", data, ls2, err, ls.Committed)
	}
	if diff := cmp.Diff(batches, again, equateEmpty); diff != "" {
		t.Fatalf("ScanLog of the committed part of %x gives other batches (-whole +committed):\n%s", data, diff)
	}
	if ls.Version == 0 {
		return
	}
	tail := append(slices.Clone(magic[:]), data[ls.Committed:]...)
	none, ls3, err := scanLog(tail)
	if err != nil || len(none) > 0 || ls3.Committed != len(magic) || ls3.Uncommitted != ls.Uncommitted {
		t.Fatalf("the tail of %x after %d bytes scans to %d batches, %+v, %v; want none, and %d uncommitted records", data, ls.Committed, len(none), ls3, err, ls.Uncommitted)
	}
}

func checkDecode(t *testing.T, data []byte) {
	t.Helper()
	r, n, err := wal.Decode(data)
	if allocs := testing.AllocsPerRun(2, func() { _, _, _ = wal.Decode(data) }); allocs != 0 {
		t.Fatalf("Decode(%x) allocates %v times per call", data, allocs)
	}
	if err != nil {
		if !errors.Is(err, wal.ErrCorrupt) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("Decode(%x): error %v is neither ErrCorrupt nor io.ErrUnexpectedEOF", data, err)
		}
		if n != 0 {
			t.Fatalf("Decode(%x) = size %d with error %v", data, n, err)
		}
		return
	}
	if n <= wal.HeaderSize || n > len(data) {
		t.Fatalf("Decode(%x) = size %d, out of range", data, n)
	}
	if again := wal.Append(nil, &r); !bytes.Equal(again, data[:n]) {
		t.Fatalf("Decode accepted %x as %+v, which encodes to %x", data[:n], r, again)
	}
}

func checkScan(t *testing.T, data []byte) {
	t.Helper()
	first, valid, err := scanAll(data)
	if valid < 0 || valid > len(data) {
		t.Fatalf("Scan(%x) = %d valid bytes, out of range", data, valid)
	}
	var damage *wal.DamageError
	if err != nil && !errors.Is(err, wal.ErrMagic) && !errors.As(err, &damage) {
		t.Fatalf("Scan(%x): unexpected error %v", data, err)
	}
	if damage != nil && damage.Offset != int64(valid) {
		t.Fatalf("Scan(%x): DamageError at %d but %d valid bytes", data, damage.Offset, valid)
	}
	if err == nil && valid < len(data) {
		// A tail that Scan would have the caller cut holds no valid record.
		for i := valid + 1; i < len(data); i++ {
			if _, _, err := wal.Decode(data[i:]); err == nil {
				t.Fatalf("Scan(%x) cuts at %d, but a valid record starts at %d", data, valid, i)
			}
		}
	}
	second, valid2, err := scanAll(data[:valid])
	if err != nil || valid2 != valid {
		t.Fatalf("Scan of the valid prefix of %x = %d, %v; want %d, nil", data, valid2, err, valid)
	}
	if diff := cmp.Diff(first, second, equateEmpty); diff != "" {
		t.Fatalf("Scan of the valid prefix of %x gives other records (-whole +prefix):\n%s", data, diff)
	}
}
