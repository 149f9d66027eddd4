package kv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"os"
	"path/filepath"
	"syscall"
	"unsafe"

	"kvsse/kv/wal"
)

// ErrNotEmpty: Restore was given a directory that holds files already.
var ErrNotEmpty = errors.New("directory not empty")

// frozen returns the store's revision and its ordered keys at that
// revision, a view that needs no lock. It holds orderMu for reading, which
// the committer takes to apply a batch and move the revision, for the
// constant time of a freeze: writes go on while the view is read.
func (s *Store) frozen() (int64, orderView) {
	s.orderMu.RLock()
	defer s.orderMu.RUnlock()
	return s.rev.Load(), s.order.freeze()
}

// eachRecord passes a put record of each entry of view, in key order, to
// add: the records of a snapshot or a backup. The record's Key and
// ContentType are the entry's strings' own bytes, not copies (add only
// encodes them): a backup of a million keys then makes no garbage that
// the collector would take from the writers' time.
func eachRecord(view orderView) func(add func(*wal.Record) error) error {
	return func(add func(*wal.Record) error) error {
		var r wal.Record
		for e := range view.from("") {
			r = wal.Record{Op: wal.OpPut, Rev: e.Revision, Key: readOnlyBytes(e.Key),
				ContentType: readOnlyBytes(e.ContentType), Expires: e.Expires, Value: e.Value}
			if err := add(&r); err != nil {
				return err
			}
		}
		return nil
	}
}

// readOnlyBytes is the bytes of s, without a copy: they must never be
// written to.
func readOnlyBytes(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

// Backup is a copy of a store's keys at one revision, to be written as a
// backup file.
type Backup struct {
	Revision int64 // the revision the copy was taken at
	view     orderView
}

// Backup takes a copy of the store at its current revision, in constant
// time and without stopping writes (see frozen): the copy holds every key
// as it was then, those past their expiry whose delete had not committed
// included, as a restart would find them. Each later write copies the few
// tree nodes it changes while the copy is referenced.
func (s *Store) Backup() *Backup {
	rev, view := s.frozen()
	return &Backup{Revision: rev, view: view}
}

// WriteTo writes the backup file to w, in the format of
// wal.WriteBackup, and returns the bytes written. It may be called more
// than once, from any goroutine.
func (b *Backup) WriteTo(w io.Writer) (int64, error) {
	n, err := wal.WriteBackup(w, b.Revision, eachRecord(b.view))
	if err != nil {
		return n, fmt.Errorf("kv: backup at revision %d: %w", b.Revision, err)
	}
	return n, nil
}

// Export returns the store's revision and the live entries whose keys
// start with prefix, in key order, all as they were at that revision: a
// frozen view (see frozen), read while writes go on. The sequence never
// yields an error; the error results are there for stores that read over
// a network. The context is unused.
func (s *Store) Export(_ context.Context, prefix string) (int64, iter.Seq2[Entry, error], error) {
	rev, view := s.frozen()
	now := s.opts.Now().UnixNano()
	return rev, func(yield func(Entry, error) bool) {
		for e := range view.prefixed(prefix) {
			if !e.expired(now) && !yield(*e, nil) {
				return
			}
		}
	}, nil
}

// Restore reads a backup file from r and makes dir a data directory that
// holds exactly its keys at its revision: a store opened on it starts at
// that revision, its history empty from there on. dir must be missing or
// empty (else ErrNotEmpty). The file is checked as it is read (every
// record, the key order and rules, the count and the whole file's
// checksum) and written to a new directory beside dir, synced, and renamed
// to dir only when all of it was right: dir is whole or absent, also when
// the process dies. It returns the revision and the number of keys.
func Restore(r io.Reader, dir string) (rev, keys int64, err error) {
	if err := checkEmpty(dir); err != nil {
		return 0, 0, err
	}
	br, err := wal.NewBackupReader(r)
	if err != nil {
		return 0, 0, fmt.Errorf("kv: restore: %w", err)
	}
	dir = filepath.Clean(dir)
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return 0, 0, fmt.Errorf("kv: restore: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".restore-")
	if err != nil {
		return 0, 0, fmt.Errorf("kv: restore: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	err = wal.WriteSnapshot(tmp, br.Revision, func(add func(*wal.Record) error) error {
		for {
			rec, err := br.Next()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if err := ValidateKey(string(rec.Key)); err != nil {
				return fmt.Errorf("backup record %d: %w", br.Keys, err)
			}
			if err := add(&rec); err != nil {
				return err
			}
		}
	})
	if err == nil {
		err = os.Chmod(tmp, 0o755)
	}
	if err == nil {
		err = checkEmpty(dir)
	}
	if err == nil {
		// rename(2) replaces an empty directory; os.Rename refuses to.
		err = syscall.Rename(tmp, dir)
	}
	if err == nil {
		err = wal.SyncDir(parent)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("kv: restore to %s: %w", dir, err)
	}
	return br.Revision, br.Keys, nil
}

// checkEmpty returns an error wrapping ErrNotEmpty when dir holds
// anything; a missing dir is fine.
func checkEmpty(dir string) error {
	ents, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("kv: restore: %w", err)
	case len(ents) > 0:
		return fmt.Errorf("kv: restore: %s holds %d files (%s...): %w; restore into a new or empty directory", dir, len(ents), ents[0].Name(), ErrNotEmpty)
	}
	return nil
}

// CheckReport is what Check found in a data directory.
type CheckReport struct {
	Revision int64 // the revision a server started on it would have
	Keys     int64 // the keys it would hold (expired ones whose delete is not logged included)
	Bytes    int64 // the sum of their values' lengths
	Files    []CheckFile
	// Tail, when not nil, is the end of the last log segment that
	// start-up would cut off: whole records of a batch that has no
	// commit marker, then perhaps a torn or damaged frame.
	Tail *Tail
}

// CheckFile is one snapshot or log segment.
type CheckFile struct {
	Name string // the file's name in the directory
	Size int64
}

// Tail is the end of a log segment that start-up cuts off.
type Tail struct {
	File    string // its path
	Offset  int64  // where it starts
	Bytes   int64  // its length
	Records int    // the whole records in it, which no commit marker ends
	// Damage, when not nil, is a frame in it that is whole but fails its
	// checksum or does not parse, with its offset: not what an
	// interrupted write leaves, but what a damaged disk does.
	Damage error
}

// Check reads every snapshot and log segment of the data directory dir
// and what a server started on it would hold, and returns it. It changes
// nothing and takes no lock, so it may run beside a server on dir; but a
// compaction meanwhile may remove a file it is about to read, and the
// report is then an error naming it. Damage that start-up refuses is an
// error naming the file and the offset; a tail start-up would cut off is
// in the report, and when a whole frame in it is damaged, Check also
// returns an error naming it.
func Check(dir string) (*CheckReport, error) {
	s := newStore(Options{Dir: dir})
	defer s.feed.Close()
	d := &durability{s: s, dir: dir, readOnly: true}
	if err := d.load(); err != nil {
		return nil, fmt.Errorf("kv: check %s: %w", dir, err)
	}
	rep := &CheckReport{Revision: s.rev.Load(), Keys: s.stats.Keys.Load(), Bytes: s.stats.ValueBytes.Load(), Tail: d.tail}
	files, err := wal.ListOnly(dir)
	if err != nil {
		return nil, fmt.Errorf("kv: check %s: %w", dir, err)
	}
	var paths []string
	for i, rev := range files.Snapshots {
		paths = append(paths, wal.SnapshotPath(dir, rev))
		if i == len(files.Snapshots)-1 {
			continue // the newest was read by load
		}
		if _, err := wal.ReadSnapshot(paths[i], func(wal.Record) error { return nil }); err != nil {
			return nil, fmt.Errorf("kv: check %s: %w", dir, err)
		}
	}
	for _, first := range files.Segments {
		paths = append(paths, wal.SegmentPath(dir, first))
	}
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("kv: check %s: %w", dir, err)
		}
		rep.Files = append(rep.Files, CheckFile{Name: filepath.Base(p), Size: st.Size()})
	}
	if t := rep.Tail; t != nil && t.Damage != nil {
		return rep, fmt.Errorf("kv: check %s: log %s: %w", dir, t.File, t.Damage)
	}
	return rep, nil
}

// tailOf describes the tail of a log segment, its contents data, after
// what scan found committed.
func tailOf(path string, data []byte, scan wal.LogScan) *Tail {
	t := &Tail{File: path, Offset: int64(scan.Committed), Bytes: int64(len(data) - scan.Committed), Records: scan.Uncommitted}
	for off := scan.Committed; off < len(data) && scan.Version > 0; {
		_, n, err := wal.Decode(data[off:])
		if err != nil {
			if errors.Is(err, wal.ErrCorrupt) {
				t.Damage = fmt.Errorf("damaged record at offset %d: %w", off, err)
			}
			break
		}
		off += n
	}
	return t
}
