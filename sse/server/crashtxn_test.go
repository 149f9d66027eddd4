package server_test

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"kvsse/sse/server/servertest"
)

// TestCrashKill9Txn kills the server with SIGKILL while 8 clients write
// transactions, each setting the 10 keys of one of its groups to one new
// value, and checks after each restart that every group is whole (its
// keys at one revision, with one value) and holds its last acknowledged
// transaction or the one in flight when the server died: never part of
// a transaction, never less than what was acknowledged.
func TestCrashKill9Txn(t *testing.T) {
	const writers, groups, keys = 8, 4, 10 // groups per writer, keys per group
	dir := t.TempDir()
	c := crashClient(t)
	rng := crashRandom(t)
	acked := map[string]int{} // group → the number of its last acknowledged transaction
	for cycle := 0; cycle <= 3; cycle++ {
		p := servertest.StartProc(t, "-data", dir, "-write-rate", "0")
		_, items, err := crashList(c, p.URL)
		if err != nil {
			t.Fatal(err)
		}
		for g, n := range crashTxnGroups(t, items, keys) {
			if n < acked[g] {
				t.Errorf("cycle %d: group %s holds transaction %d, but %d was acknowledged", cycle, g, n, acked[g])
			}
			acked[g] = n // the one in flight may have landed: it is the base now
		}
		if cycle == 3 {
			p.Kill()
			break
		}
		target := int64(100 + rng.IntN(300))
		var done atomic.Int64
		var mu sync.Mutex // guards acked
		var wg sync.WaitGroup
		for w := range writers {
			wg.Go(func() {
				for i := 0; ; i++ {
					g := fmt.Sprintf("txn/w%d-g%d", w, i%groups)
					mu.Lock()
					n := acked[g] + 1
					mu.Unlock()
					var ops []string
					for k := range keys {
						ops = append(ops, fmt.Sprintf(`{"put": "%s/%d", "value": "%d"}`, g, k, n))
					}
					st, _, _, err := crashDo(c, http.MethodPost, p.URL+"/txn", []byte(`{"then": [`+strings.Join(ops, ",")+`]}`), nil)
					if err != nil || st != http.StatusOK {
						return // killed
					}
					mu.Lock()
					acked[g] = n
					mu.Unlock()
					if done.Add(1) == target {
						p.Kill()
					}
				}
			})
		}
		wg.Wait()
		c.Transport.(*http.Transport).CloseIdleConnections()
		t.Logf("cycle %d: killed after %d acknowledged transactions", cycle, done.Load())
	}
}

// crashTxnGroups checks that each group of keys (GROUP/0..keys-1) in
// items is whole, and returns the transaction number each holds.
func crashTxnGroups(t *testing.T, items map[string]crashItem, keys int) map[string]int {
	t.Helper()
	type state struct {
		value string
		rev   int64
		n     int
	}
	groups := map[string]state{}
	for key, it := range items {
		i := strings.LastIndexByte(key, '/')
		if i < 0 || !strings.HasPrefix(key, "txn/") {
			continue
		}
		g := key[:i]
		s, seen := groups[g]
		switch {
		case !seen:
			groups[g] = state{value: it.Value, rev: it.Revision, n: 1}
		case s.value != it.Value || s.rev != it.Revision:
			t.Errorf("group %s is not whole: %s is %q at %d, another key %q at %d", g, key, it.Value, it.Revision, s.value, s.rev)
		default:
			s.n++
			groups[g] = s
		}
	}
	out := map[string]int{}
	for g, s := range groups {
		if s.n != keys {
			t.Errorf("group %s holds %d keys, want %d", g, s.n, keys)
		}
		n, err := strconv.Atoi(s.value)
		if err != nil {
			t.Errorf("group %s holds %q", g, s.value)
		}
		out[g] = n
	}
	return out
}
