package server_test

import (
	"testing"

	"kvsse/sse/server/servertest"
)

// TestMain stops the etcd cluster the tests share and removes the kvsse
// binary they built.
func TestMain(m *testing.M) { servertest.Main(m) }
