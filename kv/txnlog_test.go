package kv_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sync/errgroup"

	"kvsse/kv"
	"kvsse/kv/wal"
)

// logOf returns a log segment of the current format holding batches, each
// ended by its commit marker.
func logOf(batches ...[]wal.Record) []byte {
	data := append([]byte(nil), wal.LogMagic[:]...)
	for _, batch := range batches {
		for i := range batch {
			data = wal.Append(data, &batch[i])
		}
		data = wal.Append(data, &wal.Record{Op: wal.OpCommit, Rev: batch[len(batch)-1].Rev})
	}
	return data
}

func putRec(key string, rev int64) wal.Record {
	return wal.Record{Op: wal.OpPut, Rev: rev, Key: []byte(key), Value: []byte(key)}
}

// TestOpenSharedRevisions opens logs whose batches hold records sharing a
// revision, as a transaction's changes do: the loader takes them inside a
// batch, and still refuses revisions that go backwards or skip, and a
// revision that a batch shares with the one before it.
func TestOpenSharedRevisions(t *testing.T) {
	tests := []struct {
		name    string
		batches [][]wal.Record
		keys    map[string]int64 // key: revision; nil when Open must fail
		rev     int64
	}{
		{
			name:    "a transaction first",
			batches: [][]wal.Record{{putRec("a", 1), putRec("b", 1), putRec("c", 1)}, {putRec("d", 2)}},
			keys:    map[string]int64{"a": 1, "b": 1, "c": 1, "d": 2},
			rev:     2,
		},
		{
			name:    "a transaction after a group commit",
			batches: [][]wal.Record{{putRec("a", 1), putRec("b", 2), putRec("c", 3), putRec("d", 3), putRec("e", 4)}},
			keys:    map[string]int64{"a": 1, "b": 2, "c": 3, "d": 3, "e": 4},
			rev:     4,
		},
		{
			name: "a transaction that deletes",
			batches: [][]wal.Record{{putRec("a", 1), putRec("b", 2)},
				{{Op: wal.OpDelete, Rev: 3, PrevRev: 1, Key: []byte("a")}, {Op: wal.OpDelete, Rev: 3, PrevRev: 2, Key: []byte("b")}, putRec("c", 3)}},
			keys: map[string]int64{"c": 3},
			rev:  3,
		},
		{name: "a revision shared by two batches", batches: [][]wal.Record{{putRec("a", 1)}, {putRec("b", 1)}}},
		{name: "a skip inside a batch", batches: [][]wal.Record{{putRec("a", 1), putRec("b", 3)}}},
		{name: "a skip between batches", batches: [][]wal.Record{{putRec("a", 1), putRec("b", 1)}, {putRec("c", 3)}}},
		{name: "backwards inside a batch", batches: [][]wal.Record{{putRec("a", 1)}, {putRec("b", 2), putRec("c", 1)}}},
		{name: "backwards after a transaction", batches: [][]wal.Record{{putRec("a", 1), putRec("b", 2), putRec("c", 2)}, {putRec("d", 1)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(wal.SegmentPath(dir, 1), logOf(tt.batches...), 0o644); err != nil {
				t.Fatal(err)
			}
			s, err := kv.Open(kv.Options{Dir: dir})
			if tt.keys == nil {
				if err == nil {
					s.Close()
					t.Fatal("Open succeeded")
				}
				if !errors.Is(err, wal.ErrCorrupt) {
					t.Errorf("Open: %v, want an error matching wal.ErrCorrupt", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer s.Close()
			got := make(map[string]int64)
			for _, e := range listAll(t, s).Items {
				got[e.Key] = e.Revision
			}
			if diff := cmp.Diff(tt.keys, got); diff != "" {
				t.Errorf("keys (-want +got):\n%s", diff)
			}
			if s.Revision() != tt.rev {
				t.Errorf("Revision = %d, want %d", s.Revision(), tt.rev)
			}
			if r := put(t, s, "next", "v"); r.Revision != tt.rev+1 {
				t.Errorf("the next write took revision %d, want %d", r.Revision, tt.rev+1)
			}
		})
	}
}

// resumes returns, for each revision from 0 to the store's, what a watch
// of every key resuming from it gets: its reset, or its replay.
func resumes(t *testing.T, s *kv.Store) []string {
	t.Helper()
	var out []string
	for from := int64(0); from <= s.Revision(); from++ {
		sub := watch(t, s, kv.WatchOptions{Patterns: patterns(t, "**"), Resume: true, From: from})
		sub.Cancel()
		if sub.Reset != "" {
			out = append(out, fmt.Sprintf("from %d: reset %s", from, sub.Reset))
			continue
		}
		out = append(out, fmt.Sprintf("from %d: %v", from, changesOf(sub.Replay)))
	}
	return out
}

// writeTxns writes puts and transactions to s, some of them in the same
// batches.
func writeTxns(t *testing.T, s *kv.Store) {
	t.Helper()
	ctx := context.Background()
	seed(t, s, "a", "b", "p/1", "p/2", "p/3")
	txns := []kv.Txn{
		{Then: []kv.TxnOp{putOp("a", "2"), delOp("b"), putOp("c", "1")}},
		{Then: []kv.TxnOp{prefixOp("p/"), putOp("q/1", "1")}},
		{If: []kv.Compare{{Key: "a", Cond: kv.IfExists()}}, Then: []kv.TxnOp{putOp("q/2", "2"), putOp("q/3", "3")}},
	}
	for _, txn := range txns {
		if _, err := s.Txn(ctx, txn); err != nil {
			t.Fatal(err)
		}
	}
	var writes errgroup.Group
	for i := range 8 {
		writes.Go(func() error {
			_, err := s.Txn(ctx, kv.Txn{Then: []kv.TxnOp{putOp(fmt.Sprintf("r/%d/a", i), "x"), putOp(fmt.Sprintf("r/%d/b", i), "y")}})
			return err
		})
	}
	if err := writes.Wait(); err != nil {
		t.Fatal(err)
	}
	put(t, s, "last", "v")
}

// TestTxnRestart checks that transactions outlive a restart: the keys,
// the store's revision, and the history, whose revisions the changes of a
// transaction share, so that every resume gets after the restart what it
// got before, also where the history keeps only part of a transaction.
func TestTxnRestart(t *testing.T) {
	for _, history := range []int{4, 7, 1000} {
		t.Run(fmt.Sprintf("history=%d", history), func(t *testing.T) {
			opts := kv.Options{Dir: t.TempDir(), History: history}
			s, err := kv.Open(opts)
			if err != nil {
				t.Fatal(err)
			}
			writeTxns(t, s)
			rev, state, before := s.Revision(), stateOf(t, s), resumes(t, s)
			closeStore(t, s)
			s = open(t, opts)
			if s.Revision() != rev {
				t.Errorf("Revision after a restart = %d, want %d", s.Revision(), rev)
			}
			if diff := cmp.Diff(state, stateOf(t, s)); diff != "" {
				t.Errorf("state (-before +after a restart):\n%s", diff)
			}
			if diff := cmp.Diff(before, resumes(t, s)); diff != "" {
				t.Errorf("resumes (-before +after a restart):\n%s", diff)
			}
			if r := put(t, s, "next", "v"); r.Revision != rev+1 {
				t.Errorf("the next write took revision %d, want %d", r.Revision, rev+1)
			}
		})
	}
}

// TestTxnTornTail cuts the log at every byte of the batch that holds a
// transaction, as a crash in the middle of writing it may leave it: the
// store opens with the transaction whole or absent, never in part.
func TestTxnTornTail(t *testing.T) {
	dir := t.TempDir()
	s, err := kv.Open(kv.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	seed(t, s, "a", "b", "p/1", "p/2")
	before := stateOf(t, s)
	closeStore(t, s)
	path := wal.SegmentPath(dir, 1)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	from := st.Size()
	s, err = kv.Open(kv.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Txn(context.Background(), kv.Txn{Then: []kv.TxnOp{
		putOp("a", "2"), delOp("b"), prefixOp("p/"),
		{Kind: kv.TxnPut, Key: "c", Value: []byte("3"), ContentType: "text/plain", TTL: time.Hour},
	}})
	if err != nil {
		t.Fatal(err)
	}
	after := stateOf(t, s)
	closeStore(t, s)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if files, err := wal.List(dir); err != nil || len(files.Segments) != 1 {
		t.Fatalf("List = %+v, %v; want one segment", files, err)
	}
	for cut := from; cut <= int64(len(data)); cut++ {
		want, rev := before, int64(4)
		if cut == int64(len(data)) {
			want, rev = after, 5
		}
		cutDir := filepath.Join(t.TempDir(), "data")
		if err := os.Mkdir(cutDir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(wal.SegmentPath(cutDir, 1), data[:cut], 0o644); err != nil {
			t.Fatal(err)
		}
		s, err := kv.Open(kv.Options{Dir: cutDir})
		if err != nil {
			t.Fatalf("Open with the log cut at %d of %d: %v", cut, len(data), err)
		}
		got, gotRev := stateOf(t, s), s.Revision()
		closeStore(t, s)
		if diff := cmp.Diff(want, got); diff != "" || gotRev != rev {
			t.Fatalf("the log cut at %d of %d: Revision %d, want %d; state (-want +got):\n%s", cut, len(data), gotRev, rev, diff)
		}
	}
}
