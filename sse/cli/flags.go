package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"kvsse/sse/server"
	"strings"
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
}

// clientFlags are shown apart in the usage text.
var clientFlags = map[string]bool{"server": true, "token": true, "ttl": true, "if-rev": true, "json": true, "snapshot": true, "since": true}

// rawArgs are the commands that parse their own flags.
var rawArgs = map[string]bool{"bench": true, "hub": true}

// clientEnv are the client flags that read their environment twin: where
// and as whom to connect, not what to do.
var clientEnv = map[string]bool{"server": true, "token": true}

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
func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (*config, []string, error) {
	c := new(config)
	fs := flag.NewFlagSet("kvsse", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c.srv.RegisterFlags(fs)
	fs.StringVar(&c.server, "server", "http://127.0.0.1:8080", "client: the server's URL")
	fs.StringVar(&c.token, "token", "", "client: the access token sent as Authorization: Bearer (prefer the env twin: a\ncommand line is visible to other users of the machine)")
	fs.StringVar(&c.ttl, "ttl", "", "client put: time to live (Go duration or seconds)")
	fs.Int64Var(&c.ifRev, "if-rev", 0, "client put, del: only if the key is at this revision (compare-and-set)")
	fs.BoolVar(&c.json, "json", false, "client watch: print the NDJSON events")
	fs.BoolVar(&c.snapshot, "snapshot", false, "client watch: print the matching keys first")
	fs.Int64Var(&c.since, "since", -1, "client watch: replay the changes after this revision first")
	fs.Usage = func() { usage(fs) }

	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, nil, &exitError{code: 0, err: err}
			}
			return nil, nil, &exitError{code: 2, err: err}
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
		if clientFlags[f.Name] && !clientEnv[f.Name] {
			return // per-command options: a stray variable must not change every call
		}
		if v := getenv(envName(f.Name)); !set[f.Name] && v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", envName(f.Name), v, err))
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		return nil, nil, &exitError{code: 2, err: err}
	}
	return c, rest, nil
}

func usage(fs *flag.FlagSet) {
	w := fs.Output()
	fmt.Fprint(w, `Usage:
  kvsse [flags] [serve]           run the server
  kvsse [flags] get KEY           print a value
  kvsse [flags] put KEY [VALUE]   set a value (from stdin when VALUE is absent)
  kvsse [flags] del KEY           delete a key
  kvsse [flags] ls [PREFIX]       list keys
  kvsse [flags] watch PATTERN...  print changes as they happen

Server flags, -server and -token also read the environment variable shown;
the flag wins.
`)
	for _, client := range []bool{false, true} {
		if client {
			fmt.Fprint(w, "\nClient flags:\n")
		} else {
			fmt.Fprint(w, "\nServer flags:\n")
		}
		fs.VisitAll(func(f *flag.Flag) {
			if clientFlags[f.Name] != client {
				return
			}
			if clientFlags[f.Name] && !clientEnv[f.Name] {
				fmt.Fprintf(w, "  -%s (default %q)\n", f.Name, f.DefValue)
			} else {
				fmt.Fprintf(w, "  -%s (env %s, default %q)\n", f.Name, envName(f.Name), f.DefValue)
			}
			for _, line := range strings.Split(f.Usage, "\n") {
				fmt.Fprintf(w, "      %s\n", line)
			}
		})
	}
}
