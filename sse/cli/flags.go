package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"
)

// config is every flag of the server and the client.
type config struct {
	// server
	addr            string
	data            string
	memory          bool
	sync            string
	compactBytes    int64
	maxValue        int64
	history         int
	subBuffer       int
	heartbeat       time.Duration
	flushInterval   time.Duration
	maxSubscribers  int
	shutdownTimeout time.Duration
	logFormat       string
	logLevel        string
	corsOrigins     string
	metricsAddr     string
	auth            string

	// server: limits and transport
	maxKeys             int64
	maxBytes            int64
	maxSubscribersPerIP int
	maxPatterns         int
	writeRate           float64
	writeBurst          int
	readHeaderTimeout   time.Duration
	tlsCert             string
	tlsKey              string

	// server: where the data lives
	backend       string
	etcdEndpoints string
	etcdPrefix    string

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
	fs.StringVar(&c.addr, "addr", "127.0.0.1:8080", "address to listen on")
	fs.StringVar(&c.data, "data", "./kvsse-data", "data directory; empty keeps nothing on disk")
	fs.BoolVar(&c.memory, "memory", false, "keep nothing on disk (same as -data '')")
	fs.StringVar(&c.sync, "sync", "always", "always: fsync the log before acknowledging a write (group commit);\nnone: never fsync; acknowledged writes survive a crash of kvsse, NOT of the machine")
	fs.Int64Var(&c.compactBytes, "compact-bytes", 64<<20, "compact the log into a snapshot when it grows past this many bytes")
	fs.Int64Var(&c.maxValue, "max-value", 1<<20, "largest value in bytes")
	fs.IntVar(&c.history, "history", 100_000, "committed changes kept for watchers that resume (events)")
	fs.IntVar(&c.subBuffer, "sub-buffer", 1024, "events queued for a watcher before it is disconnected as too slow")
	fs.DurationVar(&c.heartbeat, "heartbeat", 15*time.Second, "interval of stream heartbeats (±10 %)")
	fs.DurationVar(&c.flushInterval, "flush-interval", 30*time.Millisecond, "least time between two writes to a busy stream once 1,000 streams are open (a\nshare of it with fewer): events arriving sooner go out together with the next\nwrite (0: write every event at once)")
	fs.IntVar(&c.maxSubscribers, "max-subscribers", 10_000, "open streams allowed, all together")
	fs.IntVar(&c.maxSubscribersPerIP, "max-subscribers-per-ip", 1000, "open streams allowed from one client address; 0: no limit")
	fs.IntVar(&c.maxPatterns, "max-patterns", 64, "patterns allowed in one stream")
	fs.Int64Var(&c.maxKeys, "max-keys", 10_000_000, "keys the store may hold; 0: no limit")
	fs.Int64Var(&c.maxBytes, "max-bytes", 1<<30, "bytes of values the store may hold, all together; 0: no limit")
	fs.Float64Var(&c.writeRate, "write-rate", 10_000, "writes (PUT, DELETE) a second allowed from one client address, on average; 0: no limit")
	fs.IntVar(&c.writeBurst, "write-burst", 20_000, "writes one client address may make at once, above -write-rate")
	fs.DurationVar(&c.readHeaderTimeout, "read-header-timeout", 10*time.Second, "time a client has to send a request's headers (and the TLS handshake)")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "PEM certificate chain file: serve HTTPS (HTTP/2 and HTTP/1.1); needs -tls-key")
	fs.StringVar(&c.tlsKey, "tls-key", "", "PEM private key file of -tls-cert")
	fs.StringVar(&c.backend, "backend", "embedded", "where the data lives: embedded (the map and log in -data) or etcd (an etcd cluster;\nsee -etcd-endpoints)")
	fs.StringVar(&c.etcdEndpoints, "etcd-endpoints", "", "comma-separated client URLs of the etcd members (http://host:2379), for -backend etcd")
	fs.StringVar(&c.etcdPrefix, "etcd-prefix", "/kvsse/", "prefix of every key kvsse writes to etcd, for -backend etcd")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 10*time.Second, "how long a graceful shutdown may take")
	fs.StringVar(&c.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.Var((*originList)(&c.corsOrigins), "cors-origins", "comma-separated origins (https://app.example.com) whose pages may read and write\nwith the browser's credentials; empty: same origin only")
	fs.StringVar(&c.auth, "auth", "", "JSON file of access tokens and the key patterns each may read and write;\nempty: no access control (SIGHUP reloads the file)")
	fs.StringVar(&c.metricsAddr, "metrics-addr", "", "address of a second listener serving /metrics and /debug/pprof/; empty: none\n(/metrics is on -addr as well)")
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
	if c.memory {
		c.data = ""
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
