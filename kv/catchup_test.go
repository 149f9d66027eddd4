package kv

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// The tests below hold the catch-up of a subscription to not holding up
// the writers: a resume with hostile globs (matched against every change
// kept) and a snapshot with hostile globs (matched against every key) take
// long, but their matching must not happen under a lock that publishing or
// committing needs.
//
// They count stalls rather than bound a time: first one such catch-up is
// timed alone, then a few run one after the other while a writer goes on,
// each after the writer has finished a write since the one before, and
// the writes that took longer than a quarter of it are stalls. When the
// catch-up holds the writer's lock throughout, each one stalls a write by
// about its whole length; when it does not, none should (one is let
// through for a machine that pauses the writer's thread).

// stallCatchUps is how many catch-ups the tests run while the writer goes
// on; a write that takes long during one of them is a stall.
const stallCatchUps = 4

// pacedWriter calls a write every 200 µs in a goroutine of its own, until
// stop, and counts the calls that take longer than a limit. Only the test
// goroutine calls its methods.
type pacedWriter struct {
	quit    chan struct{}
	wrote   chan struct{} // a value after each write, when there is room
	stopped chan struct{} // closed when the goroutine has ended
	slow    int           // written by the goroutine before stopped is closed
	longest time.Duration // likewise
	err     error         // likewise: the error that ended the writes
}

func startWriter(limit time.Duration, write func() error) *pacedWriter {
	w := &pacedWriter{quit: make(chan struct{}), wrote: make(chan struct{}, 1), stopped: make(chan struct{})}
	go func() {
		defer close(w.stopped)
		tick := time.NewTicker(200 * time.Microsecond)
		defer tick.Stop()
		for {
			select {
			case <-w.quit:
				return
			case <-tick.C:
			}
			start := time.Now()
			if w.err = write(); w.err != nil {
				return
			}
			d := time.Since(start)
			w.longest = max(w.longest, d)
			if d > limit {
				w.slow++
			}
			select {
			case w.wrote <- struct{}{}:
			default:
			}
		}
	}()
	return w
}

// next waits until a write has ended after next was called. It reports
// false when the writer stopped instead.
func (w *pacedWriter) next() bool {
	select {
	case <-w.wrote: // a write that ended before
	default:
	}
	select {
	case <-w.wrote:
		return true
	case <-w.stopped:
		return false
	}
}

// stop ends the writes and returns how many took longer than the limit,
// the longest, and the error that ended them, if one did.
func (w *pacedWriter) stop() (slow int, longest time.Duration, err error) {
	close(w.quit)
	<-w.stopped
	return w.slow, w.longest, w.err
}

// fillHistory publishes n changes to f, from revision 1, over 5,000 keys,
// in batches of 1,000, and returns the last revision.
func fillHistory(f *Feed, n int) int64 {
	value := make([]byte, 16)
	batch := make([]Change, 0, 1000)
	var rev int64
	for rev < int64(n) {
		batch = batch[:0]
		for len(batch) < cap(batch) && rev < int64(n) {
			rev++
			batch = append(batch, Change{Op: OpPut, Key: fmt.Sprintf("k/%06d", rev%5000), Value: value, Revision: rev})
		}
		f.Publish(batch, rev)
	}
	return rev
}

// TestResumeDoesNotHoldUpPublish resumes with 64 hostile globs from near
// the start of a full history of 100,000 changes while changes are
// published.
func TestResumeDoesNotHoldUpPublish(t *testing.T) {
	const kept = 100_000
	f := NewFeed(kept, 1<<20, 0)
	rev := fillHistory(f, kept)
	opts := WatchOptions{Patterns: hostilePatterns(t, 0, 64), Resume: true}
	resume := func() (time.Duration, error) {
		// Well after the floor, which moves as the writer publishes.
		opts.From = f.Floor() + 1000
		start := time.Now()
		sub, _, err := f.Subscribe(opts)
		took := time.Since(start)
		if err != nil {
			return 0, err
		}
		sub.Cancel()
		if sub.Reset != "" || len(sub.Replay) != 0 {
			return 0, fmt.Errorf("resume from %d: reset %q, %d changes replayed; want a replay of none", opts.From, sub.Reset, len(sub.Replay))
		}
		return took, nil
	}
	alone, err := resume()
	if err != nil {
		t.Fatal(err)
	}
	value := make([]byte, 16)
	w := startWriter(alone/4, func() error {
		rev++
		f.Publish([]Change{{Op: OpPut, Key: "live", Value: value, Revision: rev}}, rev)
		return nil
	})
	for range stallCatchUps {
		w.next()
		if _, err := resume(); err != nil {
			w.stop()
			t.Fatal(err)
		}
	}
	slow, longest, _ := w.stop()
	t.Logf("a hostile resume took %v; the longest Publish meanwhile took %v", alone, longest)
	if slow > 1 {
		t.Errorf("%d publishes took over %v while %d hostile resumes ran one after another (the longest %v): resuming holds up publishing",
			slow, alone/4, stallCatchUps, longest)
	}
}

// TestSnapshotDoesNotHoldUpWrites takes snapshots with 64 hostile globs,
// whose common prefix is empty, of a store of 100,000 keys while a client
// writes.
func TestSnapshotDoesNotHoldUpWrites(t *testing.T) {
	const keys = 100_000
	s := memStore(t)
	fillStore(t, s, keys)
	opts := WatchOptions{Patterns: hostilePatterns(t, 0, 64), Snapshot: true}
	watch := func() (time.Duration, error) {
		start := time.Now()
		sub, err := s.Watch(opts)
		took := time.Since(start)
		if err != nil {
			return 0, err
		}
		sub.Cancel()
		if len(sub.Snapshot) != 0 {
			return 0, fmt.Errorf("the hostile globs match %d keys, want none", len(sub.Snapshot))
		}
		return took, nil
	}
	alone, err := watch()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	value := make([]byte, 16)
	w := startWriter(alone/4, func() error {
		_, err := s.Put(ctx, "live", value, PutOptions{})
		return err
	})
	for range stallCatchUps {
		if !w.next() {
			break // the writer failed: stop says why
		}
		if _, err := watch(); err != nil {
			w.stop()
			t.Fatal(err)
		}
	}
	slow, longest, err := w.stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("a hostile snapshot took %v; the longest Put meanwhile took %v", alone, longest)
	if slow > 1 {
		t.Errorf("%d puts took over %v while %d hostile snapshots ran one after another (the longest %v): snapshots hold up the committer",
			slow, alone/4, stallCatchUps, longest)
	}
}
