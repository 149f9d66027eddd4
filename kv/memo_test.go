package kv_test

import (
	"context"
	"sync/atomic"
	"testing"

	"kvsse/kv"
)

// TestEncodedOnce: two subscriptions receive the same published change,
// and its encoding is built once for both; a change that was never
// published is encoded at every call.
func TestEncodedOnce(t *testing.T) {
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
	var builds atomic.Int32
	enc := func(c *kv.Change) []byte { builds.Add(1); return []byte(c.Key) }
	for range 3 {
		if got := string(ca.Encoded(0, enc)) + string(cb.Encoded(0, enc)); got != "kk" {
			t.Fatalf("encoded %q", got)
		}
	}
	if n := builds.Load(); n != 1 {
		t.Errorf("built %d times for one published change, want 1", n)
	}
	if string(ca.Encoded(1, func(*kv.Change) []byte { return []byte("other") })) != "other" {
		t.Error("slot 1 shares slot 0's bytes")
	}
	builds.Store(0)
	var loose kv.Change
	loose.Encoded(0, enc)
	loose.Encoded(0, enc)
	if n := builds.Load(); n != 2 {
		t.Errorf("unpublished change built %d times, want 2", n)
	}
}
