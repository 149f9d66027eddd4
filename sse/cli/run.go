// Package cli is the kvsse program: it reads the flags (and their
// KVSSE_* environment twins), then runs the server or one client command,
// and maps the outcome to an exit status.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"kvsse/sse/bench"
	"kvsse/sse/server"
)

// Main runs the program with args (without the program's name) and
// returns its exit status: 0 on success, 1 for a missing key (get, del),
// 2 for a usage or any other error, which it prints to stderr.
func Main(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	return exitCode(Run(ctx, args, getenv, stdin, stdout, stderr), stderr)
}

// Run is the whole program: it parses args (with KVSSE_* environment
// twins read through getenv), then serves until ctx ends, or runs one
// client command.
func Run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	cfg, rest, err := parseFlags(args, getenv, stderr)
	if err != nil {
		return err
	}
	cmd := "serve"
	if len(rest) > 0 {
		cmd, rest = rest[0], rest[1:]
	}
	switch cmd {
	case "serve":
		if len(rest) > 0 {
			return usageErr("serve takes no arguments, got %q", rest)
		}
		return server.Serve(ctx, &cfg.srv, stdout, stderr)
	case "bench":
		return bench.Run(ctx, rest, cfg.server, stdout, stderr)
	case "hub": // hidden: the baselines of bench -baseline and wrk
		return bench.RunHub(ctx, rest, cfg.srv.Addr, stdout, stderr)
	}
	c, ok := commands[cmd]
	if !ok {
		return usageErr("unknown command %q (want serve, get, put, del, ls, watch or bench)", cmd)
	}
	return c(ctx, newClient(cfg), rest, stdin, stdout, stderr)
}

// exitError carries a process exit status: 1 for a missing key, 2 for a
// usage or other error.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErr(format string, a ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, a...)}
}

// exitCode prints err, if any, and returns the exit status for it.
func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	code := 2 // a usage error (server.ConfigError and bench's among them) or another failure
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0 // usage was printed
	}
	fmt.Fprintf(stderr, "kvsse: %v\n", err)
	return code
}
