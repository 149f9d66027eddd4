package kv_test

import (
	"context"
	"testing"

	"kvsse/kv"
)

// TestWireCache: two subscriptions receive the same published change,
// whose wire cache keeps the first value stored in it for both; a change
// that was never published has none.
func TestWireCache(t *testing.T) {
	s, err := kv.Open(kv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p, err := kv.ParsePattern("**")
	if err != nil {
		t.Fatal(err)
	}
	a, _ := s.Watch(kv.WatchOptions{Patterns: []kv.Pattern{p}})
	b, _ := s.Watch(kv.WatchOptions{Patterns: []kv.Pattern{p}})
	if _, err := s.Put(context.Background(), "k", []byte("v"), kv.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	ca, _ := a.Next(context.Background())
	cb, _ := b.Next(context.Background())
	if ca != cb {
		t.Fatal("the subscriptions got different copies of one change")
	}
	wa, wb := ca.WireCache(), cb.WireCache()
	if wa == nil || wa != wb {
		t.Fatalf("wire caches %p and %p, want one for both", wa, wb)
	}
	if v := wa.Load(); v != nil {
		t.Fatalf("a new cache holds %v", v)
	}
	first, second := new(int), new(int)
	if got := wa.LoadOrStore(first); got != first {
		t.Fatalf("LoadOrStore on an empty cache returned %v, want what it stored", got)
	}
	if got := wb.LoadOrStore(second); got != first {
		t.Errorf("LoadOrStore on a full cache returned %v, want the first value", got)
	}
	var loose kv.Change
	if loose.WireCache() != nil {
		t.Error("a change that was never published has a wire cache")
	}
}
