// Command kvsse is a key-value store served over HTTP in which any client
// can follow the changes of the keys matching a pattern as Server-Sent
// Events. The same binary is the server (no subcommand, or "serve") and a
// command-line client (get, put, del, ls, watch).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second signal ends the process at once
	}()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// exitError carries a process exit status: 1 for a missing key, 2 for a
// usage or other error.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// exitCode prints err, if any, and returns the exit status for it.
func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	code := 2
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

// run is the whole program: it parses args (with KVSSE_* environment
// twins read through getenv), then serves until ctx ends, or runs one
// client command.
func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	cfg, rest, err := parseFlags(args, getenv, stderr)
	if err != nil {
		return err
	}
	cmd := "serve"
	if len(rest) > 0 {
		cmd, rest = rest[0], rest[1:]
	}
	if cmd == "serve" {
		if len(rest) > 0 {
			return usageErr("serve takes no arguments, got %q", rest)
		}
		return serve(ctx, cfg, stdout, stderr)
	}
	c, ok := commands[cmd]
	if !ok {
		return usageErr("unknown command %q (want serve, get, put, del, ls, watch or bench)", cmd)
	}
	return c(ctx, newClient(cfg), rest, stdin, stdout, stderr)
}

func usageErr(format string, a ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, a...)}
}
