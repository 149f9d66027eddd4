package wal_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"kvsse/kv/wal"
)

func TestLock(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "data")
	first, err := wal.Lock(dir)
	if err != nil {
		t.Fatalf("Lock of a new dir: %v", err)
	}
	// flock locks belong to the open file, so a second Lock conflicts even
	// inside one process: two stores in one process cannot share a dir.
	if second, err := wal.Lock(dir); err == nil {
		second.Close()
		t.Fatal("a second Lock on the same dir succeeded")
	} else if !strings.Contains(err.Error(), "in use") || !strings.Contains(err.Error(), dir) {
		t.Errorf("second Lock error = %q, want it to say the dir %s is in use", err, dir)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := wal.Lock(dir)
	if err != nil {
		t.Fatalf("Lock after the first was released: %v", err)
	}
	again.Close()
}

func TestLockNotADir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if f, err := wal.Lock(file); err == nil {
		f.Close()
		t.Fatal("Lock on a regular file succeeded")
	}
}

func touch(t *testing.T, dir string, names ...string) {
	t.Helper()
	for _, name := range names {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestList(t *testing.T) {
	dir := t.TempDir()
	touch(t, dir,
		filepath.Base(wal.SegmentPath(dir, 0x100)),
		filepath.Base(wal.SegmentPath(dir, 2)),
		filepath.Base(wal.SegmentPath(dir, 0x10)),
		filepath.Base(wal.SegmentPath(dir, 1)),
		filepath.Base(wal.SnapshotPath(dir, 0xff)),
		filepath.Base(wal.SnapshotPath(dir, 0x0f)),
		filepath.Base(wal.SnapshotPath(dir, 0x1000))+".tmp",
		"other.tmp",
		"LOCK",
		"README",
		"wal-12.log",               // not 16 digits
		"wal-zzzzzzzzzzzzzzzz.log", // not hexadecimal
		"wal-ffffffffffffffff.log", // overflows int64
		"snap-0000000000000001.log",
	)
	got, err := wal.List(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := wal.Files{Segments: []int64{1, 2, 0x10, 0x100}, Snapshots: []int64{0x0f, 0xff}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".tmp") {
			t.Errorf("List left %s behind", e.Name())
		}
	}
	if len(ents) != 12 {
		t.Errorf("%d files left, want the 12 that are not .tmp", len(ents))
	}
}

func TestListMissingDir(t *testing.T) {
	if _, err := wal.List(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("List of a missing dir succeeded")
	}
}

func TestPaths(t *testing.T) {
	if got, want := wal.SegmentPath("d", 0x2a), filepath.Join("d", "wal-000000000000002a.log"); got != want {
		t.Errorf("SegmentPath = %q, want %q", got, want)
	}
	if got, want := wal.SnapshotPath("d", 0x2a), filepath.Join("d", "snap-000000000000002a.snap"); got != want {
		t.Errorf("SnapshotPath = %q, want %q", got, want)
	}
}

// snapRecords are key records as a store would put in a snapshot.
func snapRecords() []wal.Record {
	return []wal.Record{
		{Op: wal.OpPut, Rev: 3, Key: []byte("a"), ContentType: []byte("text/plain"), Value: []byte("1")},
		{Op: wal.OpPut, Rev: 9, Key: []byte("b/c"), Expires: 1e18, Value: []byte{0, 1, 2}},
		{Op: wal.OpPut, Rev: 12, Key: []byte("d")},
	}
}

func writeSnapshot(t *testing.T, dir string, rev int64, records []wal.Record) string {
	t.Helper()
	err := wal.WriteSnapshot(dir, rev, func(add func(*wal.Record) error) error {
		for i := range records {
			if err := add(&records[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("WriteSnapshot: %v", err)
	}
	return wal.SnapshotPath(dir, rev)
}

func readSnapshot(path string) (int64, []wal.Record, error) {
	var got []wal.Record
	rev, err := wal.ReadSnapshot(path, func(r wal.Record) error {
		got = append(got, r)
		return nil
	})
	return rev, got, err
}

// testRoundTrip checks that roundTrip, which writes a store's records at
// a revision to a file and reads them back, gives back the same, compared
// with opt, for stores with keys and without.
func testRoundTrip(t *testing.T, opt cmp.Option, roundTrip func(t *testing.T, rev int64, records []wal.Record) (int64, []wal.Record, error)) {
	for _, tt := range []struct {
		name    string
		rev     int64
		records []wal.Record
	}{
		{"keys", 12, snapRecords()},
		{"no keys", 40, nil},
		{"empty store", 0, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rev, got, err := roundTrip(t, tt.rev, tt.records)
			if err != nil {
				t.Fatal(err)
			}
			if rev != tt.rev {
				t.Errorf("revision %d, want %d", rev, tt.rev)
			}
			if diff := cmp.Diff(tt.records, got, opt); diff != "" {
				t.Errorf("records (-want +got):\n%s", diff)
			}
		})
	}
}

// A snapshot reads back as written, tells its size, and is the one file
// of its directory.
func TestSnapshotRoundTrip(t *testing.T) {
	testRoundTrip(t, equateEmpty, func(t *testing.T, rev int64, records []wal.Record) (int64, []wal.Record, error) {
		dir := t.TempDir()
		path := writeSnapshot(t, dir, rev, records)
		hint := -1
		if _, err := wal.ReadSnapshotSized(path, func(n int) { hint = n }, func(wal.Record) error { return nil }); err != nil {
			t.Fatalf("ReadSnapshotSized: %v", err)
		}
		if hint != len(records) {
			t.Errorf("size hint = %d, want %d", hint, len(records))
		}
		files, err := wal.List(dir)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(wal.Files{Snapshots: []int64{rev}}, files); diff != "" {
			t.Errorf("files after WriteSnapshot (-want +got):\n%s", diff)
		}
		return readSnapshot(path)
	})
}

func TestWriteSnapshotFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	boom := errors.New("boom")
	err := wal.WriteSnapshot(dir, 5, func(add func(*wal.Record) error) error {
		r := snapRecords()[0]
		if err := add(&r); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("WriteSnapshot error = %v, want it to wrap the callback's error", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Errorf("a failed WriteSnapshot left %v", ents)
	}
}

func TestReadSnapshotCallbackError(t *testing.T) {
	path := writeSnapshot(t, t.TempDir(), 12, snapRecords())
	boom := errors.New("boom")
	_, err := wal.ReadSnapshot(path, func(wal.Record) error { return boom })
	if !errors.Is(err, boom) {
		t.Errorf("ReadSnapshot error = %v, want it to wrap the callback's error", err)
	}
}

func TestReadSnapshotTruncated(t *testing.T) {
	dir := t.TempDir()
	path := writeSnapshot(t, dir, 12, snapRecords())
	whole, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for cut := range len(whole) {
		cutPath := filepath.Join(dir, fmt.Sprintf("cut-%d.snap", cut))
		if err := os.WriteFile(cutPath, whole[:cut], 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := wal.ReadSnapshot(cutPath, func(wal.Record) error { return nil }); err == nil {
			t.Errorf("ReadSnapshot accepted the snapshot cut to %d of %d bytes", cut, len(whole))
		} else if !strings.Contains(err.Error(), cutPath) {
			t.Errorf("ReadSnapshot error %q does not name the file", err)
		}
	}
}

func TestReadSnapshotMalformed(t *testing.T) {
	put := func(key string) wal.Record {
		return wal.Record{Op: wal.OpPut, Rev: 1, Key: []byte(key), Value: []byte("v")}
	}
	start := wal.Record{Op: wal.OpSnapRev, Rev: 7}
	end := func(n int64) wal.Record { return wal.Record{Op: wal.OpSnapEnd, Rev: n} }
	tests := []struct {
		name    string
		magic   [8]byte
		records []wal.Record
		tail    []byte
	}{
		{"no end record", wal.SnapMagic, []wal.Record{start, put("a"), put("b")}, nil},
		{"only a start record", wal.SnapMagic, []wal.Record{start}, nil},
		{"end count too small", wal.SnapMagic, []wal.Record{start, put("a"), put("b"), end(1)}, nil},
		{"end count too large", wal.SnapMagic, []wal.Record{start, put("a"), end(2)}, nil},
		{"no start record", wal.SnapMagic, []wal.Record{put("a"), end(1)}, nil},
		{"two start records", wal.SnapMagic, []wal.Record{start, start, end(0)}, nil},
		{"delete inside", wal.SnapMagic, []wal.Record{start, {Op: wal.OpDelete, Rev: 2, Key: []byte("a")}, end(1)}, nil},
		{"record after the end", wal.SnapMagic, []wal.Record{start, put("a"), end(1), put("b")}, nil},
		{"garbage after the end", wal.SnapMagic, []wal.Record{start, put("a"), end(1)}, []byte("garbage")},
		{"zeroes after the end", wal.SnapMagic, []wal.Record{start, put("a"), end(1)}, make([]byte, 16)},
		{"log magic", wal.LogMagic, []wal.Record{start, put("a"), end(1)}, nil},
		{"empty file", wal.SnapMagic, nil, nil},
	}
	dir := t.TempDir()
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var data []byte
			if tt.name != "empty file" {
				data = append(data, tt.magic[:]...)
			}
			for j := range tt.records {
				data = wal.Append(data, &tt.records[j])
			}
			data = append(data, tt.tail...)
			path := filepath.Join(dir, fmt.Sprintf("%d.snap", i))
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
			if rev, got, err := readSnapshot(path); err == nil {
				t.Errorf("ReadSnapshot accepted it: revision %d, %d records", rev, len(got))
			}
		})
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustScanAll(t *testing.T, data []byte) ([]wal.Record, int) {
	t.Helper()
	got, valid, err := scanAll(data)
	if err != nil {
		t.Fatalf("Scan: %v", err)
	}
	return got, valid
}

func TestSegment(t *testing.T) {
	dir := t.TempDir()
	seg, err := wal.CreateSegment(dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	path := wal.SegmentPath(dir, 1)
	if got := readFile(t, path); !bytes.Equal(got, wal.LogMagic[:]) {
		t.Fatalf("a new segment holds %q, want only the magic", got)
	}
	if seg.Size() != 8 {
		t.Errorf("Size of a new segment = %d, want 8", seg.Size())
	}
	records := []wal.Record{
		{Op: wal.OpPut, Rev: 1, Key: []byte("a"), Value: []byte("1")},
		{Op: wal.OpPut, Rev: 2, Key: []byte("b"), Value: []byte("22")},
		{Op: wal.OpDelete, Rev: 3, PrevRev: 1, Key: []byte("a")},
		{Op: wal.OpPut, Rev: 4, Key: []byte("c"), Value: bytes.Repeat([]byte("v"), 100)},
	}
	var frames []byte
	for i := range records[:3] {
		frames = wal.Append(frames, &records[i])
	}
	if err := seg.Write(frames); err != nil {
		t.Fatal(err)
	}
	if err := seg.Sync(); err != nil {
		t.Fatal(err)
	}
	if got, want := seg.Size(), int64(8+len(frames)); got != want {
		t.Errorf("Size = %d, want %d", got, want)
	}
	valid := seg.Size()
	// A torn write: half of the fourth record.
	torn := wal.Append(nil, &records[3])
	if err := seg.Write(torn[:len(torn)/2]); err != nil {
		t.Fatal(err)
	}
	if err := seg.Close(); err != nil {
		t.Fatal(err)
	}

	got, n := mustScanAll(t, readFile(t, path))
	if int64(n) != valid {
		t.Fatalf("Scan of the torn segment: %d valid bytes, want %d", n, valid)
	}
	if diff := cmp.Diff(records[:3], got, equateEmpty); diff != "" {
		t.Fatalf("records before the torn one (-want +got):\n%s", diff)
	}

	seg, err = wal.OpenSegment(path, int64(n))
	if err != nil {
		t.Fatal(err)
	}
	if seg.Size() != valid {
		t.Errorf("Size after OpenSegment = %d, want %d", seg.Size(), valid)
	}
	if got := int64(len(readFile(t, path))); got != valid {
		t.Errorf("OpenSegment left %d bytes, want the torn tail cut to %d", got, valid)
	}
	if err := seg.Write(torn); err != nil {
		t.Fatal(err)
	}
	if err := seg.Close(); err != nil {
		t.Fatal(err)
	}
	got, n = mustScanAll(t, readFile(t, path))
	if diff := cmp.Diff(records, got, equateEmpty); diff != "" {
		t.Errorf("records after appending to the reopened segment (-want +got):\n%s", diff)
	}
	if n != len(readFile(t, path)) {
		t.Errorf("the reopened segment has a damaged tail")
	}
}

// shortFile writes only half of the buffer of its failing-th WriteAt and
// returns ENOSPC, as a write on a full disk does.
type shortFile struct {
	wal.File
	writes, failing int
}

func (f *shortFile) WriteAt(b []byte, off int64) (int, error) {
	f.writes++
	if f.writes != f.failing {
		return f.File.WriteAt(b, off)
	}
	n, err := f.File.WriteAt(b[:len(b)/2], off)
	if err != nil {
		return n, err
	}
	return n, &os.PathError{Op: "write", Path: "segment", Err: syscall.ENOSPC}
}

// TestSegmentTruncateAfterShortWrite: after a short write, Size counts the
// bytes written; Truncate back to where the write started removes them
// from the file, and the next Write goes there, leaving no hole.
func TestSegmentTruncateAfterShortWrite(t *testing.T) {
	dir := t.TempDir()
	seg, err := wal.CreateSegment(dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	seg.Wrap(func(f wal.File) wal.File { return &shortFile{File: f, failing: 2} })
	records := []wal.Record{
		{Op: wal.OpPut, Rev: 1, Key: []byte("a"), Value: []byte("1")},
		{Op: wal.OpPut, Rev: 2, Key: []byte("b"), Value: bytes.Repeat([]byte("v"), 100)},
	}
	if err := seg.Write(wal.Append(nil, &records[0])); err != nil {
		t.Fatal(err)
	}
	before := seg.Size()
	second := wal.Append(nil, &records[1])
	err = seg.Write(second)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Write = %v, want the file's ENOSPC", err)
	}
	if got, want := seg.Size(), before+int64(len(second)/2); got != want {
		t.Errorf("Size after a short write = %d, want %d", got, want)
	}
	if err := seg.Truncate(seg.Size() + 1); err == nil {
		t.Errorf("Truncate past Size succeeded")
	}
	if err := seg.Truncate(before); err != nil {
		t.Fatal(err)
	}
	if seg.Size() != before || int64(len(readFile(t, seg.Path()))) != before {
		t.Errorf("after Truncate(%d): Size %d, file %d bytes", before, seg.Size(), len(readFile(t, seg.Path())))
	}
	if err := seg.Write(second); err != nil {
		t.Fatal(err)
	}
	if err := seg.Close(); err != nil {
		t.Fatal(err)
	}
	data := readFile(t, seg.Path())
	got, n := mustScanAll(t, data)
	if n != len(data) {
		t.Errorf("Scan: %d valid bytes of %d", n, len(data))
	}
	if diff := cmp.Diff(records, got, equateEmpty); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
}

func TestOpenSegmentShorterThanMagic(t *testing.T) {
	for _, content := range [][]byte{nil, wal.LogMagic[:3], wal.LogMagic[:7]} {
		t.Run(fmt.Sprintf("%d bytes", len(content)), func(t *testing.T) {
			dir := t.TempDir()
			path := wal.SegmentPath(dir, 5)
			if err := os.WriteFile(path, content, 0o644); err != nil {
				t.Fatal(err)
			}
			seg, err := wal.OpenSegment(path, 0)
			if err != nil {
				t.Fatal(err)
			}
			r := wal.Record{Op: wal.OpPut, Rev: 5, Key: []byte("k"), Value: []byte("v")}
			if err := seg.Write(wal.Append(nil, &r)); err != nil {
				t.Fatal(err)
			}
			if got := seg.Size(); got != int64(len(readFile(t, path))) {
				t.Errorf("Size = %d, file has %d bytes", got, len(readFile(t, path)))
			}
			if err := seg.Close(); err != nil {
				t.Fatal(err)
			}
			got, _ := mustScanAll(t, readFile(t, path))
			if diff := cmp.Diff([]wal.Record{r}, got, equateEmpty); diff != "" {
				t.Errorf("records (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCreateSegmentInMissingDir(t *testing.T) {
	if seg, err := wal.CreateSegment(filepath.Join(t.TempDir(), "missing"), 1); err == nil {
		seg.Close()
		t.Error("CreateSegment in a missing dir succeeded")
	}
}

func TestOpenSegmentMissing(t *testing.T) {
	if seg, err := wal.OpenSegment(filepath.Join(t.TempDir(), "wal-0000000000000001.log"), 8); err == nil {
		seg.Close()
		t.Error("OpenSegment of a missing file succeeded")
	}
}

// TestSegmentsSortByRevision checks that file names sort like revisions,
// which List relies on.
func TestSegmentsSortByRevision(t *testing.T) {
	revs := []int64{0, 1, 9, 10, 15, 16, 255, 256, 1 << 40, 1<<62 - 1}
	var names []string
	for _, r := range revs {
		names = append(names, wal.SegmentPath("", r))
	}
	if !slices.IsSorted(names) {
		t.Errorf("segment names do not sort in revision order: %q", names)
	}
}

func TestListOnlyKeepsLeftovers(t *testing.T) {
	dir := t.TempDir()
	tmp := filepath.Base(wal.SnapshotPath(dir, 7)) + ".tmp"
	touch(t, dir, filepath.Base(wal.SegmentPath(dir, 1)), tmp)
	got, err := wal.ListOnly(dir)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(wal.Files{Segments: []int64{1}}, got); diff != "" {
		t.Errorf("ListOnly (-want +got):\n%s", diff)
	}
	if _, err := os.Stat(filepath.Join(dir, tmp)); err != nil {
		t.Errorf("ListOnly removed %s: %v", tmp, err)
	}
}

// backupOf is the backup file of records at rev.
func backupOf(t testing.TB, rev int64, records []wal.Record) []byte {
	t.Helper()
	var b bytes.Buffer
	n, err := wal.WriteBackup(&b, rev, func(add func(*wal.Record) error) error {
		for i := range records {
			if err := add(&records[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil || n != int64(b.Len()) {
		t.Fatalf("WriteBackup: %d bytes, %v; wrote %d", n, err, b.Len())
	}
	return b.Bytes()
}

// readBackup reads a whole backup file: its revision and key records.
func readBackup(data []byte) (int64, []wal.Record, error) {
	br, err := wal.NewBackupReader(bytes.NewReader(data))
	if err != nil {
		return 0, nil, err
	}
	var got []wal.Record
	for {
		r, err := br.Next()
		switch {
		case err == io.EOF && br.Keys != int64(len(got)):
			return 0, nil, fmt.Errorf("Keys %d after %d records", br.Keys, len(got))
		case err == io.EOF:
			return br.Revision, got, nil
		case err != nil:
			return 0, nil, err
		}
		r.Key, r.ContentType, r.Value = slices.Clone(r.Key), slices.Clone(r.ContentType), slices.Clone(r.Value)
		got = append(got, r)
	}
}

// A backup reads back as written, and starts with its magic.
func TestBackupRoundTrip(t *testing.T) {
	testRoundTrip(t, cmp.Comparer(bytes.Equal), func(t *testing.T, rev int64, records []wal.Record) (int64, []wal.Record, error) {
		data := backupOf(t, rev, records)
		if !bytes.HasPrefix(data, wal.BackupMagic[:]) {
			t.Fatalf("backup starts with %q", data[:8])
		}
		return readBackup(data)
	})
}

// TestBackupDamage flips every byte of a backup, and cuts it at every
// length: each is refused, with an offset inside the file.
func TestBackupDamage(t *testing.T) {
	data := backupOf(t, 12, snapRecords())
	check := func(what string, bad []byte) {
		t.Helper()
		_, _, err := readBackup(bad)
		var be *wal.BackupError
		if !errors.As(err, &be) || be.Offset < 0 || be.Offset > int64(len(data)) {
			t.Errorf("%s: got %v, want a *BackupError with an offset in the file", what, err)
		}
	}
	for i := range data {
		bad := slices.Clone(data)
		bad[i] ^= 0x20
		check(fmt.Sprintf("byte %d flipped", i), bad)
	}
	for n := range len(data) {
		check(fmt.Sprintf("cut at %d", n), data[:n])
	}
	check("a byte after the trailer", append(slices.Clone(data), 0))
	check("the keys out of order", backupOf(t, 12, []wal.Record{snapRecords()[1], snapRecords()[0]}))
	check("a key twice", backupOf(t, 12, []wal.Record{snapRecords()[0], snapRecords()[0]}))
	check("a key above the backup's revision", backupOf(t, 5, snapRecords()))
	check("a delete record", backupOf(t, 12, []wal.Record{{Op: wal.OpDelete, Rev: 3, Key: []byte("a")}}))
	snap := readFile(t, writeSnapshot(t, t.TempDir(), 12, snapRecords()))
	check("a snapshot file", snap)
}

// FuzzBackupReader: the reader never panics, and what it accepts is a
// backup that writes back to the same bytes.
func FuzzBackupReader(f *testing.F) {
	f.Add(backupOf(f, 12, snapRecords()))
	f.Add(backupOf(f, 0, nil))
	f.Add(backupOf(f, 12, snapRecords())[:40])
	f.Fuzz(func(t *testing.T, data []byte) {
		rev, got, err := readBackup(data)
		if err != nil {
			return
		}
		if again := backupOf(t, rev, got); !bytes.Equal(again, data) {
			t.Fatalf("accepted %x, which writes back as %x", data, again)
		}
	})
}
