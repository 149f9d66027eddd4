package bench

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"kvsse/kv"
)

// config holds the flags of "kvsse bench".
type config struct {
	server      string
	writers     int
	rate        float64
	duration    time.Duration
	writes      int64
	valueSize   int
	keys        int
	txn         int // keys a write changes by a transaction; 0: single PUTs
	prefix      string
	subscribers int
	pattern     string
	format      string
	pid         int
	json        bool
	syncTimeout time.Duration
	baseline    bool
	baselineExe string
}

// timeDigits is the length of a send time (UnixNano in decimal, until
// the year 2286), which starts every value the bench writes.
const timeDigits = 19

// UsageError is a command line of "kvsse bench" that is wrong.
type UsageError struct{ msg string }

func (e *UsageError) Error() string { return "bench: " + e.msg }

// flags defines the flags of "kvsse bench" on a new flag set, bound to
// cfg; server is the default of -server.
func flags(cfg *config, server string) *flag.FlagSet {
	fs := flag.NewFlagSet("kvsse bench", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned, help printed by PrintUsage
	fs.Usage = func() {}
	fs.StringVar(&cfg.server, "server", server, "the server's URL; several, comma-separated, spread the writers and the\nsubscribers over them in turn (nodes in front of one etcd cluster)")
	fs.IntVar(&cfg.writers, "writers", 8, "concurrent writers, each with its own keep-alive connection")
	fs.Float64Var(&cfg.rate, "rate", 0, "writes per second, all writers together; 0: as fast as the server answers")
	fs.DurationVar(&cfg.duration, "duration", 10*time.Second, "how long to write, unless -writes is given")
	fs.Int64Var(&cfg.writes, "writes", 0, "stop after this many writes (instead of after -duration)")
	fs.IntVar(&cfg.valueSize, "value-size", 64, "bytes of each value; at least 19, since a value starts with its send time")
	fs.IntVar(&cfg.txn, "txn", 0, "write by transactions (POST /txn) of this many keys in turn instead of single\nPUTs; 0: single PUTs. keys/s counts the keys changed")
	fs.IntVar(&cfg.keys, "keys", 1000, "write the keys PREFIX/0 to PREFIX/(keys-1), in turn")
	fs.StringVar(&cfg.prefix, "prefix", "bench", "the first segment(s) of the keys written")
	fs.IntVar(&cfg.subscribers, "subscribers", 0, "streams opened, and live, before the first write")
	fs.StringVar(&cfg.pattern, "pattern", "", "each subscriber's pattern (default PREFIX/**); a %d in it stands for\nthe subscriber's number modulo -keys: PREFIX/%d gives each subscriber one key")
	fs.StringVar(&cfg.format, "format", "sse", "stream format: sse or ndjson, or poll: long polls (wait=1m, since the last answer) instead of streams")
	fs.IntVar(&cfg.pid, "pid", 0, "the server's process id: report its CPU time and memory (Linux /proc)")
	fs.BoolVar(&cfg.json, "json", false, "also print the figures as one JSON object, on the last line")
	fs.DurationVar(&cfg.syncTimeout, "sync-timeout", 10*time.Second, "how long to wait for the subscribers to be live, and, after the\nlast write, for them to receive every change")
	fs.BoolVar(&cfg.baseline, "baseline", false, "first run the same load against a plain Go SSE hub (\"kvsse hub\", started\nas a child process on 127.0.0.1:0), then against -server, and print both\nside by side with the ratios kvsse / baseline; the hub's CPU and memory are\nalways measured, the server's with -pid. Patterns: **, PREFIX/** or a key")
	fs.StringVar(&cfg.baselineExe, "baseline-exe", "", "the kvsse binary that runs the -baseline hub (default: this one)")
	return fs
}

// PrintUsage writes the help of "kvsse bench" to w.
func PrintUsage(w io.Writer) {
	fmt.Fprint(w, `Usage: kvsse bench [flags]

Drives a running server with writers and subscribers, checks that each
subscriber receives every acknowledged change of its pattern exactly once
and in order, and prints throughput and latency. Exit status 0 when every
check passes, 2 otherwise.

`)
	fs := flags(new(config), "http://127.0.0.1:8080")
	fs.SetOutput(w)
	fs.PrintDefaults()
}

// parseBench parses the arguments of "kvsse bench"; server is the URL to
// use when -server is not given among them. -h prints the help to stdout
// and returns flag.ErrHelp; a bad command line is a *UsageError.
func parseBench(args []string, server string, stdout io.Writer) (*config, error) {
	cfg := new(config)
	fs := flags(cfg, server)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			PrintUsage(stdout)
			return nil, err
		}
		return nil, &UsageError{msg: err.Error()}
	}
	if cfg.pattern == "" {
		cfg.pattern = cfg.prefix + "/**"
	}
	var problem string
	switch {
	case fs.NArg() > 0:
		problem = fmt.Sprintf("unexpected arguments %q", fs.Args())
	case cfg.writers < 1:
		problem = "-writers must be at least 1"
	case cfg.rate < 0:
		problem = "-rate must not be negative"
	case cfg.writes < 0:
		problem = "-writes must not be negative"
	case cfg.writes == 0 && cfg.duration <= 0:
		problem = "-duration must be positive"
	case cfg.valueSize < timeDigits:
		problem = fmt.Sprintf("-value-size must be at least %d (a value starts with its send time)", timeDigits)
	case cfg.keys < 1:
		problem = "-keys must be at least 1"
	case cfg.txn < 0 || cfg.txn > cfg.keys:
		problem = "-txn must be between 0 (single PUTs) and -keys"
	case cfg.txn > 0 && cfg.baseline:
		problem = "-baseline compares single PUTs only: leave out -txn"
	case cfg.subscribers < 0:
		problem = "-subscribers must not be negative"
	case cfg.format != "sse" && cfg.format != "ndjson" && cfg.format != "poll":
		problem = "-format must be sse, ndjson or poll"
	case cfg.pid < 0:
		problem = "-pid must not be negative"
	case cfg.syncTimeout <= 0:
		problem = "-sync-timeout must be positive"
	case cfg.baseline && cfg.format != "sse":
		problem = "-baseline streams SSE only: leave out -format"
	case kv.ValidateKey(cfg.prefix+"/0") != nil:
		problem = fmt.Sprintf("-prefix: %v", kv.ValidateKey(cfg.prefix+"/0"))
	}
	if _, err := kv.ParsePattern(strings.ReplaceAll(cfg.pattern, "%d", "0")); problem == "" && err != nil {
		problem = fmt.Sprintf("-pattern: %v", err)
	}
	for _, srv := range cfg.servers() {
		if u, err := url.Parse(srv); problem == "" && (err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "") {
			problem = fmt.Sprintf("-server %q is not an http(s) URL", srv)
		}
	}
	if problem != "" {
		return nil, &UsageError{msg: problem}
	}
	return cfg, nil
}

// servers are the URLs of -server.
func (cfg *config) servers() []string {
	var out []string
	for srv := range strings.SplitSeq(cfg.server, ",") {
		out = append(out, strings.TrimSuffix(strings.TrimSpace(srv), "/"))
	}
	return out
}

// serverFor is the server of writer or subscriber number i.
func (cfg *config) serverFor(i int) string {
	srvs := cfg.servers()
	return srvs[i%len(srvs)]
}
