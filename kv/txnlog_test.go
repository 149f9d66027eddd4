package kv_test

import (
	"errors"
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"

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
