package kv_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"testing"

	"kvsse/kv"
)

// TestTxnAtomicVisibility runs transactions that each put every key of a
// group at one revision, while readers check that no read shows part of
// one: a Get of a key and then of a later key of its group finds the
// later key at least as new; a listing, a snapshot and the changes of
// each Take hold whole groups.
func TestTxnAtomicVisibility(t *testing.T) {
	const (
		groups = 4
		size   = 8 // keys in a group
		txns   = 2000
	)
	ctx := context.Background()
	s := open(t, kv.Options{SubBuffer: groups * size * txns})
	groupKey := func(g, i int) string { return fmt.Sprintf("g/%d/%d", g, i) }
	live := watch(t, s, kv.WatchOptions{Patterns: patterns(t, "g/**")})

	done := make(chan struct{})
	var readers sync.WaitGroup
	errc := make(chan error, 4*groups)
	read := func(check func() error) {
		readers.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				if err := check(); err != nil {
					errc <- err
					return
				}
				runtime.Gosched() // let the writers and the committer run on few CPUs
			}
		})
	}
	for g := range 2 * groups {
		g %= groups
		read(func() error { // Get pairs
			first, err := s.Get(ctx, groupKey(g, 0))
			if errors.Is(err, kv.ErrNotFound) {
				return nil
			} else if err != nil {
				return err
			}
			for i := 1; i < size; i++ {
				e, err := s.Get(ctx, groupKey(g, i))
				if err != nil {
					return fmt.Errorf("Get %s after %s@%d: %w", groupKey(g, i), first.Key, first.Revision, err)
				}
				if e.Revision < first.Revision {
					return fmt.Errorf("Get %s@%d, then %s@%d: part of a transaction", first.Key, first.Revision, e.Key, e.Revision)
				}
			}
			return nil
		})
	}
	read(func() error { // listings
		p, err := s.List(ctx, "g/", "", 0)
		if err != nil {
			return err
		}
		return wholeGroups(p.Items, size)
	})
	read(func() error { // snapshots
		sub, err := s.Watch(kv.WatchOptions{Patterns: patterns(t, "g/**"), Snapshot: true})
		if err != nil {
			return err
		}
		sub.Cancel()
		return wholeGroups(sub.Snapshot, size)
	})
	liveErr := make(chan error, 1)
	go func() { // the live watch
		var spare []*kv.Change
		for n := 0; n < groups*txns*size; {
			<-live.Ready()
			changes, ended := live.Take(spare)
			if ended {
				liveErr <- fmt.Errorf("the watch ended, lagged %v", live.Lagged())
				return
			}
			count := make(map[int64]int)
			for _, c := range changes {
				count[c.Revision]++
			}
			for rev, k := range count {
				if k != size {
					liveErr <- fmt.Errorf("a Take returned %d changes of revision %d, of %d", k, rev, size)
					return
				}
			}
			n += len(changes)
			spare = changes
		}
		liveErr <- nil
	}()

	var writers sync.WaitGroup
	for g := range groups {
		writers.Go(func() {
			for n := range txns {
				var ops []kv.TxnOp
				for i := range size {
					ops = append(ops, putOp(groupKey(g, i), strconv.Itoa(n)))
				}
				if _, err := s.Txn(ctx, kv.Txn{Then: ops}); err != nil {
					errc <- err
					return
				}
			}
		})
	}
	writers.Wait()
	close(done)
	readers.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	if err := <-liveErr; err != nil {
		t.Error(err)
	}
}

// wholeGroups checks that entries, in key order, hold the groups of size
// keys at one revision each.
func wholeGroups(entries []kv.Entry, size int) error {
	if len(entries)%size != 0 {
		return fmt.Errorf("%d entries, not groups of %d", len(entries), size)
	}
	for i := 0; i < len(entries); i += size {
		for _, e := range entries[i : i+size] {
			if e.Revision != entries[i].Revision {
				return fmt.Errorf("%s@%d beside %s@%d: part of a transaction", e.Key, e.Revision, entries[i].Key, entries[i].Revision)
			}
		}
	}
	return nil
}
