package cli_test

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"kvsse/sse/server/servertest"
)

// tour is the README's 60-second tour, as its code blocks have it.
type tour struct {
	serverArgs []string // the flags of its "go run ." line
	stream     string   // the curl -N command of the second terminal
	consoles   [][]step // its console blocks, in order
	events     string   // what the stream shows
}

// step is one command of a console block and the output it shows.
type step struct {
	cmd  string
	want string
}

// readTour parses the tour section of the README.
func readTour(t *testing.T) tour {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## A 60-second tour\n")
	if !ok {
		t.Fatal("README has no section \"## A 60-second tour\"")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var tr tour
	blocks := regexp.MustCompile("(?s)```([a-z]*)\n(.*?)```").FindAllStringSubmatch(section, -1)
	for _, bl := range blocks {
		lang, body := bl[1], bl[2]
		switch lang {
		case "sh":
			for _, line := range strings.Split(body, "\n") {
				switch {
				case strings.HasPrefix(line, "go run ."):
					tr.serverArgs = strings.Fields(strings.TrimPrefix(line, "go run ."))
				case strings.HasPrefix(line, "curl -N "):
					tr.stream = line
				}
			}
		case "console":
			var steps []step
			for _, line := range strings.Split(strings.TrimSuffix(body, "\n"), "\n") {
				if cmd, ok := strings.CutPrefix(line, "$ "); ok {
					steps = append(steps, step{cmd: cmd})
				} else if len(steps) > 0 {
					steps[len(steps)-1].want += line + "\n"
				}
			}
			tr.consoles = append(tr.consoles, steps)
		case "text":
			tr.events = body
		}
	}
	if tr.stream == "" || tr.events == "" || len(tr.consoles) != 2 {
		t.Fatalf("the tour's blocks are not what this test reads: a go run line, a curl -N line, two console blocks and the stream's text; got %+v", tr)
	}
	return tr
}

// TestREADMETour runs the README's tour, command by command, against the
// built binary, and checks that each prints what the README shows, the
// stream included. Only the address differs (the test's own port), and
// the expiry time of the put with a time to live, which no two runs share.
func TestREADMETour(t *testing.T) {
	requireTools(t, "bash", "curl")
	tr := readTour(t)
	addr := servertest.FreeAddr(t)
	server := exec.Command(servertest.Binary(t), append(tr.serverArgs, "-addr", addr)...)
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Process.Kill(); server.Wait() })
	servertest.WaitReady(t, "http://"+addr)
	local := func(cmd string) string { return strings.ReplaceAll(cmd, "localhost:8080", addr) }

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	curl := exec.CommandContext(ctx, "bash", "-c", local(tr.stream)+" 2>/dev/null")
	out, err := curl.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := curl.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); curl.Wait() })
	stream := new(servertest.LockedBuffer)
	synced := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			stream.Write([]byte(sc.Text() + "\n"))
			if sc.Text() == "event: sync" {
				close(synced)
			}
		}
	}()
	select {
	case <-synced:
	case <-time.After(cliTimeout):
		t.Fatalf("the tour's stream sent no sync: %q", stream.String())
	}

	dir := t.TempDir()
	run := func(steps []step) {
		for _, s := range steps {
			cmd := local(s.cmd)
			if strings.Contains(cmd, "go build") {
				// Build in the module, into the directory the tour runs in.
				cmd = strings.Replace(cmd, "-o kvsse .", "-C ../.. -o "+filepath.Join(dir, "kvsse")+" .", 1)
				cmd = strings.Replace(cmd, "go build -C ../..", "go -C ../.. build", 1)
			}
			c := exec.Command("bash", "-c", cmd)
			c.Dir = dir
			if strings.Contains(cmd, "go -C") {
				c.Dir = ""
			}
			c.Env = cliEnv("KVSSE_URL=http://" + addr)
			var stdout, stderr bytes.Buffer
			c.Stdout, c.Stderr = &stdout, &stderr
			if err := c.Run(); err != nil {
				t.Fatalf("$ %s: %v\n%s", s.cmd, err, stderr.String())
			}
			if diff := cmp.Diff(strings.TrimSuffix(s.want, "\n"), strings.TrimSuffix(stdout.String(), "\n")); diff != "" {
				t.Errorf("$ %s (-README +got):\n%s", s.cmd, diff)
			}
		}
	}
	run(tr.consoles[0])

	expires := regexp.MustCompile(`"expires":"[^"]*"`)
	norm := func(s string) string { return expires.ReplaceAllString(strings.TrimRight(s, "\n"), `"expires":"…"`) }
	want := norm(tr.events)
	deadline := time.Now().Add(cliTimeout)
	for norm(stream.String()) != want && len(stream.String()) < len(tr.events)+64 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if diff := cmp.Diff(want, norm(stream.String())); diff != "" {
		t.Errorf("the tour's stream (-README +got):\n%s", diff)
	}

	run(tr.consoles[1])
	static(t, filepath.Join(dir, "kvsse"))
}

// static checks that the ELF binary at path asks for no dynamic loader
// and no shared library: it runs on a machine without a C library.
func static(t *testing.T, path string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s asks for a dynamic loader: the README's build command does not make a static binary", path)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("%s needs the shared libraries %q", path, libs)
	}
}

// requireTools skips the test when a program it runs is missing, or
// fails it under CI (KVSSE_REQUIRE_TOOLS=1), which installs them.
func requireTools(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		servertest.RequireTool(t, n, n, "KVSSE_REQUIRE_TOOLS")
	}
}
