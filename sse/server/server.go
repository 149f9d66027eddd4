package main

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
)

func storeOptions(cfg *config, logger *slog.Logger) (kv.Options, error) {
	o := kv.Options{
		Dir:          cfg.data,
		CompactBytes: cfg.compactBytes,
		History:      cfg.history,
		SubBuffer:    cfg.subBuffer,
		Logger:       logger,
		MaxKeys:      cfg.maxKeys,
		MaxBytes:     cfg.maxBytes,
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
	case cfg.flushInterval < 0 || cfg.flushInterval > time.Second:
		return o, usageErr("-flush-interval must be between 0 and 1s")
	case cfg.heartbeat <= 0 || cfg.shutdownTimeout <= 0:
		return o, usageErr("-heartbeat and -shutdown-timeout must be positive")
	case cfg.backend != "embedded" && cfg.backend != "etcd":
		return o, usageErr("-backend must be embedded or etcd, got %q", cfg.backend)
	}
	if cfg.backend == "etcd" {
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
func loadTLS(cfg *config) (*tls.Config, error) {
	if (cfg.tlsCert == "") != (cfg.tlsKey == "") {
		return nil, usageErr("give both -tls-cert and -tls-key, or neither")
	}
	if cfg.tlsCert == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(cfg.tlsCert, cfg.tlsKey)
	if err != nil {
		return nil, fmt.Errorf("-tls-cert %s -tls-key %s: %w", cfg.tlsCert, cfg.tlsKey, err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"h2", "http/1.1"},
	}, nil
}

// serve runs the server until ctx ends, then shuts down gracefully: it
// stops accepting, ends every stream, lets in-flight requests finish,
// and syncs and closes the log.
func serve(ctx context.Context, cfg *config, stdout, stderr io.Writer) error {
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
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	scheme := "http"
	if tlsConfig != nil {
		scheme = "https"
		ln = tls.NewListener(ln, tlsConfig)
	}
	fmt.Fprintf(stdout, "kvsse listening on %s://%s\n", scheme, ln.Addr())
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
		ReadHeaderTimeout: cfg.readHeaderTimeout,
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
	met := newMetrics()
	msrv, err := serveMetrics(g, cfg.metricsAddr, met, logger, stdout)
	if err != nil {
		srv.Close()
		g.Wait()
		return err
	}

	start := time.Now()
	store, err := openBackend(gctx, cfg, opts, logger)
	if err != nil {
		srv.Close()
		msrv.Close()
		g.Wait()
		return err
	}
	logger.Info("ready", "took", time.Since(start).Round(time.Millisecond))
	met.setStore(store)
	api := newAPI(store, cfg, logger, met)
	api.access = access
	api.auth = az
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
	if msrv.Shutdown(sctx) != nil {
		msrv.Close() // a scrape or profile in flight is cut off
	}
	cerr := store.Close()
	if cerr != nil {
		cerr = fmt.Errorf("close store: %w", cerr)
	}
	return errors.Join(g.Wait(), serr, cerr)
}
