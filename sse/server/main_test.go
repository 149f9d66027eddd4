package server_test

import (
	"os"
	"testing"

	"kvsse/sse/server/servertest"
)

// TestMain stops the etcd cluster the tests share and removes the kvsse
// binary they built.
func TestMain(m *testing.M) {
	code := m.Run()
	servertest.Cleanup()
	os.Exit(code)
}
