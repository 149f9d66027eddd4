package sse

import (
	"testing"

	"kvsse/kv"
)

// SubscribeAll subscribes to every key of f, with the other options of
// opts. It is exported for the black-box tests, which make feeds too.
func SubscribeAll(tb testing.TB, f *kv.Feed, opts kv.WatchOptions) *kv.Subscription {
	tb.Helper()
	p, err := kv.ParsePattern("**")
	if err != nil {
		tb.Fatal(err)
	}
	opts.Patterns = []kv.Pattern{p}
	sub, _, err := f.Subscribe(opts)
	if err != nil {
		tb.Fatal(err)
	}
	return sub
}
