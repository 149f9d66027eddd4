package kv_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"kvsse/kv"
)

func ExampleOpen() {
	ctx := context.Background()
	// An empty Dir keeps everything in memory.
	s, err := kv.Open(kv.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	r, err := s.Put(ctx, "config/flag", []byte("on"), kv.PutOptions{ContentType: "text/plain"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("put at revision", r.Revision, "created:", r.Created())

	e, err := s.Get(ctx, "config/flag")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("get %s = %s (%s) at revision %d\n", e.Key, e.Value, e.ContentType, e.Revision)

	// Compare-and-set: a write that expects an older revision fails.
	_, err = s.Put(ctx, "config/flag", []byte("off"), kv.PutOptions{Cond: kv.IfRevision(e.Revision + 1)})
	var conflict *kv.ConflictError
	if errors.As(err, &conflict) {
		fmt.Println("conflict: the key is at revision", conflict.Revision)
	}

	_, err = s.Get(ctx, "config/missing")
	fmt.Println("missing:", errors.Is(err, kv.ErrNotFound))
	// Output:
	// put at revision 1 created: true
	// get config/flag = on (text/plain) at revision 1
	// conflict: the key is at revision 1
	// missing: true
}

func ExampleStore_Watch() {
	ctx := context.Background()
	s, err := kv.Open(kv.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Put(ctx, "config/a", []byte("1"), kv.PutOptions{}); err != nil {
		log.Fatal(err)
	}

	p, err := kv.ParsePattern("config/**")
	if err != nil {
		log.Fatal(err)
	}
	// Snapshot: the matching keys first, then every change after Revision.
	sub, err := s.Watch(kv.WatchOptions{Patterns: []kv.Pattern{p}, Snapshot: true})
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Cancel()
	for _, e := range sub.Snapshot {
		fmt.Printf("snapshot %s = %s\n", e.Key, e.Value)
	}
	fmt.Println("live after revision", sub.Revision)

	if _, err := s.Put(ctx, "other/x", []byte("not watched"), kv.PutOptions{}); err != nil {
		log.Fatal(err)
	}
	if _, err := s.Put(ctx, "config/b", []byte("2"), kv.PutOptions{}); err != nil {
		log.Fatal(err)
	}
	if _, err := s.Delete(ctx, "config/a", kv.Cond{}); err != nil {
		log.Fatal(err)
	}
	for range 2 {
		c, ok := sub.Next(ctx)
		if !ok {
			log.Fatal("the subscription ended")
		}
		fmt.Printf("%d %s %s value=%q reason=%q\n", c.Revision, c.Event(), c.Key, c.Value, c.Reason())
	}
	// Output:
	// snapshot config/a = 1
	// live after revision 1
	// 3 put config/b value="2" reason=""
	// 4 delete config/a value="" reason="deleted"
}

func ExampleStore_Txn() {
	ctx := context.Background()
	s, err := kv.Open(kv.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	for _, key := range []string{"cfg/version", "cfg/tmp/1", "cfg/tmp/2"} {
		if _, err := s.Put(ctx, key, []byte("x"), kv.PutOptions{}); err != nil {
			log.Fatal(err)
		}
	}

	// When cfg/version is still at revision 1 and nobody holds cfg/lock:
	// set cfg/a and clear cfg/tmp/, as one write at one revision.
	txn := kv.Txn{
		If: []kv.Compare{
			{Key: "cfg/version", Cond: kv.IfRevision(1)},
			{Key: "cfg/lock", Cond: kv.IfAbsent()},
		},
		Then: []kv.TxnOp{
			{Kind: kv.TxnPut, Key: "cfg/a", Value: []byte("on")},
			{Kind: kv.TxnDeletePrefix, Key: "cfg/tmp/"},
		},
	}
	r, err := s.Txn(ctx, txn)
	if err != nil {
		log.Fatal(err)
	}
	for _, c := range r.Changes {
		event := "delete"
		if c.Op == kv.OpPut {
			event = "put"
		}
		fmt.Printf("revision %d: %s %s, before at %d\n", r.Revision, event, c.Key, c.PrevRevision)
	}

	// Again, with one more condition, which fails now that cfg/a exists:
	// nothing changes, and every condition that failed is listed.
	txn.If = append(txn.If, kv.Compare{Key: "cfg/a", Cond: kv.IfAbsent()})
	_, err = s.Txn(ctx, txn)
	var failed *kv.TxnFailedError
	if errors.As(err, &failed) {
		fmt.Println("failed:", failed.Failed, "revision still", s.Revision())
	}
	// Output:
	// revision 4: put cfg/a, before at 0
	// revision 4: delete cfg/tmp/1, before at 2
	// revision 4: delete cfg/tmp/2, before at 3
	// failed: [{cfg/a 4}] revision still 4
}
