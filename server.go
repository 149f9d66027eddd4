package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"kvsse/kv"
)

// newLogger builds the server's logger from -log-format and -log-level.
func newLogger(cfg *config, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.logLevel)); err != nil {
		return nil, usageErr("-log-level: %v", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch cfg.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usageErr("-log-format must be text or json, got %q", cfg.logFormat)
}

func storeOptions(cfg *config, logger *slog.Logger) (kv.Options, error) {
	o := kv.Options{
		Dir:          cfg.data,
		CompactBytes: cfg.compactBytes,
		History:      cfg.history,
		SubBuffer:    cfg.subBuffer,
		Logger:       logger,
	}
	switch cfg.sync {
	case "always":
		o.Sync = kv.SyncAlways
	case "none":
		o.Sync = kv.SyncNone
	default:
		return o, usageErr("-sync must be always or none, got %q", cfg.sync)
	}
	switch {
	case cfg.maxValue <= 0 || cfg.maxValue > maxValueLimit:
		return o, usageErr("-max-value must be between 1 and %d", maxValueLimit)
	case cfg.compactBytes <= 0:
		return o, usageErr("-compact-bytes must be positive")
	case cfg.history <= 0 || cfg.subBuffer <= 0 || cfg.maxSubscribers <= 0:
		return o, usageErr("-history, -sub-buffer and -max-subscribers must be positive")
	case cfg.heartbeat <= 0 || cfg.shutdownTimeout <= 0:
		return o, usageErr("-heartbeat and -shutdown-timeout must be positive")
	}
	return o, nil
}

// maxValueLimit keeps a record well inside what the log accepts.
const maxValueLimit = 32 << 20

// serve runs the server until ctx ends, then shuts down gracefully: it
// stops accepting, ends every stream, lets in-flight requests finish,
// and syncs and closes the log.
func serve(ctx context.Context, cfg *config, stdout, stderr io.Writer) error {
	logger, err := newLogger(cfg, stderr)
	if err != nil {
		return err
	}
	opts, err := storeOptions(cfg, logger)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	fmt.Fprintf(stdout, "kvsse listening on http://%s\n", ln.Addr())

	// Until the store is loaded, every request gets 503.
	var h atomic.Pointer[http.Handler]
	starting := http.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, logger, errStarting)
	}))
	h.Store(&starting)
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { (*h.Load()).ServeHTTP(w, r) }),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve: %w", err)
		}
		return nil
	})

	start := time.Now()
	store, err := kv.Open(opts)
	if err != nil {
		srv.Close()
		g.Wait()
		return err
	}
	logger.Info("store loaded", "data", cfg.data, "revision", store.Revision(), "took", time.Since(start).Round(time.Millisecond))
	if cfg.data == "" {
		logger.Warn("running in memory: nothing is kept when the server stops")
	}
	if opts.Sync == kv.SyncNone {
		logger.Warn("-sync=none: writes are acknowledged before they reach the disk and may be lost if the machine fails")
	}
	api := newAPI(store, cfg, logger)
	handler := api.routes()
	h.Store(&handler)

	<-gctx.Done()
	logger.Info("shutting down")
	api.shutdown() // healthz answers 503, streams end
	sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
	defer cancel()
	serr := srv.Shutdown(sctx)
	if serr != nil {
		srv.Close()
		serr = fmt.Errorf("shutdown: %w", serr)
	}
	cerr := store.Close()
	if cerr != nil {
		cerr = fmt.Errorf("close store: %w", cerr)
	}
	return errors.Join(g.Wait(), serr, cerr)
}
