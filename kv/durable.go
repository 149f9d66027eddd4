package kv

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"kvsse/kv/wal"
)

// durability is a store's data directory: the lock, the active log
// segment, and compaction. The committer owns the segment; a compaction
// runs in a goroutine of its own and only reads the store and writes and
// removes files that the committer no longer uses.
type durability struct {
	s          *Store
	dir        string
	lock       *os.File
	seg        *wal.Segment
	first      int64 // seg's first revision
	compacting atomic.Bool
	wg         sync.WaitGroup // the running compaction

	// readOnly loads without changing a file (Check): no lock, no
	// segment opened or created, leftovers kept, and the tail that
	// start-up would cut off kept in tail.
	readOnly bool
	tail     *Tail
}

// openDurability locks the data directory, loads the newest snapshot and
// replays the log into s, and opens the log for appending.
func openDurability(s *Store) (*durability, error) {
	dir := s.opts.Dir
	lock, err := wal.Lock(dir)
	if err != nil {
		return nil, err
	}
	d := &durability{s: s, dir: dir, lock: lock}
	if err := d.load(); err != nil {
		lock.Close()
		return nil, err
	}
	return d, nil
}

func (d *durability) load() error {
	s := d.s
	list := wal.List
	if d.readOnly {
		list = wal.ListOnly
	}
	files, err := list(d.dir)
	if err != nil {
		return err
	}
	l := loader{s: s}
	var snapRev int64
	if n := len(files.Snapshots); n > 0 {
		snapRev = files.Snapshots[n-1]
		path := wal.SnapshotPath(d.dir, snapRev)
		rev, err := l.loadSnapshot(d.dir, path, snapRev, files.Segments)
		if err != nil {
			return err
		}
		if rev != snapRev {
			return fmt.Errorf("snapshot %s holds revision %d", path, rev)
		}
	}
	rev := snapRev
	last := int64(-1) // the revision of the previous log record
	hist := &s.feed.hist
	// The records of a segment that may stay in the history: the last
	// hist.max of them, in a ring that starts at ringStart once full.
	var ring []wal.Record
	// The newest change of each key in the history so far, whose value a
	// later change's previous value shares.
	latest := make(map[string]*Change)
	for i, first := range files.Segments {
		path := wal.SegmentPath(d.dir, first)
		data, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("read log: %w", err)
		}
		ring = ring[:0]
		ringStart, dropped := 0, int64(-1)
		seen := make(segmentKeys)
		scan, err := wal.ScanLog(data, func(batch []wal.Record) error {
			for j, r := range batch {
				seen.prevOf(&r)
				// Every record takes the next revision, but for the
				// changes of a transaction, which share one: they
				// follow each other inside one batch.
				switch {
				case last == -1:
					if r.Rev > snapRev+1 {
						return fmt.Errorf("%w: the log starts at revision %d but the snapshot ends at %d", wal.ErrCorrupt, r.Rev, snapRev)
					}
					hist.floor = r.Rev - 1
				case j > 0 && r.Rev == last:
				case r.Rev != last+1:
					return fmt.Errorf("%w: revision %d follows %d", wal.ErrCorrupt, r.Rev, last)
				}
				last = r.Rev
				if len(ring) < hist.max {
					ring = append(ring, r)
				} else {
					dropped = ring[ringStart].Rev
					ring[ringStart] = r
					ringStart = (ringStart + 1) % len(ring)
				}
				if r.Rev > snapRev {
					l.logApply(r)
					rev = r.Rev
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("log %s: %w", path, err)
		}
		// Adding the segment's records to the history one by one would
		// push out all those that did not make it into the ring, and
		// every older one.
		if dropped >= 0 {
			hist.reset(dropped)
		}
		for j := range ring {
			c := changeOf(ring[(ringStart+j)%len(ring)], latest)
			p := shared(&c) // replays after a restart share their encodings too
			hist.add(p)
			latest[p.Key] = p
		}
		clear(ring) // let data go
		seen = nil
		lastSeg := i == len(files.Segments)-1
		if scan.Committed < len(data) {
			if !lastSeg {
				return fmt.Errorf("log %s: damaged or uncommitted records at offset %d in a segment that is not the last: refusing to drop the segments after it", path, scan.Committed)
			}
			// Nothing in the tail was acknowledged: no batch in it
			// is whole, with its commit marker.
			if d.readOnly {
				d.tail = tailOf(path, data, scan)
			} else {
				s.opts.Logger.Warn("cutting off a torn, corrupt or uncommitted tail of the log",
					"file", path, "offset", scan.Committed, "bytes", len(data)-scan.Committed,
					"uncommitted_records", scan.Uncommitted)
			}
		}
		rev = max(rev, first-1)
		if lastSeg && !d.readOnly {
			seg, err := wal.OpenSegment(path, int64(scan.Committed))
			if err != nil {
				return err
			}
			if scan.Version == 1 {
				// Batches of the current format must not follow
				// records of the old one in a file: new writes go to a
				// new segment, which replaces this one only if it holds
				// no record.
				if err := seg.Close(); err != nil {
					return fmt.Errorf("close log %s: %w", path, err)
				}
				s.opts.Logger.Info("the log is of format 1: new writes go to a new segment", "file", path)
				continue
			}
			d.use(seg, first)
		}
	}
	l.finish()
	if last == -1 {
		hist.floor = rev
	}
	s.rev.Store(rev)
	s.feed.rev = rev
	if d.readOnly {
		return nil
	}
	if d.seg == nil {
		seg, err := wal.CreateSegment(d.dir, rev+1)
		if err != nil {
			return err
		}
		d.use(seg, rev+1)
	}
	s.stats.LogBytes.Store(d.seg.Size())
	return nil
}

// use makes seg, whose first revision is first, the segment the committer
// appends to, its file wrapped as Options.wrapLog asks.
func (d *durability) use(seg *wal.Segment, first int64) {
	if wrap := d.s.opts.wrapLog; wrap != nil {
		seg.Wrap(wrap)
	}
	d.seg, d.first = seg, first
}

// loader fills a store's maps and order from the snapshot and the log
// during Open, before the committer starts and anything else can see the
// store, so it takes no locks.
type loader struct {
	s          *Store
	keys       int64  // the change to Stats.Keys
	bytes      int64  // the change to Stats.ValueBytes
	prev       string // the key of the snapshot's previous record
	logChanged []string
}

// presize makes the maps big enough for the snapshot's keys and an
// estimate of the keys that the log segments written after it add, from
// their sizes and the snapshot's average record size.
func (l *loader) presize(dir, snapPath string, keys int, snapRev int64, segments []int64) {
	if keys <= 0 {
		return
	}
	total := keys
	if st, err := os.Stat(snapPath); err == nil {
		per := max(st.Size()/int64(keys), 1)
		for _, first := range segments {
			if first <= snapRev {
				continue
			}
			if st, err := os.Stat(wal.SegmentPath(dir, first)); err == nil {
				total += int(st.Size() / per)
			}
		}
	}
	shards := l.s.shards
	per := total/len(shards) + total/len(shards)/16 + 8 // the hash spreads keys unevenly
	for i := range shards {
		if len(shards[i].m) == 0 {
			shards[i].m = make(map[string]*Entry, per)
		}
	}
}

// entryOf turns a put record read from disk into an entry that owns its
// bytes.
func entryOf(r wal.Record) *Entry {
	v := []byte{}
	if len(r.Value) > 0 {
		v = bytes.Clone(r.Value)
	}
	return &Entry{Key: string(r.Key), Value: v, ContentType: string(r.ContentType), Revision: r.Rev, Expires: r.Expires}
}

// loadSnapshot loads the snapshot at path on two cores: this goroutine
// reads, checks and decodes the records into entries, another files them
// in the maps and the order, a batch at a time. Starting on a snapshot of
// a million keys takes about a quarter less time than on one core.
func (l *loader) loadSnapshot(dir, path string, snapRev int64, segments []int64) (int64, error) {
	const batchLen = 1024
	batches := make(chan []*Entry, 4)
	filed := make(chan struct{})
	go func() { // owns the maps and the order until it closes filed
		defer close(filed)
		for batch := range batches {
			for _, e := range batch {
				l.snapshotPut(e)
			}
		}
	}()
	batch := make([]*Entry, 0, batchLen)
	size := func(keys int) { l.presize(dir, path, keys, snapRev, segments) }
	rev, err := wal.ReadSnapshotSized(path, size, func(r wal.Record) error {
		batch = append(batch, entryOf(r))
		if len(batch) == batchLen {
			batches <- batch
			batch = make([]*Entry, 0, batchLen)
		}
		return nil
	})
	batches <- batch
	close(batches)
	<-filed
	return rev, err
}

// snapshotPut loads an entry of the snapshot. A snapshot holds each key
// once, in order, so each entry is a new key at the end of the order; an
// entry that is not is still loaded right, only slower.
func (l *loader) snapshotPut(e *Entry) {
	if e.Key <= l.prev {
		l.put(e)
		l.s.order.set(e)
		return
	}
	l.prev = e.Key
	l.s.shard(e.Key).m[e.Key] = e
	l.keys++
	l.bytes += int64(len(e.Value))
	l.s.order.set(e)
}

// logApply loads a change from the log into the maps. The order follows in
// finish, from the keys in key order, which keeps its searches short.
func (l *loader) logApply(r wal.Record) {
	if r.Op == wal.OpPut {
		e := entryOf(r)
		l.put(e)
		l.logChanged = append(l.logChanged, e.Key)
		return
	}
	key := string(r.Key)
	m := l.s.shard(key).m
	if old := m[key]; old != nil {
		l.keys--
		l.bytes -= int64(len(old.Value))
		delete(m, key)
	}
	l.logChanged = append(l.logChanged, key)
}

func (l *loader) put(e *Entry) {
	m := l.s.shard(e.Key).m
	if old := m[e.Key]; old != nil {
		l.keys--
		l.bytes -= int64(len(old.Value))
	}
	m[e.Key] = e
	l.keys++
	l.bytes += int64(len(e.Value))
}

// finish brings the order up to date with the keys the log changed and
// sets the stats.
func (l *loader) finish() {
	s := l.s
	slices.Sort(l.logChanged)
	for _, key := range slices.Compact(l.logChanged) {
		if e := s.shard(key).m[key]; e != nil {
			s.order.set(e)
		} else {
			s.order.remove(key)
		}
	}
	l.logChanged = nil
	s.stats.Keys.Add(l.keys)
	s.stats.ValueBytes.Add(l.bytes)
}

// segmentKeys holds, while a log segment is read, the newest record of
// each key that the segment has set so far: the previous value of a later
// change of the key in the segment. The store writes the previous value
// into a record only when it lies in an earlier segment (see recordOf),
// so that every record, once read with prevOf, knows its previous value,
// whatever segments compaction removed before it.
type segmentKeys map[string]wal.Record

// prevOf fills in r's previous value, when r does not carry it and the
// segment read so far holds it, and then remembers r. The previous value
// stays unknown for a record of a log written before previous values
// were kept, whose key's previous revision lies before the segment.
func (m segmentKeys) prevOf(r *wal.Record) {
	if !r.HasPrev && r.PrevRev != 0 {
		if p, ok := m[string(r.Key)]; ok && p.Rev == r.PrevRev {
			r.HasPrev, r.PrevContentType, r.PrevValue = true, p.ContentType, p.Value
		}
	}
	if r.Op == wal.OpPut {
		m[string(r.Key)] = *r
	} else {
		delete(m, string(r.Key))
	}
}

// changeOf turns a record read from disk into a change that owns its
// bytes, or shares them with the change in latest, the newest of its key
// in the history so far, whose value is the record's previous value.
func changeOf(r wal.Record, latest map[string]*Change) Change {
	c := Change{Key: string(r.Key), Revision: r.Rev, PrevRevision: r.PrevRev}
	if r.HasPrev {
		if p := latest[c.Key]; p != nil && p.Op == OpPut && p.Revision == r.PrevRev {
			c.PrevValue, c.PrevContentType = p.Value, p.ContentType
		} else {
			c.PrevValue, c.PrevContentType = append([]byte{}, r.PrevValue...), string(r.PrevContentType)
		}
	}
	switch r.Op {
	case wal.OpPut:
		c.Op, c.ContentType, c.Expires, c.Value = OpPut, string(r.ContentType), r.Expires, bytes.Clone(r.Value)
		if c.Value == nil {
			c.Value = []byte{}
		}
	case wal.OpDelete:
		c.Op = OpDelete
	default:
		c.Op = OpExpire
	}
	return c
}

// write appends b, the records of revisions first..last and the commit
// marker that ends them, and, unless syncing is off, fsyncs the segment.
// Only the committer calls it.
//
// On failure it returns the error for the batch's writers, which matches
// ErrUnavailable and names the cause but not the file (the full error goes
// to the Logger), and none of the batch's writes may appear after a
// restart:
//
//   - A failed write never wrote the marker, the batch's last bytes, so
//     start-up would cut off whatever part of the batch reached the file.
//     write cuts it off at once, back to the segment's size before the
//     batch, and syncs: when that works the store goes on, and later
//     batches succeed once the disk has room again. When the cut fails,
//     the store refuses every later write until it is reopened.
//   - A failed fsync may have written some of the batch's pages and not
//     others, which Linux then marks clean: no later fsync would tell. The
//     store refuses every later write until it is reopened. write first
//     cuts the batch off and syncs the cut (the bytes before it were
//     durable already); when that works, a restart finds the segment as
//     it was before the batch.
//   - When the fsync fails and so does the cut, nothing is guaranteed. The
//     batch, marker included, may be whole in the page cache, from which a
//     restart of the process without a reboot reads the file, or on disk;
//     a restart then replays it: refused writes appear, at revisions no
//     client was given, and nothing in the log tells them from
//     acknowledged ones. Only when the page holding the marker never
//     reached the disk and the machine restarted is the batch a tail that
//     start-up cuts off (or, if that page reached the disk but an earlier
//     one did not, damage before a valid record, and start-up refuses the
//     log). write logs at error level the segment, the offset at which the
//     batch starts and its revisions: cutting the segment at that offset
//     (truncate -s) before the restart removes the batch.
func (d *durability) write(b []byte, first, last int64) error {
	s := d.s
	before := d.seg.Size()
	if err := d.seg.Write(b); err != nil {
		return d.refuse(err, false, before, first, last)
	}
	s.stats.LogBytes.Store(d.seg.Size())
	if s.opts.Sync == SyncNone {
		return nil
	}
	t := time.Now()
	err := d.seg.Sync()
	s.stats.Fsyncs.Add(1)
	s.stats.FsyncNanos.Add(int64(time.Since(t)))
	if err != nil {
		return d.refuse(err, true, before, first, last)
	}
	return nil
}

// refuse deals with a batch of revisions first..last, starting at offset
// before, that the log failed to take with err (syncFailed: the write
// worked and its fsync failed), as write documents, and returns the error
// for its writers. Only the committer calls it.
func (d *durability) refuse(err error, syncFailed bool, before, first, last int64) error {
	s := d.s
	refused := newLogError(err)
	cutErr := d.seg.Truncate(before)
	if cutErr == nil {
		cutErr = d.seg.Sync()
	}
	s.stats.LogBytes.Store(d.seg.Size())
	attrs := []any{"file", d.seg.Path(), "offset", before, "first", first, "last", last, "err", err}
	switch {
	case cutErr == nil && !syncFailed:
		s.opts.Logger.Error("writing to the log failed: the batch is cut off and its writes refused", attrs...)
		return refused
	case cutErr == nil:
		s.opts.Logger.Error("syncing the log failed: the batch is cut off and its writes refused; refusing every write until the store is reopened", attrs...)
	case !syncFailed:
		s.opts.Logger.Error("writing to the log failed, and cutting the batch off failed too: refusing every write until the store is reopened (the batch has no commit marker: a restart cuts it off)",
			append(attrs, "cut_err", cutErr)...)
	default:
		s.opts.Logger.Error("syncing the log failed, and cutting the batch off failed too: refusing every write until the store is reopened; a restart may replay the refused revisions first to last unless the file is first cut at offset",
			append(attrs, "cut_err", cutErr)...)
	}
	s.failed.CompareAndSwap(nil, refused)
	return refused
}

// maybeCompact starts a compaction when the active segment has grown past
// CompactBytes and none is running: the committer moves on to a new
// segment for the revisions after rev, and a goroutine writes a snapshot
// from which the older segments are no longer needed. Only the committer
// calls it.
func (d *durability) maybeCompact(rev int64) {
	s := d.s
	if d.seg.Size() < s.opts.CompactBytes || !d.compacting.CompareAndSwap(false, true) {
		return
	}
	err := d.seg.Sync()
	if err == nil {
		err = d.seg.Close()
	}
	var seg *wal.Segment
	if err == nil {
		seg, err = wal.CreateSegment(d.dir, rev+1)
	}
	if err != nil {
		s.failed.CompareAndSwap(nil, newLogError(err))
		s.opts.Logger.Error("starting a new log segment failed: refusing every write until the store is reopened", "err", err)
		d.compacting.Store(false)
		return
	}
	d.use(seg, rev+1)
	s.stats.LogBytes.Store(seg.Size())
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer d.compacting.Store(false)
		if err := d.snapshot(rev); err != nil {
			s.opts.Logger.Error("compaction failed; the log keeps growing until the next one", "err", err)
		}
	}()
}

// snapshot writes the snapshot for revision rev and removes the files it
// makes unnecessary: older snapshots, and the segments older than the
// history of watchers that resume after a restart needs.
func (d *durability) snapshot(rev int64) error {
	s := d.s
	s.orderMu.RLock()
	view := s.order.freeze()
	s.orderMu.RUnlock()
	if err := wal.WriteSnapshot(d.dir, rev, eachRecord(view)); err != nil {
		return err
	}
	s.stats.Compactions.Add(1)
	files, err := wal.List(d.dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range files.Snapshots {
		if r < rev {
			errs = append(errs, os.Remove(wal.SnapshotPath(d.dir, r)))
		}
	}
	// Keep the newest segments that together hold the last History
	// revisions, so that watchers resume across a restart as they would
	// have without it.
	keep := 0
	for i := len(files.Segments) - 1; i >= 0; i-- {
		if rev-files.Segments[i]+1 >= int64(s.opts.History) {
			keep = i
			break
		}
	}
	for _, old := range files.Segments[:keep] {
		errs = append(errs, os.Remove(wal.SegmentPath(d.dir, old)))
	}
	errs = append(errs, wal.SyncDir(d.dir))
	return errors.Join(errs...)
}

// close waits for a running compaction, syncs and closes the log and
// releases the directory lock. Only Store.Close calls it, after the
// committer stopped.
func (d *durability) close() error {
	d.wg.Wait()
	err := d.seg.Sync()
	if cerr := d.seg.Close(); err == nil {
		err = cerr
	}
	if cerr := d.lock.Close(); err == nil {
		err = cerr
	}
	return err
}
