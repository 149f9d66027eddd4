package servertest

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"kvsse/kv/etcd/etcdtest"
)

// Backend is a store that black-box tests run against (ForEachBackend).
type Backend struct {
	// Start runs a server in this process on the backend, as Start
	// does. On etcd each server keeps its keys under a prefix of its own.
	Start func(t testing.TB, args ...string) *Server
	// Dense: every write takes the next revision (embedded). Otherwise
	// revisions only rise (etcd).
	Dense bool
	// TTL is the shortest time to live, in seconds, that the tests give:
	// an etcd lease is whole seconds and at least etcd's minimum.
	TTL int
}

// After reports whether rev may be the revision of the first write after
// revision prev: above it, and right after it where revisions are dense.
func (be Backend) After(prev, rev int64) bool {
	if be.Dense {
		return rev == prev+1
	}
	return rev > prev
}

// StoreRev returns the revision a test must expect as the store's (in a
// sync, a reset, a listing, /healthz) when last is the newest write it
// made, given the revision it got: last, or on etcd the one it got when
// that is above, as kvsse writes a fence key of its own to learn how far
// etcd's watch has come. Any other shows in a cmp.Diff against it.
func (be Backend) StoreRev(last, got int64) int64 {
	if !be.Dense && got > last {
		return got
	}
	return last
}

// ForEachBackend runs f as the subtests "embedded" and "etcd". The etcd
// row shares one etcd cluster with the whole test binary (SharedEtcd); it
// skips when etcd is not installed (fails with KVSSE_REQUIRE_ETCD=1). The
// shared cluster serves one test at a time (no test that runs on it may
// be parallel), so no other test moves its revision (see StoreRev).
func ForEachBackend(t *testing.T, f func(t *testing.T, be Backend)) {
	t.Run("embedded", func(t *testing.T) {
		f(t, Backend{Start: Start, Dense: true, TTL: 1})
	})
	t.Run("etcd", func(t *testing.T) {
		c := SharedEtcd(t)
		start := func(t testing.TB, args ...string) *Server {
			t.Helper()
			return Start(t, append(c.ServerArgs(EtcdPrefix()), args...)...)
		}
		f(t, Backend{Start: start, TTL: 2})
	})
}

var etcdPrefixes atomic.Int64

// EtcdPrefix returns an -etcd-prefix that no other server of this test
// binary uses.
func EtcdPrefix() string {
	return fmt.Sprintf("/kvsse-test-%d/", etcdPrefixes.Add(1))
}

// Cluster is an etcd cluster of child processes (etcdtest.Cluster) for
// kvsse servers to run on.
type Cluster struct{ *etcdtest.Cluster }

// StartEtcd starts a cluster of the given number of members for this
// test, as etcdtest.Start does.
func StartEtcd(t testing.TB, members int) *Cluster {
	t.Helper()
	return &Cluster{etcdtest.Start(t, members)}
}

// SharedEtcd returns the one-member cluster shared by the tests of this
// test binary (etcdtest.Shared), which Cleanup stops.
func SharedEtcd(t testing.TB) *Cluster {
	t.Helper()
	return &Cluster{etcdtest.Shared(t)}
}

// ServerArgs are the flags of a kvsse server on c under prefix.
func (c *Cluster) ServerArgs(prefix string) []string {
	return []string{"-backend", "etcd", "-etcd-endpoints", strings.Join(c.Endpoints(), ","), "-etcd-prefix", prefix}
}

// FreeAddr returns a loopback address whose port was free a moment ago,
// for a server that must listen on an address known before it starts (a
// restart on the same address, a process whose banner comes late).
func FreeAddr(t testing.TB) string {
	t.Helper()
	ports, err := etcdtest.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
}
