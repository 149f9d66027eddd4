package kv_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"golang.org/x/sync/errgroup"

	"kvsse/kv"
	"kvsse/kv/wal"
)

// equateEmpty treats nil and empty values alike: a value read back from
// the log is empty, never nil.
var equateEmpty = cmpopts.EquateEmpty()

// open opens a store that the test closes at its end.
func open(t testing.TB, opts kv.Options) *kv.Store {
	t.Helper()
	s, err := kv.Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// closeStore closes s before the end of the test, to open its directory
// again or to look at the files it leaves.
func closeStore(t testing.TB, s *kv.Store) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func put(t testing.TB, s *kv.Store, key, value string) kv.Result {
	t.Helper()
	r, err := s.Put(context.Background(), key, []byte(value), kv.PutOptions{})
	if err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
	return r
}

func del(t testing.TB, s *kv.Store, key string) kv.Result {
	t.Helper()
	r, err := s.Delete(context.Background(), key, kv.Cond{})
	if err != nil {
		t.Fatalf("Delete(%q): %v", key, err)
	}
	return r
}

// listAll returns every entry of the store, read in one page.
func listAll(t testing.TB, s *kv.Store) kv.Page {
	t.Helper()
	p, err := s.List(context.Background(), "", "", 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// clock is an injectable clock for Options.Now.
type clock struct {
	mu  sync.Mutex // guards now
	now time.Time
}

func newClock(now time.Time) *clock { return &clock{now: now} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestPutGetDelete(t *testing.T) {
	ctx := context.Background()
	s := open(t, kv.Options{})
	if s.Revision() != 0 {
		t.Fatalf("a new store is at revision %d", s.Revision())
	}

	r, err := s.Put(ctx, "config/a", []byte("on"), kv.PutOptions{ContentType: "text/plain"})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(kv.Result{Revision: 1}, r); diff != "" || !r.Created() {
		t.Errorf("first Put = %+v, Created %v (-want +got):\n%s", r, r.Created(), diff)
	}
	e, err := s.Get(ctx, "config/a")
	if err != nil {
		t.Fatal(err)
	}
	want := kv.Entry{Key: "config/a", Value: []byte("on"), ContentType: "text/plain", Revision: 1}
	if diff := cmp.Diff(want, e); diff != "" {
		t.Errorf("Get (-want +got):\n%s", diff)
	}

	r, err = s.Put(ctx, "config/a", []byte("off"), kv.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(kv.Result{Revision: 2, PrevRevision: 1}, r); diff != "" || r.Created() {
		t.Errorf("second Put = %+v, Created %v (-want +got):\n%s", r, r.Created(), diff)
	}
	e, err = s.Get(ctx, "config/a")
	if err != nil {
		t.Fatal(err)
	}
	want = kv.Entry{Key: "config/a", Value: []byte("off"), Revision: 2}
	if diff := cmp.Diff(want, e); diff != "" {
		t.Errorf("Get after replace (-want +got):\n%s", diff)
	}

	r, err = s.Delete(ctx, "config/a", kv.Cond{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(kv.Result{Revision: 3, PrevRevision: 2}, r); diff != "" {
		t.Errorf("Delete (-want +got):\n%s", diff)
	}
	if _, err := s.Get(ctx, "config/a"); !errors.Is(err, kv.ErrNotFound) {
		t.Errorf("Get after Delete: %v, want ErrNotFound", err)
	}
	if _, err := s.Delete(ctx, "config/a", kv.Cond{}); !errors.Is(err, kv.ErrNotFound) {
		t.Errorf("Delete of a missing key: %v, want ErrNotFound", err)
	}
	if _, err := s.Get(ctx, "never"); !errors.Is(err, kv.ErrNotFound) {
		t.Errorf("Get of a missing key: %v, want ErrNotFound", err)
	}
	if got := s.Revision(); got != 3 {
		t.Errorf("Revision = %d after 3 writes and failed ones", got)
	}
	if got := s.Stats().Writes.Load(); got != 3 {
		t.Errorf("Stats().Writes = %d, want 3", got)
	}
}

func TestPreconditions(t *testing.T) {
	const cur = 2 // "k" is at revision 2 when each case starts
	type write struct {
		del  bool
		key  string
		cond kv.Cond
	}
	tests := []struct {
		name    string
		w       write
		want    kv.Result         // when the write succeeds; zero when it fails
		wantErr error             // ErrNotFound, or nil
		con     *kv.ConflictError // when the precondition fails
	}{
		{name: "put IfAbsent on existing", w: write{key: "k", cond: kv.IfAbsent()}, con: &kv.ConflictError{Key: "k", Revision: cur}},
		{name: "put IfAbsent on missing", w: write{key: "m", cond: kv.IfAbsent()}, want: kv.Result{Revision: 3}},
		{name: "put IfExists on existing", w: write{key: "k", cond: kv.IfExists()}, want: kv.Result{Revision: 3, PrevRevision: cur}},
		{name: "put IfExists on missing", w: write{key: "m", cond: kv.IfExists()}, con: &kv.ConflictError{Key: "m"}},
		{name: "put IfRevision match", w: write{key: "k", cond: kv.IfRevision(cur)}, want: kv.Result{Revision: 3, PrevRevision: cur}},
		{name: "put IfRevision older", w: write{key: "k", cond: kv.IfRevision(cur - 1)}, con: &kv.ConflictError{Key: "k", Revision: cur}},
		{name: "put IfRevision newer", w: write{key: "k", cond: kv.IfRevision(cur + 1)}, con: &kv.ConflictError{Key: "k", Revision: cur}},
		{name: "put IfRevision missing", w: write{key: "m", cond: kv.IfRevision(1)}, con: &kv.ConflictError{Key: "m"}},
		{name: "put IfRevision negative", w: write{key: "k", cond: kv.IfRevision(-1)}, con: &kv.ConflictError{Key: "k", Revision: cur}},
		// "IfRevision holds when the key exists at revision rev": no key
		// is ever at revision 0.
		{name: "put IfRevision 0 on existing", w: write{key: "k", cond: kv.IfRevision(0)}, con: &kv.ConflictError{Key: "k", Revision: cur}},
		{name: "put IfRevision 0 on missing", w: write{key: "m", cond: kv.IfRevision(0)}, con: &kv.ConflictError{Key: "m"}},
		{name: "put no condition", w: write{key: "k"}, want: kv.Result{Revision: 3, PrevRevision: cur}},
		{name: "delete IfRevision match", w: write{del: true, key: "k", cond: kv.IfRevision(cur)}, want: kv.Result{Revision: 3, PrevRevision: cur}},
		{name: "delete IfRevision mismatch", w: write{del: true, key: "k", cond: kv.IfRevision(1)}, con: &kv.ConflictError{Key: "k", Revision: cur}},
		{name: "delete IfRevision missing", w: write{del: true, key: "m", cond: kv.IfRevision(1)}, con: &kv.ConflictError{Key: "m"}},
		{name: "delete IfExists on existing", w: write{del: true, key: "k", cond: kv.IfExists()}, want: kv.Result{Revision: 3, PrevRevision: cur}},
		{name: "delete IfExists on missing", w: write{del: true, key: "m", cond: kv.IfExists()}, con: &kv.ConflictError{Key: "m"}},
		{name: "delete IfAbsent on existing", w: write{del: true, key: "k", cond: kv.IfAbsent()}, con: &kv.ConflictError{Key: "k", Revision: cur}},
		{name: "delete missing", w: write{del: true, key: "m"}, wantErr: kv.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			s := open(t, kv.Options{})
			put(t, s, "k", "1")
			put(t, s, "k", "2")
			var r kv.Result
			var err error
			if tt.w.del {
				r, err = s.Delete(ctx, tt.w.key, tt.w.cond)
			} else {
				r, err = s.Put(ctx, tt.w.key, []byte("new"), kv.PutOptions{Cond: tt.w.cond})
			}
			switch {
			case tt.con != nil:
				var con *kv.ConflictError
				if !errors.As(err, &con) {
					t.Fatalf("error = %v, want a *ConflictError", err)
				}
				if diff := cmp.Diff(tt.con, con); diff != "" {
					t.Errorf("ConflictError (-want +got):\n%s", diff)
				}
				if !errors.Is(err, kv.ErrPrecondition) {
					t.Errorf("errors.Is(%v, ErrPrecondition) = false", err)
				}
			case !errors.Is(err, tt.wantErr): // errors.Is(err, nil) is err == nil
				t.Fatalf("error = %v, want %v", err, tt.wantErr)
			default:
				if diff := cmp.Diff(tt.want, r); diff != "" {
					t.Errorf("Result (-want +got):\n%s", diff)
				}
			}
			wantRev := int64(cur)
			if err == nil {
				wantRev++
			}
			if got := s.Revision(); got != wantRev {
				t.Errorf("Revision = %d after the write, want %d: only a successful write takes a revision", got, wantRev)
			}
		})
	}
}

func TestInvalidKeys(t *testing.T) {
	ctx := context.Background()
	s := open(t, kv.Options{})
	for _, key := range []string{"", "/a", "a/", "a//b", "a/./b", "..", "a*", "a\x00b", "a\nb", "\xff", strings.Repeat("k", 1025)} {
		t.Run(strconv.Quote(key), func(t *testing.T) {
			if _, err := s.Put(ctx, key, []byte("v"), kv.PutOptions{}); !errors.Is(err, kv.ErrInvalidKey) {
				t.Errorf("Put: %v, want ErrInvalidKey", err)
			}
			if _, err := s.Get(ctx, key); !errors.Is(err, kv.ErrInvalidKey) {
				t.Errorf("Get: %v, want ErrInvalidKey", err)
			}
			if _, err := s.Delete(ctx, key, kv.Cond{}); !errors.Is(err, kv.ErrInvalidKey) {
				t.Errorf("Delete: %v, want ErrInvalidKey", err)
			}
		})
	}
	if s.Revision() != 0 {
		t.Errorf("invalid writes moved the revision to %d", s.Revision())
	}
}

func TestRevisionsIncreaseByOne(t *testing.T) {
	ctx := context.Background()
	s := open(t, kv.Options{})
	rng := rand.New(rand.NewPCG(7, 7))
	var last int64
	for i := range 300 {
		key := fmt.Sprintf("k/%d", rng.IntN(10))
		var r kv.Result
		var err error
		switch rng.IntN(4) {
		case 0:
			r, err = s.Delete(ctx, key, kv.Cond{})
		case 1:
			r, err = s.Put(ctx, key, []byte("v"), kv.PutOptions{Cond: kv.IfAbsent()})
		default:
			r, err = s.Put(ctx, key, []byte(strconv.Itoa(i)), kv.PutOptions{})
		}
		if err != nil {
			if !errors.Is(err, kv.ErrNotFound) && !errors.Is(err, kv.ErrPrecondition) {
				t.Fatal(err)
			}
			if s.Revision() != last {
				t.Fatalf("a failed write moved the revision from %d to %d", last, s.Revision())
			}
			continue
		}
		if r.Revision != last+1 || s.Revision() != r.Revision {
			t.Fatalf("write %d took revision %d (store at %d) after %d", i, r.Revision, s.Revision(), last)
		}
		last = r.Revision
	}
}

// TestList checks paging: walking the pages of a prefix with after = the
// previous Next yields every matching key exactly once, in byte order.
func TestList(t *testing.T) {
	ctx := context.Background()
	s := open(t, kv.Options{})
	rng := rand.New(rand.NewPCG(1, 2))
	segs := []string{"a", "b", "ab", "a-b", "é", "z", "A", "0", "a b"}
	keys := map[string]bool{}
	for len(keys) < 400 {
		n := 1 + rng.IntN(3)
		parts := make([]string, n)
		for i := range parts {
			parts[i] = segs[rng.IntN(len(segs))]
		}
		keys[strings.Join(parts, "/")] = true
	}
	sorted := slices.Sorted(func(yield func(string) bool) {
		for k := range keys {
			if !yield(k) {
				return
			}
		}
	})
	for _, k := range sorted {
		put(t, s, k, "v:"+k)
	}
	// Deleted keys are gone from listings.
	for _, k := range sorted[:40] {
		del(t, s, k)
		delete(keys, k)
	}
	sorted = sorted[40:]

	prefixes := []string{"", "a", "a/", "a/b", "ab/", "é", "z/z/", "zz", "\x7f"}
	afters := []string{"", "a", "a/b/", "b", "m", "a/\xff"}
	for _, prefix := range prefixes {
		for _, after := range afters {
			for _, limit := range []int{1, 3, 17, 1000} {
				name := fmt.Sprintf("prefix=%q,after=%q,limit=%d", prefix, after, limit)
				t.Run(name, func(t *testing.T) {
					var want []string
					for _, k := range sorted {
						if strings.HasPrefix(k, prefix) && k > after {
							want = append(want, k)
						}
					}
					var got []string
					pages := 0
					for next := after; ; {
						p, err := s.List(ctx, prefix, next, limit)
						if err != nil {
							t.Fatal(err)
						}
						pages++
						if p.Revision != s.Revision() {
							t.Errorf("page Revision = %d, store at %d", p.Revision, s.Revision())
						}
						if len(p.Items) > limit {
							t.Fatalf("page of %d items, limit %d", len(p.Items), limit)
						}
						for _, e := range p.Items {
							got = append(got, e.Key)
							if string(e.Value) != "v:"+e.Key {
								t.Errorf("%s = %q", e.Key, e.Value)
							}
						}
						if p.Next == "" {
							break
						}
						if len(p.Items) == 0 || p.Next != p.Items[len(p.Items)-1].Key {
							t.Fatalf("Next = %q, not the page's last key", p.Next)
						}
						next = p.Next
						if pages > len(sorted)+1 {
							t.Fatal("paging does not end")
						}
					}
					if diff := cmp.Diff(want, got); diff != "" {
						t.Errorf("keys over all pages (-want +got):\n%s", diff)
					}
					if want := max(1, (len(want)+limit-1)/limit); pages != want {
						t.Errorf("%d pages, want %d: the last page must have no Next", pages, want)
					}
				})
			}
		}
	}
}

// TestListLimitZero: a limit of 0 or less lists every key, as documented.
func TestListLimitZero(t *testing.T) {
	s := open(t, kv.Options{})
	put(t, s, "a", "1")
	put(t, s, "b", "2")
	for _, limit := range []int{0, -1} {
		t.Run(strconv.Itoa(limit), func(t *testing.T) {
			p, err := s.List(context.Background(), "", "", limit)
			if err != nil || len(p.Items) != 2 || p.Next != "" {
				t.Errorf("List with limit %d: %d items, next %q, err %v; want all 2", limit, len(p.Items), p.Next, err)
			}
		})
	}
}

// ttlStore opens a store on a clock that runs ahead of real time, so the
// committer's timer (set with time.Until) never fires during the test: an
// expiry is committed only when the next write comes, and the test sees
// the state in between. sub watches every key.
func ttlStore(t *testing.T) (*kv.Store, *clock, *kv.Subscription) {
	t.Helper()
	clk := newClock(time.Now().Add(24 * time.Hour))
	s := open(t, kv.Options{Now: clk.Now})
	sub := watch(t, s, kv.WatchOptions{Patterns: patterns(t, "**")})
	return s, clk, sub
}

func TestTTL(t *testing.T) {
	ctx := context.Background()
	s, clk, sub := ttlStore(t)

	r, err := s.Put(ctx, "session/1", []byte("x"), kv.PutOptions{TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	e, err := s.Get(ctx, "session/1")
	if err != nil {
		t.Fatal(err)
	}
	if want := clk.Now().Add(time.Minute).UnixNano(); e.Expires != want {
		t.Errorf("Expires = %d, want %d", e.Expires, want)
	}
	put(t, s, "other", "y")

	clk.Advance(time.Minute)
	rev := s.Revision()
	if _, err := s.Get(ctx, "session/1"); !errors.Is(err, kv.ErrNotFound) {
		t.Errorf("Get of an expired key: %v, want ErrNotFound", err)
	}
	if p := listAll(t, s); len(p.Items) != 1 || p.Items[0].Key != "other" {
		t.Errorf("List shows %v, want only the key that did not expire", keysOf(p.Items))
	}
	snap := watch(t, s, kv.WatchOptions{Patterns: patterns(t, "**"), Snapshot: true})
	if got := keysOf(snap.Snapshot); !slices.Equal(got, []string{"other"}) {
		t.Errorf("a snapshot shows %v, want only the key that did not expire", got)
	}
	snap.Cancel()
	if s.Revision() != rev {
		t.Fatalf("the expiry was committed without a write; the test cannot see the moment before it")
	}

	// The next write commits the expiry first.
	put(t, s, "other", "z")
	want := []change{
		{Op: kv.OpPut, Key: "session/1", Value: "x", Revision: r.Revision},
		{Op: kv.OpPut, Key: "other", Value: "y", Revision: r.Revision + 1},
		{Op: kv.OpExpire, Key: "session/1", Revision: r.Revision + 2, PrevRevision: r.Revision, Reason: "expired"},
		{Op: kv.OpPut, Key: "other", Value: "z", Revision: r.Revision + 3, PrevRevision: r.Revision + 1},
	}
	got := receive(t, sub, len(want))
	want[0].Expires = e.Expires
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
	if s.Revision() != rev+2 {
		t.Errorf("Revision = %d, want %d: the expiry takes a revision of its own", s.Revision(), rev+2)
	}
	if got := s.Stats().Writes.Load(); got != 4 {
		t.Errorf("Stats().Writes = %d, want 4 (expiries count)", got)
	}
}

func TestTTLPutOnExpiredKey(t *testing.T) {
	ctx := context.Background()
	s, clk, sub := ttlStore(t)
	if _, err := s.Put(ctx, "k", []byte("old"), kv.PutOptions{TTL: time.Second}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Hour)
	r, err := s.Put(ctx, "k", []byte("new"), kv.PutOptions{Cond: kv.IfAbsent()})
	if err != nil {
		t.Fatalf("IfAbsent on an expired key: %v", err)
	}
	if diff := cmp.Diff(kv.Result{Revision: 3}, r); diff != "" || !r.Created() {
		t.Errorf("Put on an expired key = %+v (-want +got):\n%s", r, diff)
	}
	got := receive(t, sub, 3)
	want := []change{
		{Op: kv.OpPut, Key: "k", Value: "old", Revision: 1, Expires: got[0].Expires},
		{Op: kv.OpExpire, Key: "k", Revision: 2, PrevRevision: 1, Reason: "expired"},
		{Op: kv.OpPut, Key: "k", Value: "new", Revision: 3},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
	// The old expiry must not delete the new key later.
	clk.Advance(time.Hour)
	put(t, s, "other", "x")
	if _, err := s.Get(ctx, "k"); err != nil {
		t.Errorf("Get of the new key: %v", err)
	}
}

func TestTTLClearedByPut(t *testing.T) {
	ctx := context.Background()
	clk := newClock(time.Now().Add(24 * time.Hour))
	s := open(t, kv.Options{Now: clk.Now})
	if _, err := s.Put(ctx, "k", []byte("1"), kv.PutOptions{TTL: time.Second}); err != nil {
		t.Fatal(err)
	}
	put(t, s, "k", "2")
	clk.Advance(time.Hour)
	put(t, s, "other", "x")
	e, err := s.Get(ctx, "k")
	if err != nil {
		t.Fatalf("a Put without TTL did not clear the TTL: %v", err)
	}
	if e.Expires != 0 || s.Revision() != 3 {
		t.Errorf("Expires = %d, Revision = %d; want 0 and 3", e.Expires, s.Revision())
	}
}

// TestTTLFiresWithoutWrites checks that the committer expires keys by
// itself. The committer sets its timer with time.Until on the injected
// time, so a key whose expiry lies in the real past is due at once.
func TestTTLFiresWithoutWrites(t *testing.T) {
	ctx := context.Background()
	start := time.Now()
	clk := newClock(start)
	s := open(t, kv.Options{Now: clk.Now})
	sub := watch(t, s, kv.WatchOptions{Patterns: patterns(t, "**")})
	if _, err := s.Put(ctx, "k", []byte("v"), kv.PutOptions{TTL: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Millisecond)
	got := receive(t, sub, 2)
	want := []change{
		{Op: kv.OpPut, Key: "k", Value: "v", Revision: 1, Expires: start.Add(time.Millisecond).UnixNano()},
		{Op: kv.OpExpire, Key: "k", Revision: 2, PrevRevision: 1, Reason: "expired"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
}

// TestTTLIdleWithClockBehind: with Options.Now behind real time, a
// pending expiry that is due in real time but not yet on the store's clock
// must leave the committer idle. It sets its timer with time.Until (real
// time) on the injected time, so the timer fires at once, nothing is due,
// and it sets the timer again: a busy loop, seen here as calls to Now.
func TestTTLIdleWithClockBehind(t *testing.T) {
	const budget = 100 * time.Millisecond
	var calls atomic.Int64
	behind := time.Now().Add(-time.Hour)
	s := open(t, kv.Options{Now: func() time.Time { calls.Add(1); return behind }})
	if _, err := s.Put(context.Background(), "k", []byte("v"), kv.PutOptions{TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	start := calls.Load()
	time.Sleep(budget)
	if n := calls.Load() - start; n > 1000 {
		t.Fatalf("the committer called Now %d times in %v with nothing to do: it spins until the injected clock reaches the expiry", n, budget)
	}
}

func TestTTLAfterReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	clk := newClock(time.Now().Add(24 * time.Hour))
	s, err := kv.Open(kv.Options{Dir: dir, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "k", []byte("v"), kv.PutOptions{TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	closeStore(t, s)
	clk.Advance(time.Hour)
	s = open(t, kv.Options{Dir: dir, Now: clk.Now})
	if _, err := s.Get(ctx, "k"); !errors.Is(err, kv.ErrNotFound) {
		t.Errorf("Get of a key that expired while the store was closed: %v", err)
	}
	// The expiry may be committed before or after the watch starts: resume
	// from the last revision before the reopen to see it either way.
	sub := watch(t, s, kv.WatchOptions{Patterns: patterns(t, "**"), Resume: true, From: 1})
	put(t, s, "other", "x")
	got := append(changesOf(sub.Replay), receive(t, sub, 2-len(sub.Replay))...)
	want := []change{
		{Op: kv.OpExpire, Key: "k", Revision: 2, PrevRevision: 1, Reason: "expired"},
		{Op: kv.OpPut, Key: "other", Value: "x", Revision: 3},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("changes after reopen (-want +got):\n%s", diff)
	}
}

// TestGroupCommit runs many concurrent writers on a store that fsyncs
// every batch, and checks that they share fsyncs and that everything they
// were told is durable is there after a reopen.
func TestGroupCommit(t *testing.T) {
	const writers, each = 64, 50
	dir := t.TempDir()
	s, err := kv.Open(kv.Options{Dir: dir, Sync: kv.SyncAlways})
	if err != nil {
		t.Fatal(err)
	}
	var puts errgroup.Group
	for w := range writers {
		puts.Go(func() error {
			for i := range each {
				key := fmt.Sprintf("w%02d/%02d", w, i)
				if _, err := s.Put(context.Background(), key, []byte(key), kv.PutOptions{}); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := puts.Wait(); err != nil {
		t.Fatal(err)
	}
	const writes = writers * each
	st := s.Stats()
	fsyncs := st.Fsyncs.Load()
	t.Logf("%d writes, %d fsyncs (%.1f writes per fsync, ratio %.3f), %v in fsync",
		writes, fsyncs, float64(writes)/float64(fsyncs), float64(fsyncs)/writes, time.Duration(st.FsyncNanos.Load()))
	if fsyncs >= writes/2 {
		t.Errorf("%d fsyncs for %d writes: writes do not share fsyncs", fsyncs, writes)
	}
	if fsyncs == 0 {
		t.Errorf("no fsync counted with SyncAlways")
	}
	if got := st.Writes.Load(); got != writes {
		t.Errorf("Stats().Writes = %d, want %d", got, writes)
	}
	if s.Revision() != writes {
		t.Errorf("Revision = %d, want %d", s.Revision(), writes)
	}
	before := listAll(t, s)
	closeStore(t, s)

	s = open(t, kv.Options{Dir: dir})
	if s.Revision() != writes {
		t.Errorf("Revision after reopen = %d, want %d", s.Revision(), writes)
	}
	after := listAll(t, s)
	if len(after.Items) != writes {
		t.Errorf("%d keys after reopen, want %d", len(after.Items), writes)
	}
	if diff := cmp.Diff(before, after, equateEmpty); diff != "" {
		t.Errorf("state after reopen (-before +after):\n%s", diff)
	}
}

// TestStatsBatches checks the Batches counter ("group commits") against
// what the writes did: at least one batch, never more than writes.
func TestStatsBatches(t *testing.T) {
	s := open(t, kv.Options{Dir: t.TempDir()})
	for i := range 10 {
		put(t, s, fmt.Sprintf("k%d", i), "v")
	}
	st := s.Stats()
	batches, writes, fsyncs := st.Batches.Load(), st.Writes.Load(), st.Fsyncs.Load()
	if batches < 1 || batches > writes {
		t.Errorf("Stats().Batches = %d after %d sequential writes (%d fsyncs), want 1..%d", batches, writes, fsyncs, writes)
	}
	if fsyncs > batches {
		t.Errorf("%d fsyncs but %d batches: each batch is one fsync", fsyncs, batches)
	}
}

// TestCASRace runs read-modify-write increments with IfRevision retries
// from many goroutines: none is lost.
func TestCASRace(t *testing.T) {
	const n = 100
	ctx := context.Background()
	s := open(t, kv.Options{})
	var conflicts atomic.Int64
	var increments errgroup.Group
	for range n {
		increments.Go(func() error {
			for {
				cond, v := kv.IfAbsent(), 0
				e, err := s.Get(ctx, "counter")
				switch {
				case err == nil:
					cond = kv.IfRevision(e.Revision)
					if v, err = strconv.Atoi(string(e.Value)); err != nil {
						return err
					}
				case !errors.Is(err, kv.ErrNotFound):
					return err
				}
				_, err = s.Put(ctx, "counter", []byte(strconv.Itoa(v+1)), kv.PutOptions{Cond: cond})
				if errors.Is(err, kv.ErrPrecondition) {
					conflicts.Add(1)
					continue
				}
				return err
			}
		})
	}
	if err := increments.Wait(); err != nil {
		t.Fatal(err)
	}
	e, err := s.Get(ctx, "counter")
	if err != nil {
		t.Fatal(err)
	}
	if string(e.Value) != strconv.Itoa(n) || e.Revision != n || s.Revision() != n {
		t.Errorf("counter = %s at revision %d (store at %d), want %d at %d", e.Value, e.Revision, s.Revision(), n, n)
	}
	t.Logf("%d conflicts retried", conflicts.Load())
}

func TestClose(t *testing.T) {
	ctx := context.Background()
	s, err := kv.Open(kv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	sub := watch(t, s, kv.WatchOptions{Patterns: patterns(t, "**")})
	put(t, s, "k", "v")
	for i := range 2 {
		if err := s.Close(); err != nil {
			t.Errorf("Close #%d: %v", i+1, err)
		}
	}
	if _, err := s.Put(ctx, "k", []byte("v"), kv.PutOptions{}); !errors.Is(err, kv.ErrClosed) {
		t.Errorf("Put after Close: %v, want ErrClosed", err)
	}
	if _, err := s.Delete(ctx, "k", kv.Cond{}); !errors.Is(err, kv.ErrClosed) {
		t.Errorf("Delete after Close: %v, want ErrClosed", err)
	}
	if _, err := s.Watch(kv.WatchOptions{Patterns: patterns(t, "**")}); !errors.Is(err, kv.ErrClosed) {
		t.Errorf("Watch after Close: %v, want ErrClosed", err)
	}
	if c, _ := sub.Next(context.Background()); c == nil || c.Key != "k" {
		t.Errorf("the change before Close is lost: %v", c)
	}
	if _, ok := sub.Next(context.Background()); ok {
		t.Error("Close left a subscription open")
	}
	if sub.Lagged() {
		t.Error("a subscription ended by Close reports Lagged")
	}
	sub.Cancel() // after Close: no panic
}

// TestCloseDuringWrites closes a durable store under load: every write
// either was acknowledged, and then survives a reopen, or failed with
// ErrClosed and left no trace.
func TestCloseDuringWrites(t *testing.T) {
	const writers = 8
	dir := t.TempDir()
	s, err := kv.Open(kv.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	type outcome struct {
		acked []string
		err   error
	}
	out := make(chan outcome, writers)
	var started sync.WaitGroup
	started.Add(writers)
	for w := range writers {
		go func() {
			var o outcome
			for i := 0; ; i++ {
				key := fmt.Sprintf("w%d/%d", w, i)
				_, err := s.Put(context.Background(), key, []byte("v"), kv.PutOptions{})
				if i == 0 {
					started.Done()
				}
				if errors.Is(err, kv.ErrClosed) {
					break
				}
				if err != nil {
					o.err = err
					break
				}
				o.acked = append(o.acked, key)
			}
			out <- o
		}()
	}
	started.Wait()
	closeStore(t, s)
	var acked []string
	for range writers {
		o := <-out
		if o.err != nil {
			t.Fatalf("a write failed with %v, want success or ErrClosed", o.err)
		}
		acked = append(acked, o.acked...)
	}
	slices.Sort(acked)

	s = open(t, kv.Options{Dir: dir})
	got := keysOf(listAll(t, s).Items)
	if diff := cmp.Diff(acked, got); diff != "" {
		t.Errorf("keys after reopen (-acknowledged +found):\n%s", diff)
	}
	if s.Revision() != int64(len(acked)) {
		t.Errorf("Revision after reopen = %d, want %d", s.Revision(), len(acked))
	}
}

// TestCancelledContext: a write whose context ended before the call is
// not handed to the committer: it fails with the context's error and
// changes nothing. One try could pass by luck, so it tries many times.
func TestCancelledContext(t *testing.T) {
	s := open(t, kv.Options{})
	put(t, s, "existing", "v")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for i := range 200 {
		if _, err := s.Put(ctx, fmt.Sprintf("k%d", i), []byte("v"), kv.PutOptions{}); !errors.Is(err, context.Canceled) {
			t.Fatalf("Put #%d with a cancelled context: %v, want context.Canceled", i, err)
		}
		if _, err := s.Delete(ctx, "existing", kv.Cond{}); !errors.Is(err, context.Canceled) {
			t.Fatalf("Delete #%d with a cancelled context: %v, want context.Canceled", i, err)
		}
	}
	if s.Revision() != 1 {
		t.Errorf("Revision = %d: writes with a cancelled context were committed", s.Revision())
	}
}

func TestOpenLockedDir(t *testing.T) {
	dir := t.TempDir()
	open(t, kv.Options{Dir: dir})
	if s, err := kv.Open(kv.Options{Dir: dir}); err == nil {
		s.Close()
		t.Fatal("a second store opened the same dir")
	} else if !strings.Contains(err.Error(), "in use") {
		t.Errorf("second Open: %v, want it to say the dir is in use", err)
	}
}

// writeKeys writes keys k0..k<n-1> into a store in dir, closes it, and
// returns what it held and the path of its only log segment.
func writeKeys(t *testing.T, dir string, n int) (kv.Page, string) {
	t.Helper()
	s, err := kv.Open(kv.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		put(t, s, fmt.Sprintf("k%d", i), "v")
	}
	held := listAll(t, s)
	closeStore(t, s)
	files, err := wal.List(dir)
	if err != nil || len(files.Segments) != 1 {
		t.Fatalf("List = %+v, %v; want one segment", files, err)
	}
	return held, wal.SegmentPath(dir, files.Segments[0])
}

// TestReopenCutsTornTail appends half a record to the log, as a crash in
// the middle of a write would leave it: the store opens with everything
// before it, and appends after it.
func TestReopenCutsTornTail(t *testing.T) {
	dir := t.TempDir()
	want, path := writeKeys(t, dir, 5)
	torn := wal.Append(nil, &wal.Record{Op: wal.OpPut, Rev: 6, Key: []byte("torn"), Value: []byte("value")})
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(torn[:len(torn)-3]); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	s, err := kv.Open(kv.Options{Dir: dir})
	if err != nil {
		t.Fatalf("Open with a torn tail: %v", err)
	}
	if diff := cmp.Diff(want, listAll(t, s), equateEmpty); diff != "" {
		t.Errorf("state (-want +got):\n%s", diff)
	}
	put(t, s, "after", "v")
	closeStore(t, s)
	s = open(t, kv.Options{Dir: dir})
	if s.Revision() != 6 {
		t.Errorf("Revision = %d, want 6", s.Revision())
	}
	if _, err := s.Get(context.Background(), "after"); err != nil {
		t.Errorf("the write after the cut is lost: %v", err)
	}
}

// TestReopenCutsUncommittedBatch appends whole records without the commit
// marker that ends their batch, as a write that failed half way, or a crash
// before the marker reached the disk, leaves them: they were never
// acknowledged, so the store opens without them, says so in its log, and
// gives their revisions to the next writes.
func TestReopenCutsUncommittedBatch(t *testing.T) {
	dir := t.TempDir()
	want, path := writeKeys(t, dir, 5)
	var batch []byte
	for i, key := range []string{"k0", "uncommitted"} {
		batch = wal.Append(batch, &wal.Record{Op: wal.OpPut, Rev: int64(6 + i), Key: []byte(key), Value: []byte("refused")})
	}
	marker := wal.Append(nil, &wal.Record{Op: wal.OpCommit, Rev: 7})
	for _, tail := range [][]byte{batch, append(bytes.Clone(batch), marker[:len(marker)-1]...)} {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(tail); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		var logged bytes.Buffer
		s, err := kv.Open(kv.Options{Dir: dir, Logger: slog.New(slog.NewTextHandler(&logged, nil))})
		if err != nil {
			t.Fatalf("Open with an uncommitted batch at the end of the log: %v", err)
		}
		if diff := cmp.Diff(want, listAll(t, s), equateEmpty); diff != "" {
			t.Errorf("state (-want +got):\n%s", diff)
		}
		if line := logged.String(); !strings.Contains(line, "uncommitted_records=2") {
			t.Errorf("the log says %q, want a line on the 2 uncommitted records cut off", line)
		}
		closeStore(t, s)
	}
	s := open(t, kv.Options{Dir: dir})
	if r := put(t, s, "after", "v"); r.Revision != 6 {
		t.Errorf("the first write after the cut took revision %d, want 6", r.Revision)
	}
}

// TestOpenFormat1Log opens a data directory whose log is of format 1,
// without commit markers, and with a torn last record: every whole record
// counts, the torn one is cut off, and new writes go to a new segment of
// the current format, so that both read back after a restart.
func TestOpenFormat1Log(t *testing.T) {
	dir := t.TempDir()
	old := wal.SegmentPath(dir, 1)
	data := append([]byte(nil), wal.LogMagicV1[:]...)
	records := []wal.Record{
		{Op: wal.OpPut, Rev: 1, Key: []byte("a"), ContentType: []byte("text/plain"), Value: []byte("1")},
		{Op: wal.OpPut, Rev: 2, Key: []byte("b"), Value: []byte("2")},
		{Op: wal.OpDelete, Rev: 3, PrevRev: 1, Key: []byte("a")},
		{Op: wal.OpPut, Rev: 4, Key: []byte("torn"), Value: []byte("torn")},
	}
	for i := range records {
		data = wal.Append(data, &records[i])
	}
	if err := os.WriteFile(old, data[:len(data)-3], 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := kv.Open(kv.Options{Dir: dir})
	if err != nil {
		t.Fatalf("Open of a format 1 log: %v", err)
	}
	if s.Revision() != 3 || len(listAll(t, s).Items) != 1 {
		t.Fatalf("Revision %d and keys %v, want 3 and [b]", s.Revision(), keysOf(listAll(t, s).Items))
	}
	if r := put(t, s, "c", "3"); r.Revision != 4 {
		t.Errorf("the first write took revision %d, want 4", r.Revision)
	}
	want := listAll(t, s)
	closeStore(t, s)
	files, err := wal.List(dir)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(wal.Files{Segments: []int64{1, 4}}, files); diff != "" {
		t.Errorf("segments (-want +got):\n%s", diff)
	}
	for path, magic := range map[string][8]byte{old: wal.LogMagicV1, wal.SegmentPath(dir, 4): wal.LogMagic} {
		if b, err := os.ReadFile(path); err != nil || !bytes.HasPrefix(b, magic[:]) {
			t.Errorf("%s starts with %q (%v), want %q", path, b[:min(len(b), 8)], err, magic[:])
		}
	}
	s = open(t, kv.Options{Dir: dir})
	if diff := cmp.Diff(want, listAll(t, s), equateEmpty); diff != "" {
		t.Errorf("state after a restart (-want +got):\n%s", diff)
	}
}

// TestOpenFormat1EmptyLog: a format 1 segment that holds no record is
// replaced by the segment of the current format that takes its name.
func TestOpenFormat1EmptyLog(t *testing.T) {
	dir := t.TempDir()
	path := wal.SegmentPath(dir, 1)
	if err := os.WriteFile(path, wal.LogMagicV1[:], 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := kv.Open(kv.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	put(t, s, "a", "1")
	closeStore(t, s)
	if b, err := os.ReadFile(path); err != nil || !bytes.HasPrefix(b, wal.LogMagic[:]) {
		t.Errorf("%s starts with %q (%v), want %q", path, b[:min(len(b), 8)], err, wal.LogMagic[:])
	}
	s = open(t, kv.Options{Dir: dir})
	if _, err := s.Get(context.Background(), "a"); err != nil || s.Revision() != 1 {
		t.Errorf("after a restart: Get = %v, Revision %d; want the key at revision 1", err, s.Revision())
	}
}

// TestReopenRefusesDamageBeforeTail damages an acknowledged record in the
// middle of the log and zeroes the tail after the last one. The records
// after the damaged one are whole: the store must refuse to open rather
// than cut the log at the damage and lose them.
func TestReopenRefusesDamageBeforeTail(t *testing.T) {
	dir := t.TempDir()
	_, path := writeKeys(t, dir, 10)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	off := len(wal.LogMagic)
	for range 6 { // skip to the fourth record: each write is a record and its commit marker
		_, n, err := wal.Decode(data[off:])
		if err != nil {
			t.Fatal(err)
		}
		off += n
	}
	data[off+wal.HeaderSize+2] ^= 0x01
	data = append(data, make([]byte, 64)...)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}

	s, err := kv.Open(kv.Options{Dir: dir})
	if err == nil {
		got := keysOf(listAll(t, s).Items)
		s.Close()
		t.Fatalf("Open succeeded with keys %v at revision %d: the whole records k4..k9 after the damaged k3 were cut off", got, s.Revision())
	}
	t.Logf("Open refused: %v", err)
}

// openWatched opens a store that the test closes itself, to reopen it,
// with a subscription to every key.
func openWatched(t *testing.T, opts kv.Options) (*kv.Store, *kv.Subscription) {
	t.Helper()
	s, err := kv.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	sub := watch(t, s, kv.WatchOptions{Patterns: patterns(t, "**")})
	return s, sub
}

// TestCompaction writes through many small segments and checks that the
// snapshot and the kept log give back the same state, revision and recent
// history after a reopen.
func TestCompaction(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := kv.Options{Dir: dir, CompactBytes: 2048, History: 50}
	s, sub := openWatched(t, opts)
	rng := rand.New(rand.NewPCG(3, 4))
	const writes = 600
	for i := range writes {
		key := fmt.Sprintf("key/%02d", rng.IntN(40))
		if rng.IntN(5) == 0 {
			if _, err := s.Delete(ctx, key, kv.Cond{}); err != nil && !errors.Is(err, kv.ErrNotFound) {
				t.Fatal(err)
			}
			continue
		}
		value := strings.Repeat(strconv.Itoa(i), 1+rng.IntN(8))
		if _, err := s.Put(ctx, key, []byte(value), kv.PutOptions{ContentType: "text/plain"}); err != nil {
			t.Fatal(err)
		}
	}
	rev := s.Revision()
	live := receive(t, sub, int(rev))
	before := listAll(t, s)
	closeStore(t, s) // waits for a running compaction
	compactions := s.Stats().Compactions.Load()
	if compactions == 0 {
		t.Fatalf("no compaction after %d writes with CompactBytes 2048", rev)
	}
	files, err := wal.List(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d writes, %d compactions, files left: %+v", rev, compactions, files)
	if len(files.Snapshots) != 1 || len(files.Segments) > 3 {
		t.Errorf("files left after compaction: %+v; want one snapshot and at most 3 segments", files)
	}

	s = open(t, opts)
	if s.Revision() != rev {
		t.Errorf("Revision after reopen = %d, want %d", s.Revision(), rev)
	}
	if diff := cmp.Diff(before, listAll(t, s), equateEmpty); diff != "" {
		t.Errorf("state after reopen (-before +after):\n%s", diff)
	}

	// The last History changes outlive the restart.
	from := rev - int64(opts.History)
	res := watch(t, s, kv.WatchOptions{Patterns: patterns(t, "**"), Resume: true, From: from})
	if res.Reset != "" {
		t.Fatalf("resume from %d after reopen: Reset %q, want a replay", from, res.Reset)
	}
	if diff := cmp.Diff(live[from:], changesOf(res.Replay)); diff != "" {
		t.Errorf("replay after reopen (-before close +after reopen):\n%s", diff)
	}
	// Old history is gone with the old segments: a resume from 0 is told.
	old := watch(t, s, kv.WatchOptions{Patterns: patterns(t, "**"), Resume: true, From: 0})
	if old.Reset != "history" {
		t.Errorf("resume from 0 after compaction: Reset %q, want history", old.Reset)
	}
	if diff := cmp.Diff(before.Items, old.Snapshot, equateEmpty); diff != "" {
		t.Errorf("snapshot of the reset (-want +got):\n%s", diff)
	}

	// Writes go on after the reopen, and the revision keeps counting.
	if r := put(t, s, "key/new", "v"); r.Revision != rev+1 {
		t.Errorf("first write after reopen took revision %d, want %d", r.Revision, rev+1)
	}
}

// backupAck is a write a writer of TestBackupDuringWrites had
// acknowledged: its key, its value (nil: deleted) and its revision.
type backupAck struct {
	key   string
	value []byte
	rev   int64
}

// TestBackupDuringWrites takes a backup while writers go on (with
// compactions), restores it, opens the restored store, and compares it
// with a model of the acknowledged writes at the backup's revision: it
// holds exactly them, goes on from that revision, answers a resume from
// before it with a reset, and Check agrees.
func TestBackupDuringWrites(t *testing.T) {
	ctx := context.Background()
	s := open(t, kv.Options{Dir: t.TempDir(), CompactBytes: 32 << 10})
	const writers, perWriter = 4, 400
	halfway := make(chan struct{})
	var writes errgroup.Group
	acks := make([][]backupAck, writers)
	var count atomic.Int64
	for w := range writers {
		writes.Go(func() error {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for i := range perWriter {
				if count.Add(1) == writers*perWriter/2 {
					close(halfway)
				}
				key := fmt.Sprintf("w%d/k%d", w, rng.IntN(40))
				if rng.IntN(4) == 0 {
					r, err := s.Delete(ctx, key, kv.Cond{})
					if err == nil {
						acks[w] = append(acks[w], backupAck{key: key, rev: r.Revision})
					} else if !errors.Is(err, kv.ErrNotFound) {
						return err
					}
					continue
				}
				v := []byte{byte(w), byte(i), 0xff, byte(i >> 8)} // not UTF-8
				r, err := s.Put(ctx, key, v, kv.PutOptions{ContentType: "x/" + strconv.Itoa(w)})
				if err != nil {
					return err
				}
				acks[w] = append(acks[w], backupAck{key: key, value: v, rev: r.Revision})
			}
			return nil
		})
	}
	<-halfway
	b := s.Backup()
	var file bytes.Buffer
	if _, err := b.WriteTo(&file); err != nil {
		t.Fatal(err)
	}
	if err := writes.Wait(); err != nil {
		t.Fatal(err)
	}
	if b.Revision <= 0 || b.Revision >= s.Revision() {
		t.Fatalf("backup at revision %d, the writes ended at %d: not taken while they went on", b.Revision, s.Revision())
	}

	// The model: each key's last acknowledged write at or before the
	// backup's revision.
	last := map[string]backupAck{}
	for _, as := range acks {
		for _, a := range as {
			if a.rev <= b.Revision && a.rev > last[a.key].rev {
				last[a.key] = a
			}
		}
	}
	var want []kv.Entry
	for _, a := range last {
		if a.value != nil {
			w, _ := strconv.Atoi(a.key[1:2])
			want = append(want, kv.Entry{Key: a.key, Value: a.value, ContentType: "x/" + strconv.Itoa(w), Revision: a.rev})
		}
	}
	slices.SortFunc(want, func(x, y kv.Entry) int { return strings.Compare(x.Key, y.Key) })

	dir := t.TempDir() + "/restored"
	rev, keys, err := kv.Restore(bytes.NewReader(file.Bytes()), dir)
	if err != nil || rev != b.Revision || keys != int64(len(want)) {
		t.Fatalf("Restore = %d, %d keys, %v; want %d, %d keys", rev, keys, err, b.Revision, len(want))
	}
	rep, err := kv.Check(dir)
	if err != nil || rep.Revision != rev || rep.Keys != keys || rep.Tail != nil {
		t.Fatalf("Check of the restored dir = %+v, %v", rep, err)
	}
	r := open(t, kv.Options{Dir: dir})
	if diff := cmp.Diff(kv.Page{Revision: rev, Items: want}, listAll(t, r), equateEmpty); diff != "" {
		t.Errorf("restored store (-want +got):\n%s", diff)
	}
	if res := put(t, r, "after", "v"); res.Revision != rev+1 {
		t.Errorf("first write after the restore took %d, want %d", res.Revision, rev+1)
	}
	for _, tt := range []struct {
		from  int64
		reset string
	}{{rev - 1, "history"}, {rev, ""}} {
		sub, err := r.Watch(kv.WatchOptions{Patterns: []kv.Pattern{mustPattern(t, "**")}, From: tt.from, Resume: true})
		if err != nil {
			t.Fatal(err)
		}
		if sub.Reset != tt.reset {
			t.Errorf("resume from %d: reset %q, want %q", tt.from, sub.Reset, tt.reset)
		}
		sub.Cancel()
	}
}

// TestRestoreRefuses: a directory that is not empty, a damaged or cut
// backup and a key that breaks the rules are refused, and nothing is left
// behind, beside the directory or in it.
func TestRestoreRefuses(t *testing.T) {
	s := open(t, kv.Options{})
	put(t, s, "a", "1")
	put(t, s, "b/c", "2")
	var file bytes.Buffer
	if _, err := s.Backup().WriteTo(&file); err != nil {
		t.Fatal(err)
	}
	good := file.Bytes()
	flipped := slices.Clone(good)
	flipped[len(flipped)/2] ^= 1
	var badKey bytes.Buffer
	if _, err := wal.WriteBackup(&badKey, 3, func(add func(*wal.Record) error) error {
		return add(&wal.Record{Op: wal.OpPut, Rev: 1, Key: []byte("a//b")})
	}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		data  []byte
		full  bool // the directory holds a file already
		match error
	}{
		{"not empty", good, true, kv.ErrNotEmpty},
		{"flipped byte", flipped, false, wal.ErrCorrupt},
		{"cut short", good[:len(good)-1], false, nil},
		{"invalid key", badKey.Bytes(), false, kv.ErrInvalidKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := t.TempDir()
			dir := parent + "/data"
			if tt.full {
				if err := os.Mkdir(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(dir+"/x", nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			_, _, err := kv.Restore(bytes.NewReader(tt.data), dir)
			var be *wal.BackupError
			if err == nil || tt.match != nil && !errors.Is(err, tt.match) || tt.match == nil && !errors.As(err, &be) {
				t.Fatalf("Restore = %v, want an error matching %v", err, tt.match)
			}
			ents, _ := os.ReadDir(parent)
			if want := map[bool]int{true: 1, false: 0}[tt.full]; len(ents) != want {
				t.Errorf("%d entries left beside the directory, want %d: %v", len(ents), want, ents)
			}
			if tt.full {
				if ents, _ := os.ReadDir(dir); len(ents) != 1 {
					t.Errorf("the directory holds %d files, want its 1", len(ents))
				}
			}
		})
	}
	if _, _, err := kv.Restore(bytes.NewReader(good), t.TempDir()); err != nil {
		t.Errorf("Restore into an empty directory: %v", err)
	}
}

// TestCheck reads a data directory, then one damaged in the middle of
// the log, in its last record, and one with a torn tail.
func TestCheck(t *testing.T) {
	_, path := writeKeys(t, t.TempDir(), 20)
	dir := path[:strings.LastIndex(path, "/")]
	rep, err := kv.Check(dir)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Revision != 20 || rep.Keys != 20 || rep.Bytes != 20 || len(rep.Files) != 1 || rep.Tail != nil {
		t.Errorf("Check = %+v, want revision 20, 20 keys of 1 byte, 1 file", rep)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		data   []byte
		offset string // the damage's offset in the error; "" for no error
		tail   bool
	}{
		{"middle", flipAt(data, len(data)/2), "offset", false},
		{"last record", flipAt(data, len(data)-3), "offset", true},
		{"torn tail", append(slices.Clone(data), data[8:20]...), "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := t.TempDir()
			if err := os.WriteFile(d+"/"+path[len(dir)+1:], tt.data, 0o644); err != nil {
				t.Fatal(err)
			}
			rep, err := kv.Check(d)
			switch {
			case tt.offset == "" && err != nil:
				t.Errorf("Check: %v", err)
			case tt.offset != "" && (err == nil || !strings.Contains(err.Error(), "wal-") || !strings.Contains(err.Error(), tt.offset)):
				t.Errorf("Check = %v, want an error naming the file and the offset", err)
			}
			if tt.tail && (rep == nil || rep.Tail == nil) {
				t.Errorf("Check found no tail: %+v", rep)
			}
			if after, err := os.ReadFile(d + "/" + path[len(dir)+1:]); err != nil || !bytes.Equal(after, tt.data) {
				t.Errorf("Check changed the segment (%v)", err)
			}
		})
	}
}

func flipAt(data []byte, i int) []byte {
	b := slices.Clone(data)
	b[i] ^= 0x40
	return b
}

// TestExport reads at one revision: the writes after Export returned are
// not in it, nor the keys past their expiry or outside the prefix.
func TestExport(t *testing.T) {
	c := newClock(time.Unix(1e9, 0))
	s := open(t, kv.Options{Now: c.Now})
	ctx := context.Background()
	put(t, s, "a/1", "x")
	put(t, s, "a/2", "y")
	put(t, s, "b", "z")
	if _, err := s.Put(ctx, "a/ttl", []byte("t"), kv.PutOptions{TTL: time.Second}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "a/live", []byte("l"), kv.PutOptions{TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	c.Advance(2 * time.Second)
	rev, entries, err := s.Export(ctx, "a/")
	if err != nil || rev != 5 {
		t.Fatalf("Export = %d, %v; want revision 5", rev, err)
	}
	put(t, s, "a/1", "changed")
	put(t, s, "a/3", "new")
	var got []string
	for e, err := range entries {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, e.Key+"="+string(e.Value))
	}
	if diff := cmp.Diff([]string{"a/1=x", "a/2=y", "a/live=l"}, got); diff != "" {
		t.Errorf("export (-want +got):\n%s", diff)
	}
}

// prevState is a change's previous value as the prev tests compare it.
type prevState struct {
	Rev         int64
	Known       bool
	Value, Type string
}

func prevStateOf(c *kv.Change) prevState {
	return prevState{Rev: c.Revision, Known: c.PrevValue != nil, Value: string(c.PrevValue), Type: c.PrevContentType}
}

// next returns the subscription's next n changes.
func next(t *testing.T, sub *kv.Subscription, n int) []*kv.Change {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	var out []*kv.Change
	for len(out) < n {
		c, ok := sub.Next(ctx)
		if !ok {
			t.Fatalf("got %d of %d changes (lagged: %v, %v)", len(out), n, sub.Lagged(), ctx.Err())
		}
		out = append(out, c)
	}
	return out
}

// sharesPrev checks that each change's previous value is the very value
// of the change before it of its key, when that change is in changes:
// previous values cost no copy.
func sharesPrev(t *testing.T, when string, changes []*kv.Change) {
	t.Helper()
	latest := map[string]*kv.Change{}
	shared := 0
	for _, c := range changes {
		if p := latest[c.Key]; p != nil && p.Op == kv.OpPut && len(p.Value) > 0 {
			if unsafe.SliceData(c.PrevValue) != unsafe.SliceData(p.Value) {
				t.Errorf("%s: the previous value of revision %d is a copy of revision %d's value", when, c.Revision, p.Revision)
			}
			shared++
		}
		latest[c.Key] = c
	}
	if shared == 0 {
		t.Errorf("%s: no change whose previous value could be shared", when)
	}
}

// TestPrevValues: every change of a key that had a value carries that
// value and its content type, shared with the entry it replaced: puts,
// deletes, expiries and the changes of a transaction, live and, after a
// restart, replayed from the log, also where compaction removed the
// segment that held the previous value.
func TestPrevValues(t *testing.T) {
	ctx := context.Background()
	clk := newClock(time.Now().Add(24 * time.Hour))
	dir := t.TempDir()
	opts := kv.Options{Dir: dir, Now: clk.Now, CompactBytes: 1024, History: 100}
	s, sub := openWatched(t, opts)
	type value struct{ v, ct string }
	model := map[string]value{}
	var want []prevState
	var rev int64
	// note records the change of key that takes the next revision.
	note := func(key string, after *value) {
		rev++
		p, ok := model[key]
		want = append(want, prevState{Rev: rev, Known: ok, Value: p.v, Type: p.ct})
		if after == nil {
			delete(model, key)
		} else {
			model[key] = *after
		}
	}
	write := func(key, v, ct string) {
		t.Helper()
		note(key, &value{v, ct})
		if _, err := s.Put(ctx, key, []byte(v), kv.PutOptions{ContentType: ct}); err != nil {
			t.Fatal(err)
		}
	}
	write("cold", "first", "text/plain")
	for i := range 250 {
		key := fmt.Sprintf("hot/%d", i%5)
		if _, ok := model[key]; ok && i%13 == 0 {
			note(key, nil)
			del(t, s, key)
			continue
		}
		write(key, strings.Repeat(strconv.Itoa(i), 5), fmt.Sprintf("type/%d", i%2))
	}
	write("cold", "second", "text/plain")
	write("bin", string([]byte{0xff, 0}), "application/octet-stream")
	write("bin", "", "")
	write("ttl", "now", "text/plain")
	note("ttl", &value{"soon", "text/plain"})
	if _, err := s.Put(ctx, "ttl", []byte("soon"), kv.PutOptions{ContentType: "text/plain", TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Minute)
	note("ttl", nil) // the expiry, committed before the next write
	write("cold", "third", "text/plain")
	note("cold", &value{"fourth", ""})
	note("bin", nil)
	if _, err := s.Txn(ctx, kv.Txn{Then: []kv.TxnOp{{Kind: kv.TxnPut, Key: "cold", Value: []byte("fourth")}, {Kind: kv.TxnDelete, Key: "bin"}}}); err != nil {
		t.Fatal(err)
	}
	want[len(want)-1].Rev-- // the transaction's changes share a revision

	rev = s.Revision()
	live := next(t, sub, len(want))
	var got []prevState
	for _, c := range live {
		got = append(got, prevStateOf(c))
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("live previous values (-want +got):\n%s", diff)
	}
	sharesPrev(t, "live", live)
	closeStore(t, s)
	files, err := wal.List(dir)
	if err != nil {
		t.Fatal(err)
	}
	if files.Segments[0] <= want[0].Rev {
		t.Fatalf("segments %v: compaction kept the first write's, the test needs it removed", files.Segments)
	}

	s = open(t, opts)
	from := rev - int64(opts.History) + 5 // well inside the history: a transaction's changes share a revision
	res, err := s.Watch(kv.WatchOptions{Patterns: patterns(t, "**"), Resume: true, From: from})
	if err != nil {
		t.Fatal(err)
	}
	if res.Reset != "" {
		t.Fatalf("resume from %d after reopen: Reset %q, want a replay", from, res.Reset)
	}
	got = got[:0]
	for _, c := range res.Replay {
		got = append(got, prevStateOf(c))
	}
	i := slices.IndexFunc(want, func(p prevState) bool { return p.Rev > from })
	if diff := cmp.Diff(want[i:], got); diff != "" {
		t.Errorf("previous values replayed after reopen (-want +got):\n%s", diff)
	}
	sharesPrev(t, "replayed", res.Replay)
}

// TestPrevFromOldLog: a log written before records carried previous
// values still gives them, from the segment itself, where the previous
// change is in it; where it is not, the previous value is not known.
func TestPrevFromOldLog(t *testing.T) {
	dir := t.TempDir()
	err := wal.WriteSnapshot(dir, 1, func(add func(*wal.Record) error) error {
		return add(&wal.Record{Op: wal.OpPut, Rev: 1, Key: []byte("b"), Value: []byte("in the snapshot")})
	})
	if err != nil {
		t.Fatal(err)
	}
	data := append([]byte(nil), wal.LogMagic[:]...)
	for _, r := range []wal.Record{
		{Op: wal.OpPut, Rev: 2, Key: []byte("a"), ContentType: []byte("text/plain"), Value: []byte("1")},
		{Op: wal.OpPut, Rev: 3, PrevRev: 2, Key: []byte("a"), Value: []byte("2")},
		{Op: wal.OpDelete, Rev: 4, PrevRev: 3, Key: []byte("a")},
		{Op: wal.OpPut, Rev: 5, PrevRev: 1, Key: []byte("b"), Value: []byte("3")},
		{Op: wal.OpCommit, Rev: 5},
	} {
		data = wal.Append(data, &r)
	}
	if err := os.WriteFile(wal.SegmentPath(dir, 2), data, 0o644); err != nil {
		t.Fatal(err)
	}
	s := open(t, kv.Options{Dir: dir})
	res, err := s.Watch(kv.WatchOptions{Patterns: patterns(t, "**"), Resume: true, From: 1})
	if err != nil {
		t.Fatal(err)
	}
	var got []prevState
	for _, c := range res.Replay {
		got = append(got, prevStateOf(c))
	}
	want := []prevState{{Rev: 2}, {Rev: 3, Known: true, Value: "1", Type: "text/plain"}, {Rev: 4, Known: true, Value: "2"}, {Rev: 5}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("previous values of an old log (-want +got):\n%s", diff)
	}
}
