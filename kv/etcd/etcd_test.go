package etcd

import (
	"context"
	"testing"
	"time"

	"kvsse/kv"
	"kvsse/kv/etcd/etcdtest"
)

// startEtcd starts a one-member etcd of this test's own, a child process
// on loopback, with args added to its flags, and returns its client URL
// (see etcdtest.Start: it skips without etcd on PATH, unless
// KVSSE_REQUIRE_ETCD=1).
func startEtcd(t *testing.T, args ...string) string {
	t.Helper()
	return etcdtest.Start(t, 1, args...).Endpoints()[0]
}

// openStore opens a store on the etcd at url, closed at the end of the
// test. opts.Endpoints is set to url.
func openStore(t *testing.T, url string, opts Options) *Store {
	t.Helper()
	opts.Endpoints = []string{url}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// etcdRaw calls etcd at url directly, as another client would.
func etcdRaw(t *testing.T, url, path string, req, resp any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := newClient([]string{url}).call(ctx, path, req, resp); err != nil {
		t.Fatal(err)
	}
}

// etcdRevision is etcd's revision now.
func etcdRevision(t *testing.T, s *Store) int64 {
	t.Helper()
	rev, err := s.currentRevision(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

// put puts key=value through the store and returns its revision.
func put(t *testing.T, s *Store, key, value string) int64 {
	t.Helper()
	r, err := s.Put(context.Background(), key, []byte(value), kv.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return r.Revision
}

// putExpired writes key straight to etcd as kvsse would, with an expiry
// that has passed, as if etcd's lease had not deleted it yet; with lease
// (not 0) attached. It returns the key's revision.
func putExpired(t *testing.T, url string, s *Store, key string, lease int64) int64 {
	t.Helper()
	var r putResponse
	v := encodeValue([]byte("old"), "text/plain", time.Now().Add(-time.Minute).UnixNano())
	etcdRaw(t, url, "/v3/kv/put", putRequest{Key: s.etcdKey(key), Value: v, Lease: lease}, &r)
	return r.Header.Revision
}

// contents is what the store holds under prefix: value by key.
func contents(t *testing.T, s *Store, prefix string) map[string]string {
	t.Helper()
	page, err := s.List(context.Background(), prefix, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string]string)
	for _, e := range page.Items {
		m[e.Key] = string(e.Value)
	}
	return m
}
