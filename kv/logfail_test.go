package kv

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"kvsse/kv/wal"
)

// The tests in this file make the log fail under concurrent writers, through
// Options.wrapLog or on a full tmpfs, restart the store and check that a
// refused write changed nothing: the store holds every acknowledged write and
// no other, at the revision of the last acknowledged one.

// faultKind is the call of a log file that a test makes fail.
type faultKind int

const (
	faultWrite faultKind = iota // WriteAt writes half its buffer, then fails with ENOSPC
	faultSync                   // Sync syncs, then reports EIO: the data did reach the file
)

// faults makes the at-th calls (counted from 1) of kind to the files of a
// store's log fail; with cutFails, every Truncate fails too. The calls are
// counted across all the segments it wraps.
type faults struct {
	kind     faultKind
	at       []int
	cutFails bool

	mu    sync.Mutex // guards calls and hits
	calls int        // calls of kind so far
	hits  int        // how many of them failed
}

// wrap is the store's Options.wrapLog.
func (fs *faults) wrap(f wal.File) wal.File {
	name := ""
	if n, ok := f.(interface{ Name() string }); ok {
		name = n.Name()
	}
	return &faultFile{File: f, faults: fs, name: name}
}

// fail counts a call of kind and reports whether it must fail.
func (fs *faults) fail(kind faultKind) bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if kind != fs.kind {
		return false
	}
	fs.calls++
	if slices.Contains(fs.at, fs.calls) {
		fs.hits++
		return true
	}
	return false
}

func (fs *faults) hit() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.hits
}

// faultFile is a segment's file that fails as its faults say, with the
// errors the os package returns.
type faultFile struct {
	wal.File
	faults *faults
	name   string
}

func (f *faultFile) WriteAt(b []byte, off int64) (int, error) {
	if !f.faults.fail(faultWrite) {
		return f.File.WriteAt(b, off)
	}
	n, err := f.File.WriteAt(b[:len(b)/2], off)
	if err == nil {
		err = &os.PathError{Op: "write", Path: f.name, Err: syscall.ENOSPC}
	}
	return n, err
}

func (f *faultFile) Sync() error {
	err := f.File.Sync()
	if err == nil && f.faults.fail(faultSync) {
		err = &os.PathError{Op: "sync", Path: f.name, Err: syscall.EIO}
	}
	return err
}

func (f *faultFile) Truncate(size int64) error {
	if f.faults.cutFails {
		return &os.PathError{Op: "truncate", Path: f.name, Err: syscall.EIO}
	}
	return f.File.Truncate(size)
}

// write is one write as a test sees it: acknowledged, or replayed from the
// store's history.
type write struct {
	Rev   int64
	Op    Op
	Key   string
	Value string
}

// load is a run of concurrent writers, each writing keys of its own: four
// puts, of values found nowhere else, then a delete, over and over.
type load struct {
	writers   int
	writes    int    // the most writes each writer makes
	stopAfter int    // a writer stops after this many refused writes; 0: never early
	valueSize int    // values are padded to this size
	tag       string // makes values unique across runs
	wantErr   string // the text every refused write's error must hold
	hide      string // a text no error may hold: the data directory
}

// outcome is what the writers of a load saw.
type outcome struct {
	acked    []write         // in no particular order
	refused  map[string]bool // "key=value" of each refused put
	refusals int             // refused writes, puts and deletes
	// ackedAfter counts acknowledged writes of writers that had had a
	// write refused before.
	ackedAfter int
	badText    error // a refusal whose text is not as wanted, if any
}

// run runs the load against s. Its error is an answer that is neither an
// acknowledgement nor a refusal by the log (nor a delete of a missing key).
func (l load) run(s *Store) (outcome, error) {
	type result struct {
		outcome
		err error
	}
	resc := make(chan result, l.writers)
	for w := range l.writers {
		go func() {
			r := result{outcome: outcome{refused: map[string]bool{}}}
			defer func() { resc <- r }()
			refusals := 0
			for i := range l.writes {
				key := fmt.Sprintf("w%02d/%d", w, i%3)
				wr := write{Op: OpDelete, Key: key}
				var res Result
				var err error
				if i%5 == 4 {
					res, err = s.Delete(context.Background(), key, Cond{})
				} else {
					value := fmt.Appendf(nil, "%s/%d/%d/", l.tag, w, i)
					value = append(value, bytes.Repeat([]byte{'x'}, max(l.valueSize-len(value), 0))...)
					wr.Op, wr.Value = OpPut, string(value)
					res, err = s.Put(context.Background(), key, value, PutOptions{})
				}
				switch {
				case err == nil:
					wr.Rev = res.Revision
					r.acked = append(r.acked, wr)
					if refusals > 0 {
						r.ackedAfter++
					}
				case errors.Is(err, ErrNotFound):
				case errors.Is(err, ErrUnavailable):
					refusals++
					if wr.Op == OpPut {
						r.refused[key+"="+wr.Value] = true
					}
					if msg := err.Error(); r.badText == nil && (!strings.Contains(msg, l.wantErr) || strings.Contains(msg, l.hide)) {
						r.badText = fmt.Errorf("a refused write's error is %q: want it to hold %q and not %q", msg, l.wantErr, l.hide)
					}
					if l.stopAfter > 0 && refusals == l.stopAfter {
						r.refusals = refusals
						return
					}
				default:
					r.err = fmt.Errorf("writer %d, write %d: %w", w, i, err)
					return
				}
			}
			r.refusals = refusals
		}()
	}
	out := outcome{refused: map[string]bool{}}
	var errs []error
	for range l.writers {
		r := <-resc
		errs = append(errs, r.err)
		out.acked = append(out.acked, r.acked...)
		for k := range r.refused {
			out.refused[k] = true
		}
		out.refusals += r.refusals
		out.ackedAfter += r.ackedAfter
		if out.badText == nil {
			out.badText = r.badText
		}
	}
	return out, errors.Join(errs...)
}

// checkStore checks that s holds exactly the acknowledged writes: its
// revision is the last one's, its history replays each of them at its
// revision and nothing else, and its keys are as they leave them. It
// returns the refused puts ("key=value") that the history replays.
func checkStore(t *testing.T, s *Store, acked []write, refused map[string]bool) (phantoms []string) {
	t.Helper()
	want := slices.SortedFunc(slices.Values(acked), func(a, b write) int { return cmp.Compare(a.Rev, b.Rev) })
	var last int64
	if len(want) > 0 {
		last = want[len(want)-1].Rev
	}
	if got := s.Revision(); got != last {
		t.Errorf("Revision after the restart = %d, want %d, the last acknowledged write's", got, last)
	}
	all, err := ParsePattern("**")
	if err != nil {
		t.Fatal(err)
	}
	sub, err := s.Watch(WatchOptions{Patterns: []Pattern{all}, Resume: true, From: 0})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Cancel()
	if sub.Reset != "" {
		t.Fatalf("a resume from 0 after the restart: reset %q, want the whole history", sub.Reset)
	}
	var hist []write
	for _, c := range sub.Replay {
		hist = append(hist, write{Rev: c.Revision, Op: c.Op, Key: c.Key, Value: string(c.Value)})
		if kv := c.Key + "=" + string(c.Value); c.Op == OpPut && refused[kv] {
			phantoms = append(phantoms, kv)
		}
	}
	if diff := gocmp.Diff(want, hist, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("history after the restart (-acknowledged +replayed):\n%s", diff)
	}
	state := map[string]write{}
	for _, w := range want {
		if w.Op == OpDelete {
			delete(state, w.Key)
		} else {
			state[w.Key] = w
		}
	}
	page, err := s.List(context.Background(), "", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]write{}
	for _, e := range page.Items {
		got[e.Key] = write{Rev: e.Revision, Op: OpPut, Key: e.Key, Value: string(e.Value)}
	}
	if diff := gocmp.Diff(state, got, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("keys after the restart (-acknowledged +found):\n%s", diff)
	}
	return phantoms
}

// putOne puts one key and returns the write, acknowledged.
func putOne(s *Store, key, value string) (write, error) {
	r, err := s.Put(context.Background(), key, []byte(value), PutOptions{})
	return write{Rev: r.Revision, Op: OpPut, Key: key, Value: value}, err
}

// TestLogWriteFails makes the write of a batch to the log stop half way
// with ENOSPC, twice, while 50 writers put and delete. The batch's writers
// are refused and nothing of it survives a restart; the store goes on
// taking writes right after; after a restart it holds exactly the
// acknowledged writes.
func TestLogWriteFails(t *testing.T) {
	for _, at := range [][]int{{1, 2}, {2, 5}, {3, 4}, {4, 9}, {6, 7}, {7, 12}, {9, 11}, {12, 13}} {
		t.Run(fmt.Sprintf("writes=%d,%d", at[0], at[1]), func(t *testing.T) {
			fs := &faults{kind: faultWrite, at: at}
			s, dir, out := loadFaulty(t, fs, "the log failed: no space left on device")
			if got := fs.hit(); got != len(at) {
				t.Errorf("%d of the %d failing writes happened", got, len(at))
			}
			if out.refusals == 0 {
				t.Fatal("no write was refused")
			}
			if out.badText != nil {
				t.Error(out.badText)
			}
			if out.ackedAfter == 0 {
				t.Errorf("no write was acknowledged after a refused one: the store stopped taking writes")
			}
			if err := s.Err(); err != nil {
				t.Errorf("Err = %v after a failed write that was cut off, want nil", err)
			}
			w, err := putOne(s, "after", "the failures")
			if err != nil {
				t.Errorf("a write after the failures: %v", err)
			} else {
				out.acked = append(out.acked, w)
			}
			s = reopen(t, s, dir, out)
			t.Logf("%d writes acknowledged, %d refused", len(out.acked), out.refusals)
		})
	}
}

// TestLogSyncFails makes the fsync of a batch fail after its data reached
// the file. The store refuses that batch and every later write until it is
// reopened; after the restart it holds exactly the acknowledged writes.
func TestLogSyncFails(t *testing.T) {
	for _, at := range []int{1, 2, 3, 5, 8, 13} {
		t.Run(fmt.Sprintf("sync=%d", at), func(t *testing.T) {
			fs := &faults{kind: faultSync, at: []int{at}}
			s, dir, out := loadFaulty(t, fs, "the log failed: input/output error")
			if fs.hit() != 1 || out.refusals == 0 {
				t.Fatalf("the failing fsync happened %d times and %d writes were refused; want 1 and some", fs.hit(), out.refusals)
			}
			if out.badText != nil {
				t.Error(out.badText)
			}
			if out.ackedAfter != 0 {
				t.Errorf("%d writes were acknowledged after a failed fsync", out.ackedAfter)
			}
			if _, err := putOne(s, "after", "the failure"); !errors.Is(err, ErrUnavailable) {
				t.Errorf("a write after a failed fsync: %v, want ErrUnavailable", err)
			}
			s = reopen(t, s, dir, out)
			w, err := putOne(s, "after", "the restart")
			if err != nil {
				t.Fatalf("a write after the restart: %v", err)
			}
			if want := s.Revision(); w.Rev != want || w.Rev != int64(len(out.acked))+1 {
				t.Errorf("the write after the restart took revision %d, want %d", w.Rev, len(out.acked)+1)
			}
		})
	}
}

// loadFaulty opens a store in a new directory whose log fails as fs says,
// closed when t ends, and runs 50 writers of 20 writes each on it, which
// expect wantErr where a write is refused. It returns the store, its
// directory and what the writers saw.
func loadFaulty(t *testing.T, fs *faults, wantErr string) (*Store, string, outcome) {
	t.Helper()
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir, wrapLog: fs.wrap})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	out, err := load{writers: 50, writes: 20, tag: "run", wantErr: wantErr, hide: dir}.run(s)
	if err != nil {
		t.Fatal(err)
	}
	return s, dir, out
}

// TestLogRefusedExpiryRetried: the expiry of a key is a write too. When
// the log refuses its batch, the expiry is not lost: the committer tries
// it again by itself, after expiryRetry rather than at once in a loop.
func TestLogRefusedExpiryRetried(t *testing.T) {
	fs := &faults{kind: faultWrite, at: []int{2}}
	s, err := Open(Options{Dir: t.TempDir(), wrapLog: fs.wrap})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sub, err := s.Watch(WatchOptions{Patterns: parsePatterns(t, "**")})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := s.Put(context.Background(), "ttl", []byte("v"), PutOptions{TTL: 10 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []write
	for len(got) < 2 {
		c, ok := sub.Next(ctx)
		if !ok {
			t.Fatalf("changes after %v: %+v; want the put and its expiry", time.Since(start), got)
		}
		got = append(got, write{Rev: c.Revision, Op: c.Op, Key: c.Key, Value: string(c.Value)})
	}
	elapsed := time.Since(start)
	want := []write{{Rev: 1, Op: OpPut, Key: "ttl", Value: "v"}, {Rev: 2, Op: OpExpire, Key: "ttl"}}
	if diff := gocmp.Diff(want, got); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
	fs.mu.Lock()
	calls := fs.calls
	fs.mu.Unlock()
	if fs.hit() != 1 || calls != 3 || elapsed < expiryRetry {
		t.Errorf("%d writes to the log, %d failed, expiry after %v; want 3 (the put, the refused expiry, the retry), 1, and at least %v",
			calls, fs.hit(), elapsed, expiryRetry)
	}
}

// TestLogFailedStoreWritesNoExpiry: once an fsync failed, the store writes
// nothing more to its log, not even the expiries that become due: writing
// and syncing them would be retrying an fsync that failed.
func TestLogFailedStoreWritesNoExpiry(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	var mu sync.Mutex // guards now
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	fs := &faults{kind: faultSync, at: []int{2}}
	s, err := Open(Options{Dir: t.TempDir(), wrapLog: fs.wrap, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Put(ctx, "ttl", []byte("v"), PutOptions{TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	sub, err := s.Watch(WatchOptions{Patterns: parsePatterns(t, "**")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "x", []byte("v"), PutOptions{}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("the put whose fsync fails: %v, want ErrUnavailable", err)
	}
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	// A write's batch takes the due expiries along: here it must not.
	if _, err := s.Put(ctx, "y", []byte("v"), PutOptions{}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("a put after the failed fsync: %v, want ErrUnavailable", err)
	}
	fs.mu.Lock()
	syncs := fs.calls
	fs.mu.Unlock()
	// The fsyncs: the first put's, the failed one, and the cut's.
	if changes, _ := sub.Take(nil); len(changes) > 0 || syncs != 3 || s.Revision() != 1 {
		t.Errorf("after the failed fsync: %d changes published, %d fsyncs, revision %d; want 0, 3, 1", len(changes), syncs, s.Revision())
	}
}

// logRecords is a slog.Handler that keeps every record.
type logRecords struct {
	mu      sync.Mutex // guards records
	records []slog.Record
}

func (h *logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecords) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logRecords) WithGroup(string) slog.Handler            { return h }

func (h *logRecords) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, r.Clone())
	return nil
}

// errorsWith returns the attributes of each error record that has every
// one of keys.
func (h *logRecords) errorsWith(keys ...string) []map[string]slog.Value {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []map[string]slog.Value
	for _, r := range h.records {
		attrs := map[string]slog.Value{}
		r.Attrs(func(a slog.Attr) bool {
			attrs[a.Key] = a.Value
			return true
		})
		has := r.Level == slog.LevelError
		for _, k := range keys {
			_, ok := attrs[k]
			has = has && ok
		}
		if has {
			out = append(out, attrs)
		}
	}
	return out
}

// reopen closes s, opens the store in dir again, closed when t ends, and
// checks that it holds none of the refused puts of out and every
// acknowledged one.
func reopen(t *testing.T, s *Store, dir string, out outcome) *Store {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if n := len(checkStore(t, s, out.acked, out.refused)); n > 0 {
		t.Errorf("%d refused puts are in the store after the restart", n)
	}
	return s
}

// runUntilRefused runs 50 writers of 10 puts each on a store in dir whose
// log fails once as fs says and cannot be cut back, checks that the store
// then refused every write, closes it and returns what the writers saw.
func runUntilRefused(t *testing.T, dir string, fs *faults, logger *slog.Logger) outcome {
	t.Helper()
	s, err := Open(Options{Dir: dir, wrapLog: fs.wrap, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out, err := load{writers: 50, writes: 10, tag: "run", wantErr: "the log failed", hide: dir}.run(s)
	if err != nil {
		t.Fatal(err)
	}
	if fs.hit() != 1 || out.ackedAfter != 0 || s.Err() == nil {
		t.Errorf("failures %d, writes acknowledged after a refusal %d, Err %v; want 1, 0 and an error", fs.hit(), out.ackedAfter, s.Err())
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestLogCutFails: when the log fails and cutting the failed batch off
// fails too, the store refuses every later write. After a failed write, a
// restart still finds nothing of the batch: its commit marker, the last
// bytes of the write, never reached the file. After a failed fsync the
// whole batch may be in the file, and a restart replays it (the limit the
// committer documents): the store logs the segment, offset and revisions,
// and cutting the segment there before the restart removes it.
func TestLogCutFails(t *testing.T) {
	t.Run("write", func(t *testing.T) {
		dir := t.TempDir()
		out := runUntilRefused(t, dir, &faults{kind: faultWrite, at: []int{3}, cutFails: true}, nil)
		s, err := Open(Options{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if n := len(checkStore(t, s, out.acked, out.refused)); n > 0 {
			t.Errorf("%d refused puts are in the store after the restart", n)
		}
	})

	t.Run("sync", func(t *testing.T) {
		dir := t.TempDir()
		logs := &logRecords{}
		out := runUntilRefused(t, dir, &faults{kind: faultSync, at: []int{3}, cutFails: true}, slog.New(logs))
		lines := logs.errorsWith("file", "offset", "first", "last")
		if len(lines) != 1 {
			t.Fatalf("%d error lines name the file, offset and revisions that a restart may replay, want 1", len(lines))
		}
		file, offset := lines[0]["file"].String(), lines[0]["offset"].Int64()
		first, last := lines[0]["first"].Int64(), lines[0]["last"].Int64()
		var acked int64
		for _, w := range out.acked {
			acked = max(acked, w.Rev)
		}
		if first != acked+1 || last < first {
			t.Errorf("the error line names revisions %d..%d; want from %d, after the last acknowledged", first, last, acked+1)
		}

		s, err := Open(Options{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		if got := s.Revision(); got != last {
			t.Errorf("Revision after a restart = %d; the refused batch %d..%d was expected back, as documented", got, first, last)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if filepath.Dir(file) != dir {
			t.Fatalf("the error line names file %s, not in %s", file, dir)
		}
		if err := os.Truncate(file, offset); err != nil {
			t.Fatal(err)
		}
		s, err = Open(Options{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if n := len(checkStore(t, s, out.acked, out.refused)); n > 0 {
			t.Errorf("%d refused puts are in the store after the segment was cut at the logged offset", n)
		}
	})
}

// TestLogDiskFull fills a real 2 MiB tmpfs with 50 concurrent writers of
// 1,500-byte values until the log's writes fail with ENOSPC, ten times
// over: each round frees a little room, writes until the disk is full,
// frees a little more and checks that the store takes a write again
// without a restart, then restarts the store and checks that it holds
// exactly the acknowledged writes.
func TestLogDiskFull(t *testing.T) {
	mnt := t.TempDir()
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=2m"); err != nil {
		t.Skipf("mounting a 2 MiB tmpfs on %s failed (%v): this test needs root or CAP_SYS_ADMIN", mnt, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	dir := filepath.Join(mnt, "data")
	s, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Ballast takes all but 448 KiB; the rounds give it back 64 KiB at a
	// time.
	var ballast []string
	for i := 0; ; i++ {
		var st syscall.Statfs_t
		if err := syscall.Statfs(mnt, &st); err != nil {
			t.Fatal(err)
		}
		if int64(st.Bavail)*st.Bsize <= 448<<10 {
			break
		}
		path := filepath.Join(mnt, fmt.Sprintf("ballast%02d", i))
		if err := os.WriteFile(path, make([]byte, 64<<10), 0o644); err != nil {
			t.Fatal(err)
		}
		ballast = append(ballast, path)
	}
	free := func() {
		t.Helper()
		if len(ballast) == 0 {
			t.Fatal("out of ballast")
		}
		if err := os.Remove(ballast[0]); err != nil {
			t.Fatal(err)
		}
		ballast = ballast[1:]
	}

	const rounds = 10
	var acked []write
	refused := map[string]bool{}
	phantoms := map[string]bool{} // refused puts found after a restart
	refusals := 0
	for round := range rounds {
		s, err := Open(Options{Dir: dir})
		if err != nil {
			t.Fatalf("round %d: Open: %v", round, err)
		}
		for _, kv := range checkStore(t, s, acked, refused) {
			phantoms[kv] = true
		}
		free()
		// The disk holds about 1,100 such puts in all: every writer
		// stops on refusals, not for want of writes.
		l := load{writers: 50, writes: 5000, stopAfter: 2, valueSize: 1500, tag: fmt.Sprint(round),
			wantErr: "the log failed: no space left on device", hide: mnt}
		out, err := l.run(s)
		if err != nil {
			s.Close()
			t.Fatalf("round %d: %v", round, err)
		}
		acked = append(acked, out.acked...)
		for k := range out.refused {
			refused[k] = true
		}
		refusals += out.refusals
		if out.refusals != l.writers*l.stopAfter {
			t.Errorf("round %d: %d writes refused, want %d: the disk never filled", round, out.refusals, l.writers*l.stopAfter)
		}
		if out.badText != nil {
			t.Errorf("round %d: %v", round, out.badText)
		}
		free()
		if w, err := putOne(s, "room", fmt.Sprintf("again in round %d", round)); err != nil {
			t.Errorf("round %d: a write once there was room again: %v", round, err)
		} else {
			acked = append(acked, w)
		}
		if err := s.Close(); err != nil {
			t.Errorf("round %d: Close: %v", round, err)
		}
	}
	s, err = Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, kv := range checkStore(t, s, acked, refused) {
		phantoms[kv] = true
	}
	t.Logf("%d rounds: %d writes acknowledged, %d refused with ENOSPC, %d refused puts found after the restarts",
		rounds, len(acked), refusals, len(phantoms))
	if len(phantoms) > 0 {
		t.Errorf("%d refused puts were in the store after restarts", len(phantoms))
	}
}

// TestRecordOfPrev: a change's log record carries the previous value only
// when its revision lies before the segment the record goes to, and never
// when that would take the record past what the log reads back.
func TestRecordOfPrev(t *testing.T) {
	big := make([]byte, 32<<20) // the largest value -max-value allows
	tests := []struct {
		name string
		c    Change
		want bool
	}{
		{"created", Change{Op: OpPut, Key: "k", Value: []byte("v"), Revision: 20}, false},
		{"previous value in the segment", Change{Op: OpPut, Key: "k", Value: []byte("v"), Revision: 20, PrevRevision: 10, PrevValue: []byte("u")}, false},
		{"previous value before the segment", Change{Op: OpPut, Key: "k", Value: []byte("v"), Revision: 20, PrevRevision: 9, PrevValue: []byte("u"), PrevContentType: "text/plain"}, true},
		{"delete", Change{Op: OpDelete, Key: "k", Revision: 20, PrevRevision: 9, PrevValue: []byte{}}, true},
		{"expiry", Change{Op: OpExpire, Key: "k", Revision: 20, PrevRevision: 9, PrevValue: []byte("u")}, true},
		{"previous value not known", Change{Op: OpDelete, Key: "k", Revision: 20, PrevRevision: 9}, false},
		{"delete of the largest value", Change{Op: OpDelete, Key: "k", Revision: 20, PrevRevision: 9, PrevValue: big}, true},
		{"largest value over the largest value", Change{Op: OpPut, Key: "k", Value: big, Revision: 20, PrevRevision: 9, PrevValue: big}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := recordOf(&tt.c, 10)
			if r.HasPrev != tt.want {
				t.Fatalf("HasPrev = %v, want %v", r.HasPrev, tt.want)
			}
			got, _, err := wal.Decode(wal.Append(nil, r))
			if err != nil {
				t.Fatalf("the record does not read back: %v", err)
			}
			if tt.want && (!bytes.Equal(got.PrevValue, tt.c.PrevValue) || string(got.PrevContentType) != tt.c.PrevContentType) {
				t.Errorf("read back previous value %.20q of type %q, want %.20q of type %q", got.PrevValue, got.PrevContentType, tt.c.PrevValue, tt.c.PrevContentType)
			}
		})
	}
}
