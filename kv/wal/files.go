package wal

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// File names in a data directory. The number is hexadecimal, fixed width,
// so that names sort in revision order: a segment is named by the first
// revision it may hold, a snapshot by the revision its log replay starts
// after.
const (
	lockName   = "LOCK"
	segPrefix  = "wal-"
	segSuffix  = ".log"
	snapPrefix = "snap-"
	snapSuffix = ".snap"
)

// SegmentPath is the path of the segment whose first revision is first.
func SegmentPath(dir string, first int64) string {
	return filepath.Join(dir, fmt.Sprintf("%s%016x%s", segPrefix, first, segSuffix))
}

// SnapshotPath is the path of the snapshot taken from revision rev.
func SnapshotPath(dir string, rev int64) string {
	return filepath.Join(dir, fmt.Sprintf("%s%016x%s", snapPrefix, rev, snapSuffix))
}

// Lock creates dir if needed and takes an exclusive, non-blocking flock on
// its lock file, so that two servers never share a data directory. The
// lock lasts until the returned file is closed or the process ends.
func Lock(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("data dir %s is in use by another kvsse process (lock held on %s)", dir, f.Name())
		}
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return f, nil
}

// Files are the segments and snapshots of a data directory, each list
// sorted by revision.
type Files struct {
	Segments  []int64 // first revisions
	Snapshots []int64 // snapshot revisions
}

// List reads the data directory's file names. Leftover temporary files of
// an interrupted snapshot are removed.
func List(dir string) (Files, error) { return list(dir, true) }

// ListOnly is List that removes nothing, for readers of a data directory
// that a server may be using.
func ListOnly(dir string) (Files, error) { return list(dir, false) }

func list(dir string, removeTmp bool) (Files, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return Files{}, fmt.Errorf("read data dir: %w", err)
	}
	var fs Files
	for _, e := range ents {
		name := e.Name()
		switch {
		case strings.HasSuffix(name, ".tmp"):
			if !removeTmp {
				continue
			}
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				return Files{}, fmt.Errorf("remove leftover %s: %w", name, err)
			}
		case strings.HasPrefix(name, segPrefix) && strings.HasSuffix(name, segSuffix):
			if n, ok := parseRev(name, segPrefix, segSuffix); ok {
				fs.Segments = append(fs.Segments, n)
			}
		case strings.HasPrefix(name, snapPrefix) && strings.HasSuffix(name, snapSuffix):
			if n, ok := parseRev(name, snapPrefix, snapSuffix); ok {
				fs.Snapshots = append(fs.Snapshots, n)
			}
		}
	}
	sort.Slice(fs.Segments, func(i, j int) bool { return fs.Segments[i] < fs.Segments[j] })
	sort.Slice(fs.Snapshots, func(i, j int) bool { return fs.Snapshots[i] < fs.Snapshots[j] })
	return fs, nil
}

func parseRev(name, prefix, suffix string) (int64, bool) {
	s := strings.TrimSuffix(strings.TrimPrefix(name, prefix), suffix)
	if len(s) != 16 {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 16, 64)
	return n, err == nil && n >= 0
}

// SyncDir fsyncs a directory, making the creation, removal or renaming of
// its entries durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open dir for sync: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}

// File is what a Segment writes to: an *os.File, or in tests a wrapper of
// one that injects faults (see Segment.Wrap).
type File interface {
	WriteAt(b []byte, off int64) (int, error)
	Sync() error
	Truncate(size int64) error
	Close() error
}

// Segment is a log file open for appending. It is not safe for concurrent
// use: one goroutine owns it.
type Segment struct {
	f    File
	path string
	size int64 // where the next Write goes
}

// CreateSegment creates the segment for revisions from first on, writes its
// magic and makes both the file and its directory entry durable.
func CreateSegment(dir string, first int64) (*Segment, error) {
	path := SegmentPath(dir, first)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create segment: %w", err)
	}
	s := &Segment{f: f, path: path}
	err = s.begin(true)
	if err == nil {
		err = SyncDir(dir)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return s, nil
}

// begin makes a segment ready for appending: it writes the magic first
// when magic is set (an empty segment), then syncs.
func (s *Segment) begin(magic bool) error {
	if magic {
		if err := s.Write(LogMagic[:]); err != nil {
			return err
		}
	}
	return s.Sync()
}

// OpenSegment opens an existing segment for appending after its first
// valid bytes, cutting off (and syncing away) anything beyond them. A
// segment shorter than the magic is started again with the magic. The
// caller appends to it only when it is of the current format (LogMagic).
func OpenSegment(path string, valid int64) (*Segment, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open segment: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stat segment: %w", err)
	}
	s := &Segment{f: f, path: path, size: valid}
	if valid < int64(len(LogMagic)) {
		valid, s.size = 0, 0
	}
	if st.Size() != valid {
		if err := f.Truncate(valid); err != nil {
			f.Close()
			return nil, fmt.Errorf("truncate segment %s to %d: %w", path, valid, err)
		}
	}
	if err := s.begin(valid == 0); err != nil {
		f.Close()
		return nil, err
	}
	return s, nil
}

// Wrap replaces the file s writes to with wrap of it, for tests that
// inject faults. The caller owns s, as for every other method.
func (s *Segment) Wrap(wrap func(File) File) { s.f = wrap(s.f) }

// Path is the segment's file name.
func (s *Segment) Path() string { return s.path }

// Write appends b at Size. A short or failed write is an error; Size then
// counts the bytes written, and the caller must either Truncate the
// segment back to where the write started or stop using it.
func (s *Segment) Write(b []byte) error {
	n, err := s.f.WriteAt(b, s.size)
	s.size += int64(n)
	if err != nil {
		return fmt.Errorf("write %s: %w", s.path, err)
	}
	return nil
}

// Sync makes every byte written so far durable. A failed Sync must not be
// retried: the kernel may have dropped the dirty pages and a later
// successful fsync would not mean the data is on disk. The one safe
// follow-up is Truncate back to the size of the last successful Sync, then
// Sync: the bytes that may be lost are then no longer part of the file.
func (s *Segment) Sync() error {
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", s.path, err)
	}
	return nil
}

// Truncate cuts the segment back to its first size bytes, which must not
// be more than Size; the next Write goes there. It does not sync. On most
// file systems it needs no free space, so it works on a full disk.
func (s *Segment) Truncate(size int64) error {
	if size > s.size {
		return fmt.Errorf("truncate %s to %d: longer than its %d bytes", s.path, size, s.size)
	}
	if err := s.f.Truncate(size); err != nil {
		return fmt.Errorf("truncate %s to %d: %w", s.path, size, err)
	}
	s.size = size
	return nil
}

// Size is the segment's length in bytes, magic included.
func (s *Segment) Size() int64 { return s.size }

// Close closes the file without syncing it.
func (s *Segment) Close() error { return s.f.Close() }

// WriteSnapshot writes a snapshot file for revision rev: the magic, an
// OpSnapRev record, every record that each passes to add, and an OpSnapEnd
// record with the count. It writes to a temporary file, syncs it, renames
// it into place and syncs the directory, so a snapshot file is either whole
// or absent.
func WriteSnapshot(dir string, rev int64, each func(add func(*Record) error) error) (err error) {
	final := SnapshotPath(dir, rev)
	tmp := final + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("create snapshot: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	if err := writeRecords(bw, SnapMagic, rev, each); err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync snapshot: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close snapshot: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("rename snapshot: %w", err)
	}
	return SyncDir(dir)
}

// ReadSnapshot reads a whole snapshot file and calls fn with each key
// record. A snapshot must be whole: any damage, or a missing end record,
// is an error naming the file.
func ReadSnapshot(path string, fn func(Record) error) (rev int64, err error) {
	return ReadSnapshotSized(path, nil, fn)
}

// ReadSnapshotSized is ReadSnapshot that first, unless size is nil, calls
// size with the number of key records that the snapshot's end record
// gives, before any record is checked: a hint for sizing what the records
// go into. It does not call size when the file does not end in such a record.
func ReadSnapshotSized(path string, size func(keys int), fn func(Record) error) (rev int64, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read snapshot: %w", err)
	}
	if n := snapshotKeys(data); size != nil && n >= 0 && n <= int64(len(data)/HeaderSize) {
		size(int(n))
	}
	var count, seen int64
	state := 0 // 0: expect OpSnapRev, 1: records, 2: after end
	valid, err := Scan(data, SnapMagic, func(r Record) error {
		switch {
		case state == 0 && r.Op == OpSnapRev:
			rev, state = r.Rev, 1
			return nil
		case state == 1 && r.Op == OpPut:
			seen++
			return fn(r)
		case state == 1 && r.Op == OpSnapEnd:
			count, state = r.Rev, 2
			return nil
		}
		return fmt.Errorf("%w: unexpected op %d in snapshot", ErrCorrupt, r.Op)
	})
	if err == nil && (valid != len(data) || state != 2 || count != seen) {
		err = fmt.Errorf("%w: snapshot is incomplete (%d of %d bytes valid)", ErrCorrupt, valid, len(data))
	}
	if err != nil {
		return 0, fmt.Errorf("snapshot %s: %w", path, err)
	}
	return rev, nil
}

// snapshotKeys returns the count in the OpSnapEnd record at the end of
// data, a snapshot's contents, found by trying the few lengths that record
// can have; -1 when there is none.
func snapshotKeys(data []byte) int64 {
	for p := 4; p <= 3+binary.MaxVarintLen64; p++ {
		off := len(data) - HeaderSize - p
		if off < len(SnapMagic) {
			break
		}
		if r, n, err := Decode(data[off:]); err == nil && n == len(data)-off && r.Op == OpSnapEnd {
			return r.Rev
		}
	}
	return -1
}
