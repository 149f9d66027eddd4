package kv_test

import (
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"

	"kvsse/kv"
)

// group returns the changes of one revision, puts of keys.
func group(rev int64, keys ...string) []kv.Change {
	var out []kv.Change
	for _, k := range keys {
		out = append(out, kv.Change{Op: kv.OpPut, Key: k, Value: []byte(k), Revision: rev})
	}
	return out
}

// keyRevs returns "key@revision" for each change.
func keyRevs(cs []*kv.Change) []string {
	var out []string
	for _, c := range cs {
		out = append(out, fmt.Sprintf("%s@%d", c.Key, c.Revision))
	}
	return out
}

// TestPublishSharedRevision publishes changes that share a revision to
// subscriptions several of whose patterns match them: each receives every
// change of the revision that matches, once.
func TestPublishSharedRevision(t *testing.T) {
	tests := []struct {
		name     string
		patterns []string
		want     []string
	}{
		{"one pattern", []string{"a/*"}, []string{"a/1@1", "a/2@1", "a/3@2", "a/4@2"}},
		{"overlapping patterns", []string{"a/*", "**", "a/**"}, []string{"a/1@1", "a/2@1", "b/1@1", "a/3@2", "b/2@2", "a/4@2"}},
		{"one key of each", []string{"b/1", "a/4"}, []string{"b/1@1", "a/4@2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := kv.NewFeed(100, 100, 0)
			sub, _, err := f.Subscribe(kv.WatchOptions{Patterns: patterns(t, tt.patterns...)})
			if err != nil {
				t.Fatal(err)
			}
			f.Publish(append(group(1, "a/1", "a/2", "b/1"), group(2, "a/3", "b/2", "a/4")...), 2)
			got, _ := sub.Take(nil)
			if diff := cmp.Diff(tt.want, keyRevs(got)); diff != "" {
				t.Errorf("Take (-want +got):\n%s", diff)
			}
		})
	}
}

// TestTakeWholeRevisions publishes revisions of several changes while a
// consumer takes them: no Take may return part of a revision, whichever
// moment it comes at.
func TestTakeWholeRevisions(t *testing.T) {
	const (
		revisions = 3000
		size      = 6 // changes per revision; the consumer's pattern matches 4 of them
	)
	f := kv.NewFeed(100, revisions*size, 0)
	sub, _, err := f.Subscribe(kv.WatchOptions{Patterns: patterns(t, "g/**", "g/*/x")})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		var spare []*kv.Change
		seen := int64(0)
		for seen < revisions {
			changes, ended := sub.Take(spare)
			if ended {
				errc <- fmt.Errorf("ended after revision %d", seen)
				return
			}
			for i := 0; i < len(changes); {
				rev := changes[i].Revision
				j := i
				for j < len(changes) && changes[j].Revision == rev {
					j++
				}
				if got := keyRevs(changes[i:j]); j-i != 4 || rev != seen+1 {
					errc <- fmt.Errorf("after revision %d, a Take returned part of a revision or skipped one: %v", seen, got)
					return
				}
				seen, i = rev, j
			}
			spare = changes
		}
		errc <- nil
	}()
	for r := int64(1); r <= revisions; r++ {
		f.Publish(group(r, "g/a/x", "h/1", "g/b", "h/2", "g/c/x", "g/d"), r)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// TestPublishGroupLags checks that a revision whose changes do not all fit
// in a subscription's queue ends it before any of them is queued, and
// that a revision larger than the whole buffer still reaches an empty
// queue.
func TestPublishGroupLags(t *testing.T) {
	f := kv.NewFeed(100, 4, 0)
	lagging, _, err := f.Subscribe(kv.WatchOptions{Patterns: patterns(t, "**")})
	if err != nil {
		t.Fatal(err)
	}
	f.Publish(group(1, "a", "b"), 1)
	f.Publish(group(2, "c", "d", "e"), 2)
	got, ended := lagging.Take(nil)
	if diff := cmp.Diff([]string{"a@1", "b@1"}, keyRevs(got)); diff != "" || !ended || !lagging.Lagged() {
		t.Errorf("Take = ended %v, lagged %v (-want +got):\n%s", ended, lagging.Lagged(), diff)
	}

	idle, _, err := f.Subscribe(kv.WatchOptions{Patterns: patterns(t, "**")})
	if err != nil {
		t.Fatal(err)
	}
	f.Publish(group(3, "f", "g", "h", "i", "j", "k"), 3)
	got, ended = idle.Take(nil)
	if diff := cmp.Diff([]string{"f@3", "g@3", "h@3", "i@3", "j@3", "k@3"}, keyRevs(got)); diff != "" || ended {
		t.Errorf("a revision larger than the buffer into an empty queue: ended %v (-want +got):\n%s", ended, diff)
	}
}

// TestResumeSharedRevisions resumes after every revision of a history of
// revisions with several changes, some cut by the history's size: each
// resume gets every change above its revision, and a resume that the
// history cannot serve whole is reset.
func TestResumeSharedRevisions(t *testing.T) {
	f := kv.NewFeed(5, 100, 0)
	all := append(append(group(1, "a", "b", "c"), group(2, "d")...), group(3, "e", "f", "g")...)
	f.Publish(all, 3)
	// The history keeps the last 5 changes: c@1 and the rest. Revision 1
	// is not whole: a resume from 0 must not get c@1 alone.
	if f.Floor() != 1 {
		t.Fatalf("floor = %d, want 1", f.Floor())
	}
	tests := []struct {
		from  int64
		reset string
		want  []string
	}{
		{0, "history", nil},
		{1, "", []string{"d@2", "e@3", "f@3", "g@3"}},
		{2, "", []string{"e@3", "f@3", "g@3"}},
		{3, "", nil},
	}
	for _, tt := range tests {
		sub, _, err := f.Subscribe(kv.WatchOptions{Patterns: patterns(t, "**"), Resume: true, From: tt.from})
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(tt.want, keyRevs(sub.Replay)); diff != "" || sub.Reset != tt.reset {
			t.Errorf("resume from %d: reset %q, want %q (-want +got):\n%s", tt.from, sub.Reset, tt.reset, diff)
		}
	}
}
