package main

import (
	"os"
	"testing"

	"kvsse/sse/server/servertest"
)

// TestMain stops the etcd cluster that the tests on both backends share.
func TestMain(m *testing.M) {
	code := m.Run()
	servertest.Cleanup()
	os.Exit(code)
}
