package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"kvsse/sse/server"
)

// config is every flag of the server and the client.
type config struct {
	srv server.Config

	// client
	server   string
	token    string
	ttl      string
	ifRev    int64
	json     bool
	snapshot bool
	since    int64
	prefix   string
	batch    int
	poll     bool
	events   string
	prev     bool
	coalesce bool
}

// clientFlags are the flags of the client commands.
var clientFlags = map[string]bool{"server": true, "token": true, "ttl": true, "if-rev": true, "json": true, "snapshot": true, "since": true, "prefix": true, "batch": true, "poll": true, "events": true, "prev": true, "coalesce": true}

// rawArgs are the commands that parse their own flags.
var rawArgs = map[string]bool{"bench": true, "hub": true}

// clientEnv are the client flags that read their environment twin: where
// and as whom to connect, not what to do.
var clientEnv = map[string]bool{"server": true, "token": true}

// readsEnv reports whether the flag called name reads its environment
// twin: every server flag, and -server and -token.
func readsEnv(name string) bool { return !clientFlags[name] || clientEnv[name] }

// envName is the environment twin of a flag.
func envName(flag string) string {
	if flag == "server" {
		return "KVSSE_URL"
	}
	return "KVSSE_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// parseFlags parses args, which may mix flags and positional arguments
// ("put -ttl 30s k v" and "-ttl 30s put k v" alike; "--" ends the flags).
// Flags not given take their environment twin, then their default.
//
// -h or -help anywhere returns a *helpRequest for the command named
// before it; a bad flag a *usageError. The flag set is returned for the
// help, also with an error.
func parseFlags(args []string, getenv func(string) string) (*config, []string, *flag.FlagSet, error) {
	c := new(config)
	fs := flag.NewFlagSet("kvsse", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned, help is printed by Run
	fs.Usage = func() {}
	c.srv.RegisterFlags(fs)
	fs.StringVar(&c.server, "server", "http://127.0.0.1:8080", "the server's `URL`")
	fs.StringVar(&c.token, "token", "", "the access `token`, sent as Authorization: Bearer (prefer the environment\nvariable: a command line is visible to other users of the machine)")
	fs.StringVar(&c.ttl, "ttl", "", "time to live of the value: a Go `duration` (30s, 5m) or seconds")
	fs.Int64Var(&c.ifRev, "if-rev", 0, "only if the key is at this `revision` (compare-and-set)")
	fs.BoolVar(&c.json, "json", false, "print the server's NDJSON objects, one a line")
	fs.BoolVar(&c.snapshot, "snapshot", false, "print the matching keys first")
	fs.StringVar(&c.prefix, "prefix", "", "del: delete every key that starts with this `prefix`, as one write")
	fs.IntVar(&c.batch, "batch", 1000, "import: the most keys in one transaction (fewer when the server finds it too large)")
	fs.Int64Var(&c.since, "since", -1, "replay the changes after this `revision` first (-1: none)")
	fs.BoolVar(&c.poll, "poll", false, "watch with long polls (wait=30s each) instead of a stream, for proxies that buffer streams")
	fs.StringVar(&c.events, "events", "", "watch: only the changes of this `kind`, put or delete (empty: both)")
	fs.BoolVar(&c.prev, "prev", false, "watch -json: each change carries its key's previous value (prev_value)")
	fs.BoolVar(&c.coalesce, "coalesce", false, "watch: when this client falls behind, the server merges the waiting changes to the newest per key\ninstead of cutting the stream off")

	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			cmd := ""
			if len(rest) > 0 {
				cmd = rest[0]
			}
			if errors.Is(err, flag.ErrHelp) {
				return nil, nil, fs, &helpRequest{cmd: cmd}
			}
			return nil, nil, fs, &usageError{cmd: cmd, err: err}
		}
		left := fs.Args()
		if len(left) == 0 {
			break
		}
		if consumed := len(args) - len(left); consumed > 0 && args[consumed-1] == "--" {
			rest = append(rest, left...)
			break
		}
		rest = append(rest, left[0])
		args = left[1:]
		if len(rest) == 1 && rawArgs[rest[0]] {
			rest = append(rest, args...) // the command parses its own flags
			break
		}
	}

	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if !readsEnv(f.Name) {
			return // per-command options: a stray variable must not change every call
		}
		if v := getenv(envName(f.Name)); !set[f.Name] && v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", envName(f.Name), v, err))
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		return nil, nil, fs, &usageError{err: err}
	}
	return c, rest, fs, nil
}
