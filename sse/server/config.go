package server

import (
	"flag"
	"fmt"
	"kvsse/kv"
	"time"
)

// Config is every setting of the server. RegisterFlags binds each field
// to its command-line flag and sets its default; Serve checks the values
// and refuses bad ones with a *ConfigError.
type Config struct {
	// network
	Addr              string
	ReadHeaderTimeout time.Duration
	ShutdownTimeout   time.Duration
	TLSCert, TLSKey   string
	CORSOrigins       string
	MetricsAddr       string

	// data
	Backend       string
	Data          string
	Memory        bool
	Sync          string
	CompactBytes  int64
	EtcdEndpoints string
	EtcdPrefix    string

	// streams
	History       int
	SubBuffer     int
	Heartbeat     time.Duration
	FlushInterval time.Duration
	MaxWait       time.Duration

	// limits
	MaxValue            int64
	MaxKeys             int64
	MaxBytes            int64
	MaxSubscribers      int
	MaxSubscribersPerIP int
	MaxPatterns         int
	MaxPatternBytes     int
	MaxGlobsPerIP       int
	MaxTxnOps           int
	MaxTxnBytes         int64
	WriteRate           float64
	WriteBurst          int

	// access control and logs
	Auth      string
	LogFormat string
	LogLevel  string
}

// ConfigError is a setting out of its range: the program's usage is
// wrong, not its environment.
type ConfigError struct{ msg string }

func (e *ConfigError) Error() string { return e.msg }

func configErr(format string, a ...any) error {
	return &ConfigError{msg: fmt.Sprintf(format, a...)}
}

// RegisterFlags defines the server's flags on fs, bound to the fields of
// c, and gives each field its default.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Addr, "addr", "127.0.0.1:8080", "`host:port` to listen on")
	fs.StringVar(&c.Data, "data", "./kvsse-data", "data `directory`; empty keeps nothing on disk")
	fs.BoolVar(&c.Memory, "memory", false, "keep nothing on disk (same as -data '')")
	fs.StringVar(&c.Sync, "sync", "always", "always: fsync the log before acknowledging a write (group commit);\nnone: never fsync; acknowledged writes survive a crash of kvsse, NOT of the machine")
	fs.Int64Var(&c.CompactBytes, "compact-bytes", 64<<20, "compact the log into a snapshot when it grows past this many `bytes`")
	fs.Int64Var(&c.MaxValue, "max-value", 1<<20, "largest value in `bytes`")
	fs.IntVar(&c.History, "history", 100_000, "committed changes kept for watchers that resume (`events`)")
	fs.IntVar(&c.SubBuffer, "sub-buffer", 1024, "`events` queued for a watcher before it is disconnected as too slow (with coalesce=1: before\nwhat waits merges to the newest per key)")
	fs.DurationVar(&c.Heartbeat, "heartbeat", 15*time.Second, "interval of stream heartbeats (±10 %)")
	fs.DurationVar(&c.FlushInterval, "flush-interval", 30*time.Millisecond, "least time between two writes to a busy stream once 1,000 streams are open (a\nshare of it with fewer): events arriving sooner go out together with the next\nwrite (0: write every event at once)")
	fs.DurationVar(&c.MaxWait, "max-wait", 5*time.Minute, "longest wait= a long poll may ask for")
	fs.IntVar(&c.MaxSubscribers, "max-subscribers", 10_000, "open streams allowed, all together")
	fs.IntVar(&c.MaxSubscribersPerIP, "max-subscribers-per-ip", 1000, "open streams allowed from one client address; 0: no limit")
	fs.IntVar(&c.MaxPatterns, "max-patterns", 64, "patterns allowed in one stream")
	fs.IntVar(&c.MaxPatternBytes, "max-pattern-bytes", 16<<10, "`bytes` of patterns allowed in one stream, all together; 0: no limit")
	fs.IntVar(&c.MaxGlobsPerIP, "max-globs-per-ip", 1024, "distinct glob segments (like user-*) the open streams of one client address may\nhold, all together; 0: no limit")
	fs.IntVar(&c.MaxTxnOps, "max-txn-ops", kv.DefaultMaxTxnOps, "changes allowed in one transaction, the keys a delete_prefix removes included")
	fs.Int64Var(&c.MaxTxnBytes, "max-txn-bytes", 16<<20, "`bytes` of a transaction's request body")
	fs.Int64Var(&c.MaxKeys, "max-keys", 10_000_000, "keys the store may hold; 0: no limit")
	fs.Int64Var(&c.MaxBytes, "max-bytes", 1<<30, "bytes of values the store may hold, all together; 0: no limit")
	fs.Float64Var(&c.WriteRate, "write-rate", 10_000, "writes (PUT, DELETE) a second allowed from one client address, on average; 0: no limit")
	fs.IntVar(&c.WriteBurst, "write-burst", 20_000, "writes one client address may make at once, above -write-rate")
	fs.DurationVar(&c.ReadHeaderTimeout, "read-header-timeout", 10*time.Second, "time a client has to send a request's headers (and the TLS handshake)")
	fs.StringVar(&c.TLSCert, "tls-cert", "", "PEM certificate chain `file`: serve HTTPS (HTTP/2 and HTTP/1.1); needs -tls-key")
	fs.StringVar(&c.TLSKey, "tls-key", "", "PEM private key `file` of -tls-cert")
	fs.StringVar(&c.Backend, "backend", "embedded", "where the data lives: embedded (the map and log in -data) or etcd (an etcd cluster;\nsee -etcd-endpoints)")
	fs.StringVar(&c.EtcdEndpoints, "etcd-endpoints", "", "comma-separated client `URLs` of the etcd members (http://host:2379), for -backend etcd")
	fs.StringVar(&c.EtcdPrefix, "etcd-prefix", "/kvsse/", "prefix of every key kvsse writes to etcd, for -backend etcd")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 10*time.Second, "how long a graceful shutdown may take")
	fs.StringVar(&c.LogFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.Var((*originList)(&c.CORSOrigins), "cors-origins", "comma-separated `origins` (https://app.example.com) whose pages may read and write\nwith the browser's credentials; empty: same origin only")
	fs.StringVar(&c.Auth, "auth", "", "JSON `file` of access tokens and the key patterns each may read and write;\nempty: no access control (SIGHUP reloads the file)")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", "", "`host:port` of a second listener serving /metrics and /debug/pprof/; empty: none\n(/metrics is on -addr as well)")
}

// A FlagTopic is a group of the server's flags, as the help shows them.
type FlagTopic struct {
	Name  string
	Flags []string
}

// FlagTopics returns the server's flags grouped by topic, in the order
// the help shows them. Every flag RegisterFlags defines is in exactly one
// topic.
func FlagTopics() []FlagTopic {
	return []FlagTopic{
		{"Network", []string{"addr", "read-header-timeout", "shutdown-timeout", "cors-origins", "metrics-addr"}},
		{"Data", []string{"backend", "data", "memory", "sync", "compact-bytes"}},
		{"Streams", []string{"history", "sub-buffer", "heartbeat", "flush-interval", "max-wait"}},
		{"Limits", []string{"max-value", "max-keys", "max-bytes", "max-subscribers", "max-subscribers-per-ip", "max-patterns", "max-pattern-bytes", "max-globs-per-ip", "max-txn-ops", "max-txn-bytes", "write-rate", "write-burst"}},
		{"Access control", []string{"auth"}},
		{"TLS", []string{"tls-cert", "tls-key"}},
		{"Logs", []string{"log-format", "log-level"}},
		{"etcd (-backend etcd)", []string{"etcd-endpoints", "etcd-prefix"}},
	}
}

// DefaultConfig is the configuration of a server started with no flags.
func DefaultConfig() *Config {
	c := new(Config)
	c.RegisterFlags(flag.NewFlagSet("", flag.ContinueOnError))
	return c
}
