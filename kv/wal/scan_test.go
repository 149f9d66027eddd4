package wal_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"kvsse/kv/wal"
)

// scanFile is a log of a few records of different shapes, with the offset
// at which each record starts.
func scanFile() (data []byte, starts []int, records []wal.Record) {
	records = []wal.Record{
		{Op: wal.OpPut, Rev: 1, Key: []byte("config/a"), ContentType: []byte("text/plain"), Value: []byte("on")},
		{Op: wal.OpPut, Rev: 2, Key: []byte("config/b"), Value: bytes.Repeat([]byte{0xff, 0}, 40)},
		{Op: wal.OpDelete, Rev: 3, PrevRev: 1, Key: []byte("config/a")},
		{Op: wal.OpPut, Rev: 4, PrevRev: 2, Key: []byte("config/b"), Expires: 99, Value: []byte("last value")},
	}
	data = append(data, wal.LogMagic[:]...)
	for i := range records {
		starts = append(starts, len(data))
		data = wal.Append(data, &records[i])
	}
	return data, starts, records
}

func TestScan(t *testing.T) {
	file, starts, records := scanFile()
	last := starts[len(starts)-1]
	with := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(file)) }
	flip := func(off int, bit uint) []byte {
		return with(func(b []byte) []byte { b[off] ^= 1 << bit; return b })
	}

	type scanCase struct {
		name   string
		data   []byte
		valid  int
		n      int   // records before the cut
		err    error // ErrMagic, or nil
		damage int   // offset of the DamageError; -1 for none
	}
	tests := []scanCase{
		{name: "clean file", data: file, valid: len(file), n: 4, damage: -1},
		{name: "empty file", data: nil, valid: 0, damage: -1},
		{name: "magic only", data: wal.LogMagic[:], valid: 8, damage: -1},
		{name: "short magic prefix", data: wal.LogMagic[:5], valid: 0, damage: -1},
		{name: "one byte of magic", data: wal.LogMagic[:1], valid: 0, damage: -1},
		{name: "bad magic", data: with(func(b []byte) []byte { b[7] = '9'; return b }), err: wal.ErrMagic, damage: -1},
		{name: "format 1 magic", data: append(wal.LogMagicV1[:], file[8:]...), err: wal.ErrMagic, damage: -1},
		{name: "snapshot magic", data: append(wal.SnapMagic[:], file[8:]...), err: wal.ErrMagic, damage: -1},
		{name: "short non-magic", data: []byte("kvx"), err: wal.ErrMagic, damage: -1},
		{name: "zeroed tail", data: append(bytes.Clone(file), make([]byte, 100)...), valid: len(file), n: 4, damage: -1},
		{name: "short zeroed tail", data: append(bytes.Clone(file), make([]byte, 3)...), valid: len(file), n: 4, damage: -1},
		{name: "last record zeroed", data: with(func(b []byte) []byte { clear(b[last:]); return b }), valid: last, n: 3, damage: -1},
		{name: "last record zeroed and zeroes after", data: append(with(func(b []byte) []byte { clear(b[last:]); return b }), make([]byte, 50)...), valid: last, n: 3, damage: -1},
		{name: "garbage tail", data: append(bytes.Clone(file), "not a record at all, just text"...), valid: len(file), n: 4, damage: -1},
		{name: "middle record zeroed", data: with(func(b []byte) []byte { clear(b[starts[1]:starts[2]]); return b }), valid: starts[1], n: 1, damage: starts[1]},
		{name: "junk between records", data: append(append(bytes.Clone(file[:starts[2]]), "junk"...), file[starts[2]:]...), valid: starts[2], n: 2, damage: starts[2]},
		{name: "first record length too large", data: with(func(b []byte) []byte { b[starts[0]+3] = 0xff; return b }), valid: starts[0], n: 0, damage: starts[0]},
	}
	for cut := last; cut < len(file); cut++ {
		tests = append(tests, scanCase{name: fmt.Sprintf("torn at %d", cut), data: file[:cut], valid: last, n: 3, damage: -1})
	}
	for off := last; off < len(file); off++ {
		for bit := range uint(8) {
			tests = append(tests, scanCase{name: fmt.Sprintf("last record bit %d.%d", off, bit), data: flip(off, bit), valid: last, n: 3, damage: -1})
		}
	}
	for off := starts[2]; off < starts[3]; off++ {
		for bit := range uint(8) {
			tests = append(tests, scanCase{name: fmt.Sprintf("middle record bit %d.%d", off, bit), data: flip(off, bit), valid: starts[2], n: 2, damage: starts[2]})
		}
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, valid, err := scanAll(tt.data)
			if valid != tt.valid {
				t.Errorf("valid = %d, want %d", valid, tt.valid)
			}
			var damage *wal.DamageError
			switch {
			case tt.damage >= 0:
				if !errors.As(err, &damage) {
					t.Fatalf("error = %v, want a *DamageError", err)
				}
				if damage.Offset != int64(tt.damage) {
					t.Errorf("DamageError.Offset = %d, want %d", damage.Offset, tt.damage)
				}
				if !errors.Is(err, wal.ErrCorrupt) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Errorf("DamageError %v wraps neither ErrCorrupt nor io.ErrUnexpectedEOF", err)
				}
			case tt.err != nil:
				if !errors.Is(err, tt.err) {
					t.Errorf("error = %v, want %v", err, tt.err)
				}
			case err != nil:
				t.Errorf("error = %v, want nil", err)
			}
			if diff := cmp.Diff(records[:tt.n], got, equateEmpty); diff != "" {
				t.Errorf("records (-want +got):\n%s", diff)
			}
		})
	}
}

func TestScanStopsOnCallbackError(t *testing.T) {
	file, starts, _ := scanFile()
	stop := errors.New("stop")
	calls := 0
	valid, err := wal.Scan(file, wal.LogMagic, func(r wal.Record) error {
		calls++
		if r.Rev == 3 {
			return stop
		}
		return nil
	})
	if err != stop {
		t.Errorf("error = %v, want the callback's error as is", err)
	}
	if valid != starts[2] || calls != 3 {
		t.Errorf("Scan = %d valid after %d calls, want %d after 3", valid, calls, starts[2])
	}
}

// TestScanFieldsAreCapped checks that the byte fields handed to fn, which
// point into data, are capped: appending to one never overwrites the rest
// of the file.
func TestScanFieldsAreCapped(t *testing.T) {
	file, _, _ := scanFile()
	var keys [][]byte
	if _, err := wal.Scan(file, wal.LogMagic, func(r wal.Record) error {
		keys = append(keys, r.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if cap(k) != len(k) {
			t.Errorf("key %q has room to grow (cap %d): appending to it would overwrite the next field", k, cap(k))
		}
	}
}

// BenchmarkScanDamagedHead measures Scan over a log whose first record is
// damaged and whose tail is zeroed: every later record start is tried as
// the head of a chain of frames to the end of the file, so the cost grows
// with the square of the number of records.
//
//	go test ./kv/wal -run '^$' -bench ScanDamagedHead
func BenchmarkScanDamagedHead(b *testing.B) {
	for _, n := range []int{250, 1000, 4000} {
		data := append([]byte(nil), wal.LogMagic[:]...)
		for i := range n {
			data = wal.Append(data, &wal.Record{Op: wal.OpPut, Rev: int64(i + 1), Key: []byte("key/x"), Value: bytes.Repeat([]byte("v"), 80)})
		}
		data[len(wal.LogMagic)+wal.HeaderSize+2] ^= 1
		data = append(data, make([]byte, 16)...)
		b.Run(fmt.Sprintf("%drecords", n), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				_, _ = wal.Scan(data, wal.LogMagic, func(wal.Record) error { return nil })
			}
		})
	}
}

// BenchmarkScanDamagedTail measures Scan over a log whose tail is garbage,
// which start-up meets after a crash. Scan tries Decode at every offset
// of the tail to tell a torn tail from damage with records after it, and
// Decode checksums every plausible frame it finds, so the cost per byte
// grows with the tail: compare MB/s across the sizes.
//
//	go test ./kv/wal -run '^$' -bench ScanDamagedTail
func BenchmarkScanDamagedTail(b *testing.B) {
	head := wal.Append(wal.LogMagic[:8:8], &wal.Record{Op: wal.OpPut, Rev: 1, Key: []byte("k"), Value: []byte("v")})
	for _, size := range []int{16 << 10, 64 << 10, 256 << 10} {
		// Every fourth offset reads as a frame header of length 64 KiB.
		data := append(bytes.Clone(head), bytes.Repeat([]byte{0, 0, 1, 0}, size/4)...)
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			b.SetBytes(int64(size))
			for b.Loop() {
				valid, err := wal.Scan(data, wal.LogMagic, func(wal.Record) error { return nil })
				if valid != len(head) || err != nil {
					b.Fatalf("Scan = %d, %v; want %d, nil", valid, err, len(head))
				}
			}
		})
	}
}

// TestScanDamageBeforeDamagedTail: a damaged record followed by valid
// records is a *DamageError even when the file's tail is damaged too.
// Cutting at the first damage would silently drop the valid records in
// between, which were acknowledged as durable.
func TestScanDamageBeforeDamagedTail(t *testing.T) {
	file, starts, records := scanFile()
	flipped := func(offs ...int) []byte {
		b := bytes.Clone(file)
		for _, off := range offs {
			b[off] ^= 0x10
		}
		return b
	}
	payload := func(i int) int { return starts[i] + wal.HeaderSize + 2 } // a byte inside record i's payload
	tests := []struct {
		name   string
		data   []byte
		damage int // the record index where the damage starts
	}{
		{"middle record damaged, then a zeroed tail", append(flipped(payload(1)), make([]byte, 64)...), 1},
		{"middle record damaged, then a garbage tail", append(flipped(payload(1)), "garbage after the last record"...), 1},
		{"middle and last record damaged", flipped(payload(1), payload(3)), 1},
		{"first and last record damaged", flipped(payload(0), payload(3)), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, valid, err := scanAll(tt.data)
			var damage *wal.DamageError
			if !errors.As(err, &damage) {
				t.Fatalf("Scan = %d, %v: the valid records after offset %d (revisions %d..) would be cut off; want a *DamageError",
					valid, err, starts[tt.damage], records[tt.damage+1].Rev)
			}
			if damage.Offset != int64(starts[tt.damage]) || valid != starts[tt.damage] {
				t.Errorf("Scan = %d, DamageError at %d; want both %d", valid, damage.Offset, starts[tt.damage])
			}
			if diff := cmp.Diff(records[:tt.damage], got, equateEmpty); diff != "" {
				t.Errorf("records (-want +got):\n%s", diff)
			}
		})
	}
}

// TestScanLengthFlipToEndOfFile: one flipped bit in a record's length can
// make the frame claim to end exactly at the end of the file. The records
// after it are still whole and valid, so this is damage, not a torn tail.
func TestScanLengthFlipToEndOfFile(t *testing.T) {
	records := []wal.Record{
		{Op: wal.OpPut, Rev: 1, Key: []byte("a"), Value: []byte("first")},
		// Two frames of 32 bytes each: 8 + 4 + a 20-byte key.
		{Op: wal.OpDelete, Rev: 2, Key: []byte("key/0123456789abcdef")},
		{Op: wal.OpDelete, Rev: 3, Key: []byte("key/fedcba9876543210")},
	}
	data := append([]byte(nil), wal.LogMagic[:]...)
	for i := range records {
		data = wal.Append(data, &records[i])
	}
	first := len(wal.LogMagic)
	length := int(data[first]) // < 64: bit 6 is clear
	if rest := len(data) - first - wal.HeaderSize - length; rest != 64 || length >= 64 {
		t.Fatalf("layout: first payload %d bytes, %d bytes after it; want < 64 and 64", length, rest)
	}
	data[first] |= 64 // the length now reaches exactly the end of the file
	valid, err := wal.Scan(data, wal.LogMagic, func(wal.Record) error { return nil })
	var damage *wal.DamageError
	if !errors.As(err, &damage) || damage.Offset != int64(first) {
		t.Errorf("Scan = %d, %v; want a *DamageError at %d: revisions 2 and 3 are whole and would be cut off", valid, err, first)
	}
}

// logFile is a segment of the current format: three batches, each ended
// by its commit marker. The second holds two records that share a
// revision, as a transaction's will. ends[i] is where batch i ends, and
// recordEnds where each record of the last batch ends.
func logFile() (data []byte, batches [][]wal.Record, ends, recordEnds []int) {
	batches = [][]wal.Record{
		{{Op: wal.OpPut, Rev: 1, Key: []byte("a"), ContentType: []byte("text/plain"), Value: []byte("1")}},
		{{Op: wal.OpPut, Rev: 2, Key: []byte("b"), Value: []byte("2")}, {Op: wal.OpDelete, Rev: 2, PrevRev: 1, Key: []byte("a")}},
		{{Op: wal.OpPut, Rev: 3, Key: []byte("c"), Value: bytes.Repeat([]byte("c"), 30)}, {Op: wal.OpExpire, Rev: 4, PrevRev: 2, Key: []byte("b")}},
	}
	data = append(data, wal.LogMagic[:]...)
	for _, b := range batches {
		recordEnds = recordEnds[:0]
		for i := range b {
			data = wal.Append(data, &b[i])
			recordEnds = append(recordEnds, len(data))
		}
		data = wal.Append(data, &wal.Record{Op: wal.OpCommit, Rev: b[len(b)-1].Rev})
		ends = append(ends, len(data))
	}
	return data, batches, ends, recordEnds
}

// scanLog runs ScanLog and keeps copies of the batches.
func scanLog(data []byte) ([][]wal.Record, wal.LogScan, error) {
	var batches [][]wal.Record
	ls, err := wal.ScanLog(data, func(b []wal.Record) error {
		batches = append(batches, slices.Clone(b))
		return nil
	})
	return batches, ls, err
}

func TestScanLog(t *testing.T) {
	file, batches, ends, recordEnds := logFile()
	with := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(file)) }
	marker := func(rev int64) []byte { return wal.Append(nil, &wal.Record{Op: wal.OpCommit, Rev: rev}) }
	record := wal.Append(nil, &wal.Record{Op: wal.OpPut, Rev: 5, Key: []byte("d"), Value: []byte("4")})

	type scanLogCase struct {
		name    string
		data    []byte
		want    wal.LogScan
		batches int   // committed batches
		err     error // ErrMagic or ErrCorrupt; nil for none
		damage  bool  // a *DamageError
	}
	tests := []scanLogCase{
		{name: "clean", data: file, want: wal.LogScan{Version: 2, Committed: len(file)}, batches: 3},
		{name: "empty", data: nil, want: wal.LogScan{}},
		{name: "short magic prefix", data: wal.LogMagic[:7], want: wal.LogScan{}},
		{name: "magic only", data: wal.LogMagic[:], want: wal.LogScan{Version: 2, Committed: 8}},
		{name: "bad magic", data: with(func(b []byte) []byte { b[7] = '9'; return b }), err: wal.ErrMagic},
		{name: "snapshot magic", data: append(wal.SnapMagic[:], file[8:]...), err: wal.ErrMagic},
		{name: "whole records without their marker", data: file[:recordEnds[1]], want: wal.LogScan{Version: 2, Committed: ends[1], Uncommitted: 2}, batches: 2},
		{name: "a record after the last marker", data: append(bytes.Clone(file), record...), want: wal.LogScan{Version: 2, Committed: len(file), Uncommitted: 1}, batches: 3},
		{name: "zeroed tail", data: append(bytes.Clone(file), make([]byte, 40)...), want: wal.LogScan{Version: 2, Committed: len(file)}, batches: 3},
		{name: "marker with another revision", data: append(append(bytes.Clone(file), record...), marker(4)...), want: wal.LogScan{Version: 2, Committed: len(file), Uncommitted: 1}, batches: 3, err: wal.ErrCorrupt},
		{name: "marker with no record", data: append(bytes.Clone(file), marker(4)...), want: wal.LogScan{Version: 2, Committed: len(file)}, batches: 3, err: wal.ErrCorrupt},
		{name: "marker right after the magic", data: append(wal.LogMagic[:], marker(0)...), want: wal.LogScan{Version: 2, Committed: 8}, err: wal.ErrCorrupt},
		{name: "snapshot record in a log", data: wal.Append(bytes.Clone(file), &wal.Record{Op: wal.OpSnapRev, Rev: 5}), want: wal.LogScan{Version: 2, Committed: len(file)}, batches: 3, err: wal.ErrCorrupt},
		{name: "damage in the first batch", data: with(func(b []byte) []byte { b[12] ^= 1; return b }), want: wal.LogScan{Version: 2, Committed: 8}, damage: true},
		{name: "damaged marker with batches after it", data: with(func(b []byte) []byte { b[ends[0]-1] ^= 1; return b }), want: wal.LogScan{Version: 2, Committed: 8, Uncommitted: 1}, damage: true},
	}
	for cut := ends[1] + 1; cut < len(file); cut++ {
		whole := 0
		for whole < len(recordEnds) && recordEnds[whole] <= cut {
			whole++
		}
		tests = append(tests, scanLogCase{name: fmt.Sprintf("torn at %d", cut), data: file[:cut],
			want: wal.LogScan{Version: 2, Committed: ends[1], Uncommitted: whole}, batches: 2})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ls, err := scanLog(tt.data)
			var damage *wal.DamageError
			switch {
			case tt.damage:
				if !errors.As(err, &damage) {
					t.Errorf("error = %v, want a *DamageError", err)
				}
			case tt.err != nil:
				if !errors.Is(err, tt.err) || errors.As(err, &damage) {
					t.Errorf("error = %v, want %v", err, tt.err)
				}
			case err != nil:
				t.Errorf("error = %v, want nil", err)
			}
			if diff := cmp.Diff(tt.want, ls); diff != "" && tt.err != wal.ErrMagic {
				t.Errorf("LogScan (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(batches[:tt.batches], got, equateEmpty); diff != "" {
				t.Errorf("batches (-want +got):\n%s", diff)
			}
		})
	}
}

func TestScanLogCallbackError(t *testing.T) {
	file, _, ends, _ := logFile()
	stop := errors.New("stop")
	calls := 0
	ls, err := wal.ScanLog(file, func(b []wal.Record) error {
		calls++
		if calls == 2 {
			return stop
		}
		return nil
	})
	if err != stop || calls != 2 || ls.Committed != ends[0] {
		t.Errorf("ScanLog = %+v, %v after %d calls; want the callback's error as is after 2, committed %d", ls, err, calls, ends[0])
	}
}

// TestScanLogV1 reads a segment of format 1, which has no markers: every
// whole record is a batch of its own, and a marker does not belong there.
func TestScanLogV1(t *testing.T) {
	records := []wal.Record{
		{Op: wal.OpPut, Rev: 1, Key: []byte("a"), Value: []byte("1")},
		{Op: wal.OpDelete, Rev: 2, PrevRev: 1, Key: []byte("a")},
		{Op: wal.OpExpire, Rev: 3, PrevRev: 2, Key: []byte("b")},
	}
	file := encodeAllWith(wal.LogMagicV1, records)
	last := len(encodeAllWith(wal.LogMagicV1, records[:2]))
	var want [][]wal.Record
	for _, r := range records {
		want = append(want, []wal.Record{r})
	}
	tests := []struct {
		name    string
		data    []byte
		want    wal.LogScan
		batches int
		corrupt bool
	}{
		{"clean", file, wal.LogScan{Version: 1, Committed: len(file)}, 3, false},
		{"magic only", wal.LogMagicV1[:], wal.LogScan{Version: 1, Committed: 8}, 0, false},
		{"torn last record", file[:len(file)-2], wal.LogScan{Version: 1, Committed: last}, 2, false},
		{"commit marker", wal.Append(bytes.Clone(file), &wal.Record{Op: wal.OpCommit, Rev: 3}), wal.LogScan{Version: 1, Committed: len(file)}, 3, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ls, err := scanLog(tt.data)
			if tt.corrupt != errors.Is(err, wal.ErrCorrupt) || !tt.corrupt && err != nil {
				t.Errorf("error = %v, want ErrCorrupt: %v", err, tt.corrupt)
			}
			if diff := cmp.Diff(tt.want, ls); diff != "" {
				t.Errorf("LogScan (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(want[:tt.batches], got, equateEmpty); diff != "" {
				t.Errorf("batches (-want +got):\n%s", diff)
			}
		})
	}
}

// scanAll scans a log and returns every record it reads, with Scan's
// results.
func scanAll(data []byte) ([]wal.Record, int, error) {
	return scanMagic(data, wal.LogMagic)
}

// scanMagic is scanAll for a segment of the format of magic.
func scanMagic(data []byte, magic [8]byte) ([]wal.Record, int, error) {
	var got []wal.Record
	valid, err := wal.Scan(data, magic, func(r wal.Record) error {
		got = append(got, r)
		return nil
	})
	return got, valid, err
}
