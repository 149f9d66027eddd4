package kv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"kvsse/kv/wal"
)

// BenchmarkPublish measures the hook every committed change passes
// through: history, pattern index, and a non-blocking send to each
// matching subscription. Its cost should follow the number of matching
// subscriptions, not the number registered.
func BenchmarkPublish(b *testing.B) {
	for _, bc := range []struct {
		name              string
		matching, nomatch int
	}{
		{"nonmatching=10", 0, 10},
		{"nonmatching=10000", 0, 10_000},
		{"matching=1000", 1000, 0},
	} {
		b.Run(bc.name, func(b *testing.B) {
			f := NewFeed(100_000, 1024, 0)
			var subs []*Subscription
			spares := make([][]*Change, bc.matching+bc.nomatch)
			add := func(pattern string) {
				p, err := ParsePattern(pattern)
				if err != nil {
					b.Fatal(err)
				}
				sub, _, err := f.Subscribe(WatchOptions{Patterns: []Pattern{p}})
				if err != nil {
					b.Fatal(err)
				}
				subs = append(subs, sub)
			}
			for i := range bc.nomatch {
				add(fmt.Sprintf("other/%d/**", i))
			}
			for range bc.matching {
				add("config/**")
			}
			changes := []Change{{Op: OpPut, Key: "config/app/feature", Value: make([]byte, 64)}}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				changes[0].Revision = int64(i + 1)
				f.Publish(changes, 0)
				if i%1000 == 999 && bc.matching > 0 {
					b.StopTimer()
					for i, s := range subs {
						spares[i], _ = s.Take(spares[i]) // as a consumer does
					}
					b.StartTimer()
				}
			}
		})
	}
}

// BenchmarkPublishTxn publishes the changes of a transaction, 1,000 at
// one revision, to 1,000 subscriptions that each match every one of them
// by two patterns: each gets them all with one lock of its queue.
// Compare with revisions=1000, the same changes at a revision each.
func BenchmarkPublishTxn(b *testing.B) {
	for _, bc := range []struct {
		name string
		txn  bool
	}{{"revisions=1", true}, {"revisions=1000", false}} {
		b.Run(bc.name, func(b *testing.B) {
			f := NewFeed(100_000, 1<<20, 0)
			subs := make([]*Subscription, 1000)
			for i := range subs {
				subs[i], _, _ = f.Subscribe(WatchOptions{Patterns: parsePatterns(b, "**", "k/*")})
			}
			changes := make([]Change, 1000)
			for i := range changes {
				changes[i] = Change{Op: OpPut, Key: fmt.Sprintf("k/%d", i)}
			}
			spares := make([][]*Change, len(subs))
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				for j := range changes {
					changes[j].Revision = int64(i*len(changes) + j + 1)
					if bc.txn {
						changes[j].Revision = int64(i + 1)
					}
				}
				f.Publish(changes, 0)
				b.StopTimer()
				for j, sub := range subs {
					spares[j], _ = sub.Take(spares[j]) // as a consumer does
				}
				b.StartTimer()
			}
		})
	}
}

// BenchmarkPublishHostileGlobs publishes ordinary keys into a feed that
// holds globs like "*q*q*...*q00001*" (900 bytes, all distinct, 64 a
// subscription as one stream may hold) that match none of them, as a
// client without a token may register by the thousand. The cost should
// not grow with their number.
func BenchmarkPublishHostileGlobs(b *testing.B) {
	for _, n := range []int{10, 1000, 60_000} {
		b.Run(fmt.Sprintf("globs=%d", n), func(b *testing.B) {
			f := NewFeed(1000, 1024, 0)
			subscribeHostile(b, f, 0, n)
			keys := []string{"config/app/feature-42", "users/1234/profile", "jobs/queue-7/state", "config/db/pool-size"}
			changes := []Change{{Op: OpPut, Value: make([]byte, 64)}}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				changes[0].Key, changes[0].Revision = keys[i%len(keys)], int64(i)
				f.Publish(changes, 0)
			}
		})
	}
}

// BenchmarkSubscribeHostileGlobs subscribes with 64 more such globs and
// cancels, with many registered already. Both hold the feed's lock, which
// publishing needs, so their cost should not grow with that number either.
func BenchmarkSubscribeHostileGlobs(b *testing.B) {
	for _, n := range []int{10, 1000, 60_000} {
		b.Run(fmt.Sprintf("globs=%d", n), func(b *testing.B) {
			f := NewFeed(1000, 1024, 0)
			subscribeHostile(b, f, 0, n)
			opts := WatchOptions{Patterns: hostilePatterns(b, n, 64)}
			subscribeLoop(b, f, opts)
		})
	}
}

// subscribeHostile subscribes to the n hostile globs from the from'th (see
// hostileGlob), 64 a subscription.
func subscribeHostile(b *testing.B, f *Feed, from, n int) {
	b.Helper()
	for i := from; i < from+n; i += 64 {
		_, _, err := f.Subscribe(WatchOptions{Patterns: hostilePatterns(b, i, min(64, from+n-i))})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// hostilePatterns parses n hostile globs from the from'th.
func hostilePatterns(tb testing.TB, from, n int) []Pattern {
	tb.Helper()
	patterns := make([]Pattern, n)
	for i := range patterns {
		p, err := ParsePattern(hostileGlob(from + i))
		if err != nil {
			tb.Fatal(err)
		}
		patterns[i] = p
	}
	return patterns
}

// BenchmarkPut measures a write through the committer with no log, from
// many goroutines at once.
func BenchmarkPut(b *testing.B) {
	s := memStore(b)
	putParallel(b, s)
}

// putParallel puts 64-byte values to 10,000 keys from 32 goroutines a
// CPU, b.N puts in all.
func putParallel(b *testing.B, s *Store) {
	value := make([]byte, 64)
	ctx := context.Background()
	b.ReportAllocs()
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			if _, err := s.Put(ctx, fmt.Sprintf("bench/%d", i%10_000), value, PutOptions{}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkPutLog measures a durable write from many goroutines: the
// committer batches them, appends each batch to the log and, with
// SyncAlways, fsyncs it once (group commit). SyncNone leaves out the fsync,
// which shows what encoding and writing the log cost. It also reports the
// log's bytes per write and the writes per batch (one write call and at
// most one fsync each), which the machine's load does not blur. The log is
// not compacted.
func BenchmarkPutLog(b *testing.B) {
	for _, bc := range []struct {
		name string
		sync SyncMode
	}{{"sync=always", SyncAlways}, {"sync=none", SyncNone}} {
		b.Run(bc.name, func(b *testing.B) {
			s, err := Open(Options{Dir: b.TempDir(), Sync: bc.sync, CompactBytes: 1 << 40})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			putParallel(b, s)
			st := s.Stats()
			b.ReportMetric(float64(st.LogBytes.Load())/float64(st.Writes.Load()), "log-B/write")
			b.ReportMetric(float64(st.Writes.Load())/float64(st.Batches.Load()), "writes/batch")
		})
	}
}

// BenchmarkLogOverwrite measures what the log costs on disk per write for
// overwrites of 1,000 keys (64-byte values, one writer, so one commit
// marker a write), every log segment counted, at two segment sizes: a
// record carries the key's previous value only when the key was last
// written in an earlier segment, so the cost of previous values follows
// keys per segment, not writes.
func BenchmarkLogOverwrite(b *testing.B) {
	for _, compact := range []int64{64 << 20, 1 << 20} {
		b.Run(fmt.Sprintf("compact-bytes=%d", compact), func(b *testing.B) {
			var written atomic.Int64
			wrap := func(f wal.File) wal.File { return &countingFile{File: f, n: &written} }
			s, err := Open(Options{Dir: b.TempDir(), Sync: SyncNone, CompactBytes: compact, wrapLog: wrap})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			value := []byte(strings.Repeat("v", 64))
			const writes = 100_000
			for range b.N {
				for i := range writes {
					if _, err := s.Put(context.Background(), fmt.Sprintf("key/%04d", i%1000), value, PutOptions{ContentType: "text/plain"}); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(written.Load())/float64(b.N*writes), "log-B/write")
		})
	}
}

// countingFile is a log segment's file that counts the bytes written to it.
type countingFile struct {
	wal.File
	n *atomic.Int64
}

func (f *countingFile) WriteAt(b []byte, off int64) (int, error) {
	n, err := f.File.WriteAt(b, off)
	f.n.Add(int64(n))
	return n, err
}

// BenchmarkGet measures reads, which take only their shard's read lock.
func BenchmarkGet(b *testing.B) {
	s, keys := benchKeys(b)
	getParallel(b, s, keys)
}

// benchKeys returns a store in memory that holds 10,000 keys of 64 bytes,
// and their names.
func benchKeys(b *testing.B) (*Store, []string) {
	s := memStore(b)
	keys := make([]string, 10_000)
	for i := range keys {
		keys[i] = fmt.Sprintf("bench/%d", i)
		if _, err := s.Put(context.Background(), keys[i], make([]byte, 64), PutOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	return s, keys
}

// getParallel resets b's timer, then reads the keys round robin from b's
// parallel goroutines, b.N reads in all.
func getParallel(b *testing.B, s *Store, keys []string) {
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			if _, err := s.Get(context.Background(), keys[i%len(keys)]); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkGetWhileWriting measures reads while transactions of 10 puts
// to the keys read are committed without pause: a read that meets the
// committer applying a batch reads again under orderMu (see Get).
func BenchmarkGetWhileWriting(b *testing.B) {
	s, keys := benchKeys(b)
	ctx := context.Background()
	stop := make(chan struct{})
	var writes errgroup.Group
	for w := range 4 {
		writes.Go(func() error {
			value := make([]byte, 64)
			for n := 0; ; n++ {
				select {
				case <-stop:
					return nil
				default:
				}
				ops := make([]TxnOp, 10)
				for i := range ops {
					ops[i] = TxnOp{Kind: TxnPut, Key: keys[(w*2500+n*10+i)%len(keys)], Value: value}
				}
				if _, err := s.Txn(ctx, Txn{Then: ops}); err != nil {
					return err
				}
			}
		})
	}
	getParallel(b, s, keys)
	b.StopTimer()
	close(stop)
	if err := writes.Wait(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkTxnThroughput compares, on a durable log synced on every
// batch, 64 goroutines that each write 10 keys at a time, either as 10
// puts one after the other or as one transaction of 10 puts: one b.N is
// 10 keys. A transaction's 10 changes go into the log with one append
// and one fsync, shared with the other writers of its batch, where the
// puts of a goroutine wait for 10 fsyncs. It reports the keys changed per
// second, the keys per batch and the time an fsync takes.
func BenchmarkTxnThroughput(b *testing.B) {
	const writers = 64
	for _, bc := range []struct {
		name string
		txn  bool
	}{{"puts=10", false}, {"txn=10", true}} {
		b.Run(bc.name, func(b *testing.B) {
			s, err := Open(Options{Dir: b.TempDir(), CompactBytes: 1 << 40})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			value := make([]byte, 64)
			keys := make([][]string, writers) // 1,000 keys a writer
			for w := range keys {
				for i := range 1000 {
					keys[w] = append(keys[w], fmt.Sprintf("bench/%d/%d", w, i))
				}
			}
			var next atomic.Int64
			var writes errgroup.Group
			b.ResetTimer()
			for w := range writers {
				writes.Go(func() error {
					ops := make([]TxnOp, 10)
					for n := next.Add(1); n <= int64(b.N); n = next.Add(1) {
						for i := range ops {
							ops[i] = TxnOp{Kind: TxnPut, Key: keys[w][(int(n)*10+i)%1000], Value: value}
						}
						if bc.txn {
							if _, err := s.Txn(ctx, Txn{Then: ops}); err != nil {
								return err
							}
							continue
						}
						for _, o := range ops {
							if _, err := s.Put(ctx, o.Key, o.Value, PutOptions{}); err != nil {
								return err
							}
						}
					}
					return nil
				})
			}
			if err := writes.Wait(); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			st := s.Stats()
			b.ReportMetric(float64(10*b.N)/b.Elapsed().Seconds(), "keys/s")
			b.ReportMetric(float64(st.Writes.Load())/float64(st.Batches.Load()), "keys/batch")
			b.ReportMetric(float64(st.FsyncNanos.Load())/float64(st.Fsyncs.Load())/1e3, "µs/fsync")
		})
	}
}

// BenchmarkOpen measures start-up: loading a data directory that holds
// keys 64-byte values (a snapshot and the log written since). Run the big
// one with -bench 'Open/keys=1000000' -benchtime 3x.
func BenchmarkOpen(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			dir := b.TempDir()
			fill(b, dir, n)
			b.ResetTimer()
			for range b.N {
				openTimed(b, dir, n)
			}
		})
	}
}

// BenchmarkBackup writes a backup of 1,000,000 keys of 64-byte values to
// a file and syncs it; its MB/s are bytes of file. The restore sub-benchmark
// restores that file into a new directory and opens a store on it: the
// time until a restored server could serve.
//
// The puts sub-benchmarks time puts of 64-byte values from 16 writers to
// the same store, with its log synced, 400 each an iteration, alone and
// while backups are written one after the other, and report the
// latencies' p50 and p99.
func BenchmarkBackup(b *testing.B) {
	const n = 1_000_000
	dir := b.TempDir()
	fill(b, dir, n)
	s, err := Open(Options{Dir: dir})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	file := filepath.Join(b.TempDir(), "backup")
	write := func() int64 {
		f, err := os.Create(file)
		if err != nil {
			b.Fatal(err)
		}
		size, err := s.Backup().WriteTo(f)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			b.Fatal(err)
		}
		return size
	}
	size := write()
	b.Run("write", func(b *testing.B) {
		b.SetBytes(size)
		b.ResetTimer()
		for range b.N {
			write()
		}
	})
	for _, backups := range []bool{false, true} {
		b.Run(fmt.Sprintf("puts/backups=%v", backups), func(b *testing.B) {
			var lat []time.Duration
			for range b.N {
				lat = append(lat, putsWhile(b, s, backups, func() {
					if _, err := s.Backup().WriteTo(io.Discard); err != nil {
						b.Error(err)
					}
				})...)
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
	b.Run("restore+open", func(b *testing.B) {
		for i := range b.N {
			f, err := os.Open(file)
			if err != nil {
				b.Fatal(err)
			}
			dir := filepath.Join(b.TempDir(), strconv.Itoa(i))
			_, keys, err := Restore(f, dir)
			f.Close()
			if err != nil || keys != n {
				b.Fatalf("Restore: %d keys, %v", keys, err)
			}
			openTimed(b, dir, n)
		}
	})
}

// openTimed opens a store on dir, which must hold n keys, and closes it
// with the timer stopped.
func openTimed(b *testing.B, dir string, n int) {
	s, err := Open(Options{Dir: dir})
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	defer b.StartTimer()
	if got := s.order.len; got != n {
		b.Fatalf("loaded %d keys, want %d", got, n)
	}
	s.Close()
}

// putsWhile runs 16 writers of 400 puts each on s and returns each put's
// latency; with backups, backup runs again and again until they are done.
func putsWhile(b *testing.B, s *Store, backups bool, backup func()) []time.Duration {
	const writers, each = 16, 400
	lat := make([]time.Duration, writers*each)
	stop := make(chan struct{})
	backed := make(chan struct{})
	go func() {
		defer close(backed)
		for backups {
			select {
			case <-stop:
				return
			default:
				backup()
			}
		}
	}()
	var writes errgroup.Group
	value := make([]byte, 64)
	for w := range writers {
		writes.Go(func() error {
			for i := range each {
				t := time.Now()
				_, err := s.Put(context.Background(), fmt.Sprintf("bench/%08d", (w*each+i)*97%1_000_000), value, PutOptions{})
				lat[w*each+i] = time.Since(t)
				if err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := writes.Wait(); err != nil {
		b.Fatal(err)
	}
	close(stop)
	<-backed
	return lat
}

// fill writes n keys with 64-byte values into a store in dir.
func fill(b *testing.B, dir string, n int) {
	s, err := Open(Options{Dir: dir, Sync: SyncNone})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	fillStore(b, s, n)
}

// fillStore puts the keys bench/00000000 to bench/{n-1}, with 64-byte
// values, into s from 64 goroutines, so that the committer batches them.
func fillStore(tb testing.TB, s *Store, n int) {
	tb.Helper()
	ctx := context.Background()
	value := make([]byte, 64)
	var writes errgroup.Group
	for w := range 64 {
		writes.Go(func() error {
			for i := w; i < n; i += 64 {
				if _, err := s.Put(ctx, fmt.Sprintf("bench/%08d", i), value, PutOptions{}); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := writes.Wait(); err != nil {
		tb.Fatal(err)
	}
}

// BenchmarkResume resumes ordinary watches from a full history of
// 100,000 changes over 5,000 keys: one key from the oldest change kept,
// every key for the last 100 changes, and every key from the oldest.
func BenchmarkResume(b *testing.B) {
	const kept = 100_000
	f := NewFeed(kept, 1024, 0)
	rev := fillHistory(f, kept)
	for _, bc := range []struct {
		name, pattern string
		from          int64
	}{
		{"key/all", "k/000123", 0},
		{"prefix/last=100", "k/**", rev - 100},
		{"prefix/all", "k/**", 0},
	} {
		b.Run(bc.name, func(b *testing.B) {
			opts := WatchOptions{Patterns: parsePatterns(b, bc.pattern), Resume: true, From: bc.from}
			b.ReportAllocs()
			for b.Loop() {
				sub, _, err := f.Subscribe(opts)
				if err != nil {
					b.Fatal(err)
				}
				if sub.Reset != "" {
					b.Fatalf("reset %q", sub.Reset)
				}
				sub.Cancel()
			}
		})
	}
}

// BenchmarkResumeHostileGlobs resumes with 64 hostile globs (see
// hostileGlob) from the oldest change of a full history of 100,000
// changes, none of which they match.
func BenchmarkResumeHostileGlobs(b *testing.B) {
	const kept = 100_000
	f := NewFeed(kept, 1024, 0)
	fillHistory(f, kept)
	opts := WatchOptions{Patterns: hostilePatterns(b, 0, 64), Resume: true}
	subscribeLoop(b, f, opts)
}

// subscribeLoop subscribes to f with opts and cancels, b.N times.
func subscribeLoop(b *testing.B, f *Feed, opts WatchOptions) {
	b.ReportAllocs()
	for b.Loop() {
		sub, _, err := f.Subscribe(opts)
		if err != nil {
			b.Fatal(err)
		}
		sub.Cancel()
	}
}

// BenchmarkSnapshot takes snapshots of a store of 1,000,000 keys: of 10
// keys and of 10,000 under a prefix, of every key, and with 64 hostile
// globs, which match no key but whose common prefix is empty.
func BenchmarkSnapshot(b *testing.B) {
	s := memStore(b)
	fillStore(b, s, 1_000_000)
	for _, bc := range []struct {
		name     string
		patterns []Pattern
		keys     int
	}{
		{"keys=10", parsePatterns(b, "bench/0000012*"), 10},
		{"keys=10000", parsePatterns(b, "bench/0001*"), 10_000},
		{"keys=all", parsePatterns(b, "**"), 1_000_000},
		{"hostile", hostilePatterns(b, 0, 64), 0},
	} {
		b.Run(bc.name, func(b *testing.B) {
			opts := WatchOptions{Patterns: bc.patterns, Snapshot: true}
			b.ReportAllocs()
			for b.Loop() {
				sub, err := s.Watch(opts)
				if err != nil {
					b.Fatal(err)
				}
				if len(sub.Snapshot) != bc.keys {
					b.Fatalf("%d keys in the snapshot, want %d", len(sub.Snapshot), bc.keys)
				}
				sub.Cancel()
			}
		})
	}
}

// BenchmarkPublishDuringHostileResumes resumes, in n goroutines at once,
// with 64 hostile globs from near the oldest change of a full history of
// 100,000 changes, while the benchmark's goroutine publishes a change
// every 50 µs. Besides the time the resumes take, it reports how many
// changes were published meanwhile, and the 99th percentile and the
// longest time a Publish took: how long resumes hold up the committer.
func BenchmarkPublishDuringHostileResumes(b *testing.B) {
	for _, n := range []int{1, 8} {
		b.Run(fmt.Sprintf("resumers=%d", n), func(b *testing.B) {
			const kept = 100_000
			f := NewFeed(kept, 1024, 0)
			rev := fillHistory(f, kept)
			opts := WatchOptions{Patterns: hostilePatterns(b, 0, 64), Resume: true}
			resume := func() error {
				o := opts
				o.From = f.Floor() + kept/5 // the floor moves as changes are published
				sub, _, err := f.Subscribe(o)
				if err != nil {
					return err
				}
				sub.Cancel()
				if sub.Reset != "" {
					return fmt.Errorf("resume from %d: reset %q", o.From, sub.Reset)
				}
				return nil
			}
			value := make([]byte, 64)
			changes := []Change{{Op: OpPut, Key: "config/app/feature", Value: value}}
			catchUpStalls(b, n, resume, func() error {
				rev++
				changes[0].Revision = rev
				f.Publish(changes, rev)
				return nil
			})
		})
	}
}

// BenchmarkPutDuringHostileSnapshots takes, in n goroutines at once,
// snapshots with 64 hostile globs (whose common prefix is empty) of a
// store of 1,000,000 keys, while the benchmark's goroutine puts a key
// every 50 µs. Besides the time the snapshots take, it reports how many
// puts ended meanwhile, and the 99th percentile and the longest time a
// Put took: how long snapshots hold up the committer.
func BenchmarkPutDuringHostileSnapshots(b *testing.B) {
	s := memStore(b)
	fillStore(b, s, 1_000_000)
	for _, n := range []int{1, 4} {
		b.Run(fmt.Sprintf("watchers=%d", n), func(b *testing.B) {
			opts := WatchOptions{Patterns: hostilePatterns(b, 0, 64), Snapshot: true}
			watch := func() error {
				sub, err := s.Watch(opts)
				if err == nil {
					sub.Cancel()
				}
				return err
			}
			ctx := context.Background()
			value := make([]byte, 64)
			i := 0
			catchUpStalls(b, n, watch, func() error {
				i++
				_, err := s.Put(ctx, fmt.Sprintf("bench/%08d", i%1_000_000), value, PutOptions{})
				return err
			})
		})
	}
}

// catchUpStalls runs catchUp in n goroutines at once, for each iteration
// of b.Loop, while write runs every 50 µs on the benchmark's goroutine,
// and reports how many writes ended per iteration, and the 99th
// percentile and the longest of their durations.
func catchUpStalls(b *testing.B, n int, catchUp, write func() error) {
	var took []time.Duration
	tick := time.NewTicker(50 * time.Microsecond)
	defer tick.Stop()
	for b.Loop() {
		errc := make(chan error, n)
		for range n {
			go func() { errc <- catchUp() }()
		}
		var errs []error
		for pending := n; pending > 0; {
			select {
			case err := <-errc:
				pending--
				errs = append(errs, err)
			case <-tick.C:
				start := time.Now()
				if err := write(); err != nil {
					errs = append(errs, err)
				}
				took = append(took, time.Since(start))
			}
		}
		if err := errors.Join(errs...); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(took))/float64(b.N), "writes/op")
	reportLatency(b, took)
}

// BenchmarkPutWhileWatching writes from many goroutines into a store of
// 100,000 keys while another goroutine takes snapshots of 10 keys, one
// after another. Each snapshot freezes the ordered keys, so the next
// batch copies the nodes on its paths: this is what that costs the
// committer.
func BenchmarkPutWhileWatching(b *testing.B) {
	const keys = 100_000
	s := memStore(b)
	fillStore(b, s, keys)
	opts := WatchOptions{Patterns: parsePatterns(b, "bench/0000012*"), Snapshot: true}
	quit := make(chan struct{})
	errc := make(chan error, 1)
	snapshots := 0
	go func() {
		for {
			select {
			case <-quit:
				errc <- nil
				return
			default:
			}
			sub, err := s.Watch(opts)
			if err != nil {
				errc <- err
				return
			}
			sub.Cancel()
			snapshots++
		}
	}()
	value := make([]byte, 64)
	ctx := context.Background()
	batches := s.Stats().Batches.Load()
	b.ReportAllocs()
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewPCG(rand.Uint64(), 1))
		for pb.Next() {
			if _, err := s.Put(ctx, fmt.Sprintf("bench/%08d", rng.IntN(keys)), value, PutOptions{}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	close(quit)
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(snapshots)/float64(s.Stats().Batches.Load()-batches), "snapshots/batch")
}

// reportLatency reports the 99th percentile and the longest of took.
func reportLatency(b *testing.B, took []time.Duration) {
	if len(took) == 0 {
		return
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)*99/100].Nanoseconds()), "p99-ns")
	b.ReportMetric(float64(took[len(took)-1].Nanoseconds()), "max-ns")
}

// parsePatterns parses ordinary patterns.
func parsePatterns(tb testing.TB, ss ...string) []Pattern {
	tb.Helper()
	out := make([]Pattern, len(ss))
	for i, s := range ss {
		p, err := ParsePattern(s)
		if err != nil {
			tb.Fatal(err)
		}
		out[i] = p
	}
	return out
}

// memStore opens a store that keeps nothing on disk, closed when tb ends.
func memStore(tb testing.TB) *Store {
	tb.Helper()
	s, err := Open(Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}
