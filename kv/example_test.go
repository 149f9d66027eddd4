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
