package kv_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sync/errgroup"

	"kvsse/kv"
)

// change is a kv.Change in a form that is easy to compare and print.
type change struct {
	Op           kv.Op
	Key          string
	Value        string
	ContentType  string
	Expires      int64
	Revision     int64
	PrevRevision int64
	Reason       string
}

func changeOf(c *kv.Change) change {
	return change{Op: c.Op, Key: c.Key, Value: string(c.Value), ContentType: c.ContentType, Expires: c.Expires,
		Revision: c.Revision, PrevRevision: c.PrevRevision, Reason: c.Reason()}
}

func changesOf(cs []*kv.Change) []change {
	var out []change
	for _, c := range cs {
		out = append(out, changeOf(c))
	}
	return out
}

func keysOf(entries []kv.Entry) []string {
	var out []string
	for _, e := range entries {
		out = append(out, e.Key)
	}
	return out
}

func patterns(t testing.TB, ss ...string) []kv.Pattern {
	t.Helper()
	var ps []kv.Pattern
	for _, s := range ss {
		p, err := kv.ParsePattern(s)
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	return ps
}

// watch subscribes to s with opts, failing the test if it cannot.
func watch(t testing.TB, s *kv.Store, opts kv.WatchOptions) *kv.Subscription {
	t.Helper()
	sub, err := s.Watch(opts)
	if err != nil {
		t.Fatal(err)
	}
	return sub
}

// waitTimeout bounds every wait for a change: long enough for a loaded CI
// machine, short enough to fail in reasonable time.
const waitTimeout = 10 * time.Second

// receive reads n changes from sub, failing the test when it ends or
// they do not come in time.
func receive(t testing.TB, sub *kv.Subscription, n int) []change {
	t.Helper()
	out := make([]change, 0, n)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	for len(out) < n {
		c, ok := sub.Next(ctx)
		switch {
		case ok:
			out = append(out, changeOf(c))
		case ctx.Err() != nil:
			t.Fatalf("got %d of %d changes in %v: %+v", len(out), n, waitTimeout, out)
		default:
			t.Fatalf("ended after %d of %d changes (lagged: %v): %+v", len(out), n, sub.Lagged(), out)
		}
	}
	return out
}

// drain returns the revisions of every change left in sub, which must
// have ended.
func drain(sub *kv.Subscription) []int64 {
	var revs []int64
	for {
		c, ok := sub.Next(context.Background())
		if !ok {
			return revs
		}
		revs = append(revs, c.Revision)
	}
}

// noMore checks that sub has nothing queued.
func noMore(t testing.TB, sub *kv.Subscription) {
	t.Helper()
	if changes, ended := sub.Take(nil); len(changes) > 0 {
		t.Errorf("unexpected change %+v", changeOf(changes[0]))
	} else if ended {
		t.Errorf("the subscription ended")
	}
}

func TestWatchPlain(t *testing.T) {
	ctx := context.Background()
	s := open(t, kv.Options{})
	put(t, s, "a/1", "before")
	put(t, s, "b/1", "before")
	sub := watch(t, s, kv.WatchOptions{Patterns: patterns(t, "a/**")})
	defer sub.Cancel()
	if sub.Revision != 2 || sub.Reset != "" || sub.Snapshot != nil || sub.Replay != nil {
		t.Errorf("plain Watch: Revision %d, Reset %q, %d snapshot entries, %d replayed; want 2 and no catch-up",
			sub.Revision, sub.Reset, len(sub.Snapshot), len(sub.Replay))
	}
	put(t, s, "a/2", "x")
	put(t, s, "b/1", "y")
	if _, err := s.Put(ctx, "a/1", []byte("z"), kv.PutOptions{ContentType: "text/plain"}); err != nil {
		t.Fatal(err)
	}
	del(t, s, "a/2")
	put(t, s, "a", "not under a/")
	put(t, s, "a/b/c", "deep")
	want := []change{
		{Op: kv.OpPut, Key: "a/2", Value: "x", Revision: 3},
		{Op: kv.OpPut, Key: "a/1", Value: "z", ContentType: "text/plain", Revision: 5, PrevRevision: 1},
		{Op: kv.OpDelete, Key: "a/2", Revision: 6, PrevRevision: 3, Reason: "deleted"},
		{Op: kv.OpPut, Key: "a/b/c", Value: "deep", Revision: 8},
	}
	if diff := cmp.Diff(want, receive(t, sub, len(want))); diff != "" {
		t.Errorf("live changes (-want +got):\n%s", diff)
	}
	noMore(t, sub)
}

// history20 makes a store with History 8 and 20 changes: 10 puts on a/x
// and b/y alternately, then puts and deletes. It returns the changes.
func history20(t *testing.T) (*kv.Store, []change) {
	s := open(t, kv.Options{History: 8})
	sub := watch(t, s, kv.WatchOptions{Patterns: patterns(t, "**")})
	defer sub.Cancel()
	for i := range 20 {
		key := []string{"a/x", "b/y", "a/z"}[i%3]
		if i%7 == 6 {
			del(t, s, key)
			continue
		}
		put(t, s, key, fmt.Sprint(i))
	}
	return s, receive(t, sub, 20)
}

func TestWatchResume(t *testing.T) {
	// History 8 after 20 changes keeps revisions 13..20: every change
	// after 12 is there.
	const floor = 12
	matchA := func(cs []change) []change {
		var out []change
		for _, c := range cs {
			if strings.HasPrefix(c.Key, "a/") {
				out = append(out, c)
			}
		}
		return out
	}
	tests := []struct {
		name     string
		from     int64
		snapshot bool
		reset    string
		replay   bool // Replay holds the changes after from
	}{
		{name: "within history", from: 15, replay: true},
		{name: "at the oldest kept", from: floor, replay: true},
		{name: "at the oldest kept, snapshot ignored", from: floor, snapshot: true, replay: true},
		{name: "at the revision", from: 20, replay: true},
		{name: "just older than history", from: floor - 1, reset: "history"},
		{name: "from 0", from: 0, reset: "history"},
		{name: "future", from: 21, reset: "future"},
		{name: "far future", from: 1 << 40, reset: "future"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, all := history20(t)
			sub := watch(t, s, kv.WatchOptions{Patterns: patterns(t, "a/*"), Resume: true, From: tt.from, Snapshot: tt.snapshot})
			defer sub.Cancel()
			if sub.Reset != tt.reset || sub.Revision != 20 {
				t.Errorf("Reset %q at Revision %d, want %q at 20", sub.Reset, sub.Revision, tt.reset)
			}
			if tt.replay {
				if diff := cmp.Diff(matchA(all[tt.from:]), changesOf(sub.Replay)); diff != "" {
					t.Errorf("Replay (-want +got):\n%s", diff)
				}
				if sub.Snapshot != nil {
					t.Errorf("a resume within history has a snapshot: %v", keysOf(sub.Snapshot))
				}
			} else {
				p, err := s.List(context.Background(), "a/", "", 100)
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(p.Items, sub.Snapshot); diff != "" || len(p.Items) == 0 {
					t.Errorf("Snapshot of a reset (-want +got):\n%s", diff)
				}
				if sub.Replay != nil {
					t.Errorf("a reset also has a replay of %d changes", len(sub.Replay))
				}
			}
			put(t, s, "b/live", "x")
			put(t, s, "a/live", "x")
			want := []change{{Op: kv.OpPut, Key: "a/live", Value: "x", Revision: 22}}
			if diff := cmp.Diff(want, receive(t, sub, 1)); diff != "" {
				t.Errorf("live change (-want +got):\n%s", diff)
			}
		})
	}
}

func TestWatchSnapshot(t *testing.T) {
	s := open(t, kv.Options{})
	for _, k := range []string{"c/2", "c/1", "d/1", "c/3/x", "c", "cc/1"} {
		put(t, s, k, "v"+k)
	}
	del(t, s, "c/2")
	sub := watch(t, s, kv.WatchOptions{Patterns: patterns(t, "c/*", "c/*/x", "cc/**"), Snapshot: true})
	defer sub.Cancel()
	if got, want := keysOf(sub.Snapshot), []string{"c/1", "c/3/x", "cc/1"}; !cmp.Equal(want, got) {
		t.Errorf("snapshot keys (-want +got):\n%s", cmp.Diff(want, got))
	}
	if sub.Revision != 7 || sub.Reset != "" || sub.Replay != nil {
		t.Errorf("Revision %d, Reset %q, %d replayed; want 7, no reset, no replay", sub.Revision, sub.Reset, len(sub.Replay))
	}
}

// TestWatchCatchUpMeetsLive runs writers while watchers start, and checks
// for each watcher that its catch-up (snapshot, or a replay from 0) then
// its live changes rebuild the final state exactly: no gap, no duplicate,
// live revisions strictly increasing and above Revision.
func TestWatchCatchUpMeetsLive(t *testing.T) {
	const writers, each, keys = 4, 300, 50
	s := open(t, kv.Options{SubBuffer: writers*each + 10})
	var writes errgroup.Group
	for w := range writers {
		writes.Go(func() error {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for i := range each {
				key := fmt.Sprintf("k/%02d", rng.IntN(keys))
				var err error
				if rng.IntN(4) == 0 {
					_, err = s.Delete(context.Background(), key, kv.Cond{})
					if errors.Is(err, kv.ErrNotFound) {
						err = nil
					}
				} else {
					_, err = s.Put(context.Background(), key, []byte(fmt.Sprintf("%d/%d", w, i)), kv.PutOptions{})
				}
				if err != nil {
					return err
				}
			}
			return nil
		})
	}
	type watcher struct {
		sub    *kv.Subscription
		replay bool
	}
	var watchers []watcher
	for i := range 16 {
		opts := kv.WatchOptions{Patterns: patterns(t, "k/**"), Snapshot: true}
		if i%2 == 1 {
			opts = kv.WatchOptions{Patterns: patterns(t, "k/**"), Resume: true}
		}
		sub, err := s.Watch(opts)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Cancel()
		watchers = append(watchers, watcher{sub, opts.Resume})
		for range 20 {
			runtime.Gosched()
		}
	}
	if err := writes.Wait(); err != nil {
		t.Fatal(err)
	}
	final := s.Revision()
	want := map[string]string{}
	for _, e := range listAll(t, s).Items {
		want[e.Key] = string(e.Value)
	}

	midway := 0
	for i, w := range watchers {
		sub := w.sub
		if sub.Revision > 0 && sub.Revision < final {
			midway++
		}
		state := map[string]string{}
		last := int64(0)
		apply := func(c change) {
			if c.Revision <= last {
				t.Fatalf("watcher %d: revision %d after %d", i, c.Revision, last)
			}
			last = c.Revision
			if c.Op == kv.OpPut {
				state[c.Key] = c.Value
			} else {
				delete(state, c.Key)
			}
		}
		if w.replay {
			if sub.Reset != "" {
				t.Fatalf("watcher %d: resume from 0 with full history got Reset %q", i, sub.Reset)
			}
			for _, c := range changesOf(sub.Replay) {
				apply(c)
			}
			if last != sub.Revision {
				t.Errorf("watcher %d: replay ends at %d, Revision is %d", i, last, sub.Revision)
			}
		} else {
			for _, e := range sub.Snapshot {
				state[e.Key] = string(e.Value)
			}
			last = sub.Revision
		}
		live := receive(t, sub, int(final-sub.Revision))
		for _, c := range live {
			apply(c)
		}
		noMore(t, sub)
		if diff := cmp.Diff(want, state); diff != "" {
			t.Errorf("watcher %d (from revision %d, replay %v): rebuilt state differs (-store +watcher):\n%s", i, sub.Revision, w.replay, diff)
		}
	}
	t.Logf("%d of %d watchers started while writes were going on (final revision %d)", midway, len(watchers), final)
}

// TestWatchSeveralPatterns: a change whose key matches two patterns of a
// subscription arrives once.
func TestWatchSeveralPatterns(t *testing.T) {
	s := open(t, kv.Options{})
	sub := watch(t, s, kv.WatchOptions{Patterns: patterns(t, "a/*", "a/**", "a/b", "*/b", "a/b")})
	defer sub.Cancel()
	for _, k := range []string{"a/b", "a/c/d", "x/b", "x/c", "a/c", "end/b"} {
		put(t, s, k, "v")
	}
	var got []string
	for _, c := range receive(t, sub, 5) {
		got = append(got, fmt.Sprintf("%d %s", c.Revision, c.Key))
	}
	want := []string{"1 a/b", "2 a/c/d", "3 x/b", "5 a/c", "6 end/b"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
	noMore(t, sub)
}

// TestWatchLag: a subscriber that never reads is dropped, never waited
// for; other subscribers go on.
func TestWatchLag(t *testing.T) {
	const writes = 100
	s := open(t, kv.Options{SubBuffer: 4})
	slow := watch(t, s, kv.WatchOptions{Patterns: patterns(t, "**")})
	defer slow.Cancel()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	start := time.Now()
	for i := range writes {
		if _, err := s.Put(ctx, fmt.Sprintf("k/%d", i), []byte("v"), kv.PutOptions{}); err != nil {
			t.Fatalf("write %d with a full subscriber: %v", i, err)
		}
	}
	t.Logf("%d writes with a stalled subscriber took %v", writes, time.Since(start))
	got := drain(slow)
	if diff := cmp.Diff([]int64{1, 2, 3, 4}, got); diff != "" {
		t.Errorf("the lagging subscription delivered (-want +got):\n%s", diff)
	}
	if !slow.Lagged() {
		t.Error("Lagged() = false for a dropped subscription")
	}
	slow.Cancel() // after the drop: no panic, no double close

	// A new subscriber is not affected by the one that lagged.
	sub := watch(t, s, kv.WatchOptions{Patterns: patterns(t, "**")})
	defer sub.Cancel()
	put(t, s, "after", "v")
	if got := receive(t, sub, 1); got[0].Key != "after" {
		t.Errorf("got %+v", got)
	}
	if sub.Lagged() {
		t.Error("Lagged() = true for a subscription that kept up")
	}
}

// TestWatchLagGlobSiblings drops a lagging subscriber whose pattern is a
// glob segment while another glob pattern at the same place also matches
// the key. Dropping it removes its glob from the index while publish is
// still walking the index's glob list (before commit f04c47a this was an
// index out of range panic in the committer). The scenario runs in a child
// process because a panic in the committer goroutine ends the process.
func TestWatchLagGlobSiblings(t *testing.T) {
	if os.Getenv("KVSSE_TEST_CHILD") == t.Name() {
		lagGlobSiblings(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "KVSSE_TEST_CHILD="+t.Name())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("the scenario failed in a child process (%v):\n%s", err, out)
	}
}

func lagGlobSiblings(t *testing.T) {
	s := open(t, kv.Options{SubBuffer: 1})
	slow := watch(t, s, kv.WatchOptions{Patterns: patterns(t, "user-*")})
	fast := watch(t, s, kv.WatchOptions{Patterns: patterns(t, "u*")})
	put(t, s, "user-1", "v")
	receive(t, fast, 1)
	put(t, s, "user-2", "v") // slow's buffer is full: it is dropped
	if got := receive(t, fast, 1); got[0].Key != "user-2" {
		t.Errorf("the subscriber that kept up got %+v", got)
	}
	drain(slow)
	if !slow.Lagged() {
		t.Error("the slow subscriber was not dropped")
	}
}

func TestCancel(t *testing.T) {
	s := open(t, kv.Options{})
	sub := watch(t, s, kv.WatchOptions{Patterns: patterns(t, "**")})
	other := watch(t, s, kv.WatchOptions{Patterns: patterns(t, "**")})
	defer other.Cancel()
	sub.Cancel()
	sub.Cancel()
	if c, ok := sub.Next(context.Background()); ok {
		t.Errorf("a change after Cancel: %+v", changeOf(c))
	}
	if sub.Lagged() {
		t.Error("a cancelled subscription reports Lagged")
	}
	put(t, s, "k", "v")
	if got := receive(t, other, 1); got[0].Key != "k" {
		t.Errorf("got %+v", got)
	}
}

// TestHistoryAfterReopen: the history of a durable store is rebuilt from
// its log, so a watcher resumes across a restart.
func TestHistoryAfterReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := kv.Open(kv.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	sub := watch(t, s, kv.WatchOptions{Patterns: patterns(t, "**")})
	for i := range 30 {
		key := fmt.Sprintf("k/%d", i%7)
		if i%5 == 4 {
			del(t, s, fmt.Sprintf("k/%d", (i-1)%7)) // the key just written
			continue
		}
		if _, err := s.Put(context.Background(), key, []byte(fmt.Sprint(i)), kv.PutOptions{ContentType: "text/plain"}); err != nil {
			t.Fatal(err)
		}
	}
	all := receive(t, sub, 30)
	closeStore(t, s)

	s = open(t, kv.Options{Dir: dir})
	for _, from := range []int64{0, 10, 29, 30} {
		res := watch(t, s, kv.WatchOptions{Patterns: patterns(t, "**"), Resume: true, From: from})
		if res.Reset != "" || res.Revision != 30 {
			t.Errorf("resume from %d after reopen: Reset %q, Revision %d; want a replay up to 30", from, res.Reset, res.Revision)
		}
		if diff := cmp.Diff(all[from:], changesOf(res.Replay), equateEmpty); diff != "" {
			t.Errorf("replay from %d after reopen (-before +after):\n%s", from, diff)
		}
		res.Cancel()
	}
}

// A feed's history takes older changes from its source, keeping the
// newest it has room for, and resumes are served from them.
func TestFeedBackfill(t *testing.T) {
	changes := func(from, to int64) []kv.Change {
		var out []kv.Change
		for r := from; r <= to; r++ {
			out = append(out, kv.Change{Op: kv.OpPut, Key: fmt.Sprintf("k%d", r), Revision: r})
		}
		return out
	}
	revs := func(cs []*kv.Change) []int64 {
		var out []int64
		for _, c := range cs {
			out = append(out, c.Revision)
		}
		return out
	}
	all := patterns(t, "**")
	f := kv.NewFeed(15, 8, 10)
	f.Publish(changes(11, 20), 20)
	if got := f.Floor(); got != 10 {
		t.Fatalf("floor = %d, want 10", got)
	}
	f.Backfill(changes(5, 9), 4, 9) // not the floor: ignored
	if got := f.Floor(); got != 10 {
		t.Fatalf("floor after a backfill to the wrong revision = %d, want 10", got)
	}
	f.Backfill(changes(3, 10), 2, 10) // 18 changes in all: the oldest 3 do not fit
	if got := f.Floor(); got != 5 {
		t.Fatalf("floor after backfill = %d, want 5", got)
	}
	sub, snap, err := f.Subscribe(kv.WatchOptions{Patterns: all, Resume: true, From: 5})
	if err != nil || snap || sub.Reset != "" {
		t.Fatalf("resume from 5: err %v, snapshot %v, reset %q", err, snap, sub.Reset)
	}
	if diff := cmp.Diff(revs(changesPtrs(changes(6, 20))), revs(sub.Replay)); diff != "" {
		t.Errorf("replay from 5 (-want +got):\n%s", diff)
	}
	sub, _, _ = f.Subscribe(kv.WatchOptions{Patterns: all, Resume: true, From: 4})
	if sub.Reset != "history" {
		t.Errorf("resume from 4: reset %q, want history", sub.Reset)
	}
	f.Publish(changes(21, 21), 21) // the ring goes on from the backfilled state
	sub, _, _ = f.Subscribe(kv.WatchOptions{Patterns: all, Resume: true, From: 6})
	if diff := cmp.Diff(revs(changesPtrs(changes(7, 21))), revs(sub.Replay)); diff != "" || sub.Reset != "" {
		t.Errorf("replay from 6 after one more change, reset %q (-want +got):\n%s", sub.Reset, diff)
	}
}

func changesPtrs(cs []kv.Change) []*kv.Change {
	out := make([]*kv.Change, len(cs))
	for i := range cs {
		out[i] = &cs[i]
	}
	return out
}
