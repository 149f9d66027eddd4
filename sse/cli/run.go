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
	"strings"

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
// client command. Help (-h, -help, "help [COMMAND]") goes to stdout.
func Run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	cfg, rest, fs, err := parseFlags(args, getenv)
	var help *helpRequest
	if errors.As(err, &help) {
		return printHelp(stdout, fs, help.cmd)
	}
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
			return usageErr("serve", "serve takes no arguments, got %q", rest)
		}
		err := server.Serve(ctx, &cfg.srv, stdout, stderr)
		var ce *server.ConfigError
		if errors.As(err, &ce) {
			return &usageError{cmd: "serve", err: err}
		}
		return err
	case "help":
		if len(rest) > 1 {
			return usageErr("", "usage: kvsse help [COMMAND]")
		}
		return printHelp(stdout, fs, strings.Join(rest, ""))
	case "bench":
		err := bench.Run(ctx, rest, cfg.server, stdout, stderr)
		var ue *bench.UsageError
		if errors.As(err, &ue) {
			return &usageError{cmd: "bench", err: err}
		}
		return err
	case "hub": // hidden: the baselines of bench -baseline and wrk
		return bench.RunHub(ctx, rest, cfg.srv.Addr, stdout, stderr)
	}
	c := findCommand(cmd)
	if c == nil {
		return usageErr("", "unknown command %q", cmd)
	}
	return c.run(ctx, newClient(cfg), rest, stdin, stdout, stderr)
}

// exitError carries a process exit status: 1 for a missing key, 2 for
// another error.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// exitCode prints err, if any, and returns the exit status for it: 0 for
// none (or a help already printed), the code of an *exitError, 2 for any
// other (a usage error among them).
func exitCode(err error, stderr io.Writer) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	code := 2
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	fmt.Fprintf(stderr, "kvsse: %v\n", err)
	return code
}
