package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"kvsse/kv"
	"kvsse/sse"
)

func storeOptions(cfg *Config, logger *slog.Logger) (kv.Options, error) {
	o := kv.Options{
		Dir:          cfg.Data,
		CompactBytes: cfg.CompactBytes,
		History:      cfg.History,
		SubBuffer:    cfg.SubBuffer,
		Logger:       logger,
		MaxKeys:      cfg.MaxKeys,
		MaxBytes:     cfg.MaxBytes,
		MaxTxnOps:    cfg.MaxTxnOps,
	}
	switch cfg.Sync {
	case "always":
		o.Sync = kv.SyncAlways
	case "none":
		o.Sync = kv.SyncNone
	default:
		return o, configErr("-sync must be always or none, got %q", cfg.Sync)
	}
	switch {
	case cfg.MaxValue <= 0 || cfg.MaxValue > maxValueLimit:
		return o, configErr("-max-value must be between 1 and %d", maxValueLimit)
	case cfg.CompactBytes <= 0:
		return o, configErr("-compact-bytes must be positive")
	case cfg.History <= 0 || cfg.SubBuffer <= 0 || cfg.MaxSubscribers <= 0:
		return o, configErr("-history, -sub-buffer and -max-subscribers must be positive")
	case cfg.FlushInterval < 0 || cfg.FlushInterval > time.Second:
		return o, configErr("-flush-interval must be between 0 and 1s")
	case cfg.Heartbeat <= 0 || cfg.ShutdownTimeout <= 0:
		return o, configErr("-heartbeat and -shutdown-timeout must be positive")
	case cfg.Backend != "embedded" && cfg.Backend != "etcd":
		return o, configErr("-backend must be embedded or etcd, got %q", cfg.Backend)
	}
	if cfg.Backend == "etcd" {
		if _, err := etcdEndpoints(cfg); err != nil {
			return o, err
		}
	}
	return o, nil
}

// maxValueLimit keeps a record well inside what the log accepts.
const maxValueLimit = 32 << 20

// loadTLS loads the key pair of -tls-cert and -tls-key, or returns nil
// when neither is given.
func loadTLS(cfg *Config) (*tls.Config, error) {
	if (cfg.TLSCert == "") != (cfg.TLSKey == "") {
		return nil, configErr("give both -tls-cert and -tls-key, or neither")
	}
	if cfg.TLSCert == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("-tls-cert %s -tls-key %s: %w", cfg.TLSCert, cfg.TLSKey, err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"h2", "http/1.1"},
	}, nil
}

// Serve runs the server until ctx ends, then shuts down gracefully: it
// stops accepting, ends every stream, lets in-flight requests finish,
// and syncs and closes the log. It listens first, answering 503 while
// the store opens, and prints the banner line (sse.Banner) to stdout
// once the store is open: a data directory it cannot open fails before
// the banner. It logs to stderr. A setting out of range is a
// *ConfigError.
func Serve(ctx context.Context, cfg *Config, stdout, stderr io.Writer) error {
	cfg = normalize(cfg)
	logw := newLogWriter(stderr, 5*time.Millisecond) // a line is written at most 5 ms late
	defer logw.Close()
	logger, access, err := newLogger(cfg, logw)
	if err != nil {
		return err
	}
	opts, err := storeOptions(cfg, logger)
	if err != nil {
		return err
	}
	if err := checkLimits(cfg); err != nil {
		return err
	}
	tlsConfig, err := loadTLS(cfg)
	if err != nil {
		return err
	}
	az, err := loadAuth(cfg, logger)
	if err != nil {
		return err
	}
	stopReload := az.reloadOn(syscall.SIGHUP) // -auth: SIGHUP reloads the file
	defer stopReload()
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	scheme := "http"
	if tlsConfig != nil {
		scheme = "https"
		ln = tls.NewListener(ln, tlsConfig)
	}
	warnIfOpen(logger, az, ln.Addr())

	// Until the store is loaded, every request gets 503.
	var h atomic.Pointer[http.Handler]
	starting := http.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, logger, errStarting)
	}))
	h.Store(&starting)
	// HTTP/2 over TLS, and in clear from clients that know (h2c).
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetHTTP2(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { (*h.Load()).ServeHTTP(w, r) }),
		Protocols:         &protocols,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	// Streams end before Shutdown, which would wait for them.
	stopping, stop := context.WithCancel(context.Background())
	defer stop()
	streams := sse.NewPool(0)
	var ready atomic.Bool // the store is open: a stop now is a shutdown
	endStreams := func() {
		if ready.Load() {
			logger.Info("shutting down")
		}
		stop() // healthz answers 503, streams end
		streams.Close()
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return sse.Serve(gctx, srv, ln, cfg.ShutdownTimeout, endStreams) })
	met := newMetrics()
	maddr, err := serveMetrics(gctx, g, cfg, met, logger)
	if err != nil {
		cancel()
		g.Wait()
		return err
	}
	// The banner says the server will serve: it comes once the store has
	// opened, so that a data directory that is locked or damaged fails
	// before it. Meanwhile requests get 503 starting.
	announce := func() {
		sse.Announce(stdout, scheme+"://"+ln.Addr().String())
		if maddr != nil {
			fmt.Fprintf(stdout, "kvsse metrics and pprof on http://%s\n", maddr)
		}
	}

	start := time.Now()
	store, err := openBackend(gctx, cfg, opts, logger, announce)
	if err != nil {
		cancel()
		g.Wait()
		return err
	}
	logger.Info("ready", "took", time.Since(start).Round(time.Millisecond))
	met.setStore(store)
	api := newAPI(store, cfg, logger, met, stopping, streams)
	api.access = access
	api.auth = az
	handler := api.routes()
	h.Store(&handler)
	ready.Store(true)

	err = g.Wait()
	cerr := store.Close()
	if cerr != nil {
		cerr = fmt.Errorf("close store: %w", cerr)
	}
	return errors.Join(err, cerr)
}

// normalize returns cfg with the settings that stand for others applied:
// -memory empties -data.
func normalize(cfg *Config) *Config {
	c := *cfg
	if c.Memory {
		c.Data = ""
	}
	return &c
}
