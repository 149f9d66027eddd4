package servertest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"kvsse/kv/etcd/etcdtest"
	"kvsse/sse"
)

// The binary Binary built; Cleanup removes it.
var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// Binary builds the kvsse program (the main package at the root of the
// module the test runs in) once per test binary and returns the path of
// the executable. The first call takes as long as go build; it fails the
// test if the build fails.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			buildErr = fmt.Errorf("go env GOMOD: %v", err)
			return
		}
		mod := strings.TrimSpace(string(out))
		if mod == "" || mod == os.DevNull {
			buildErr = fmt.Errorf("go env GOMOD: not in a module")
			return
		}
		dir, err := os.MkdirTemp("", "kvsse-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "kvsse")
		cmd := exec.Command("go", "build", "-o", binPath, ".")
		cmd.Dir = filepath.Dir(mod)
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// Main runs the tests of m, then stops the etcd cluster that SharedEtcd
// started and removes the executable that Binary built, if they exist,
// and exits with the tests' status. A package whose tests use them calls
// it from its TestMain.
func Main(m *testing.M) {
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// cleanup stops the shared etcd cluster and removes the built binary.
func cleanup() {
	etcdtest.StopShared()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
}

// Proc is a kvsse binary running as a child process.
type Proc struct {
	URL string    // from its banner line
	Cmd *exec.Cmd // its Stderr is a *LockedBuffer when StartProc started it
}

// StartProc runs the binary (Binary) as a server on 127.0.0.1:0 with
// -log-level warn, then args, and waits until it serves. The process is
// killed when the test ends, and its log shown if the test failed.
func StartProc(t testing.TB, args ...string) *Proc {
	t.Helper()
	cmd := exec.Command(Binary(t), append([]string{"-addr", "127.0.0.1:0", "-log-level", "warn"}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := new(LockedBuffer)
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	url, err := sse.ReadBanner(stdout)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("server did not start: %v; stderr:\n%s", err, stderr.String())
	}
	p := &Proc{URL: url, Cmd: cmd}
	t.Cleanup(func() {
		p.Kill()
		ShowLog(t, "log of "+p.URL, stderr)
	})
	WaitReady(t, p.URL)
	return p
}

// Kill ends the process with SIGKILL and reaps it, unless it was reaped
// already (Cmd.Wait returned).
func (p *Proc) Kill() {
	if p.Cmd.ProcessState == nil {
		p.Cmd.Process.Kill()
		p.Cmd.Wait()
	}
}
