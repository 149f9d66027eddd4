// Command kvsse is a key-value store served over HTTP in which any client
// can follow the changes of the keys matching a pattern as Server-Sent
// Events. The same binary is the server (no subcommand, or "serve") and a
// command-line client (get, put, del, ls, watch).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"kvsse/sse/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second signal ends the process at once
	}()
	code := cli.Main(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
