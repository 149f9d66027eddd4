package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"kvsse/kv"
	"kvsse/kv/etcd"
)

// etcdEndpoints checks and splits -etcd-endpoints.
func etcdEndpoints(cfg *Config) ([]string, error) {
	var out []string
	for _, e := range strings.Split(cfg.EtcdEndpoints, ",") {
		e = strings.TrimRight(strings.TrimSpace(e), "/")
		if e == "" {
			continue
		}
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Path != "" {
			return nil, configErr("-etcd-endpoints: %q is not a URL like http://host:2379", e)
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		return nil, configErr("-backend etcd needs -etcd-endpoints")
	}
	if !strings.HasPrefix(cfg.EtcdPrefix, "/") {
		return nil, configErr("-etcd-prefix must start with /, got %q", cfg.EtcdPrefix)
	}
	return out, nil
}

// openBackend opens the store -backend names, and calls announce once
// the server will serve: when the embedded store has opened (a locked or
// damaged data directory fails before), or, with etcd, at once: an etcd
// cluster that cannot be reached yet is tried again until ctx ends, while
// the server answers 503.
func openBackend(ctx context.Context, cfg *Config, opts kv.Options, logger *slog.Logger, announce func()) (store, error) {
	switch cfg.Backend {
	case "embedded":
		s, err := kv.Open(opts)
		if err != nil {
			return nil, err
		}
		announce()
		logger.Info("store loaded", "data", cfg.Data, "revision", s.Revision())
		if cfg.Data == "" {
			logger.Warn("running in memory: nothing is kept when the server stops")
		}
		if opts.Sync == kv.SyncNone {
			logger.Warn("-sync=none: writes are acknowledged before they reach the disk and may be lost if the machine fails")
		}
		return s, nil
	case "etcd":
		endpoints, err := etcdEndpoints(cfg)
		if err != nil {
			return nil, err
		}
		eo := etcd.Options{Endpoints: endpoints, Prefix: cfg.EtcdPrefix, History: cfg.History, SubBuffer: cfg.SubBuffer, Logger: logger, MaxTxnOps: cfg.MaxTxnOps}
		announce()
		for attempt := 0; ; attempt++ {
			s, err := etcd.Open(ctx, eo)
			if err == nil {
				logger.Info("following etcd", "endpoints", cfg.EtcdEndpoints, "prefix", cfg.EtcdPrefix, "revision", s.Revision())
				return s, nil
			}
			if !errors.Is(err, kv.ErrUnavailable) {
				return nil, err
			}
			if attempt == 0 {
				logger.Warn("etcd unreachable; retrying", "err", err)
			}
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("etcd: %w", err)
			case <-time.After(time.Second):
			}
		}
	}
	return nil, configErr("-backend must be embedded or etcd, got %q", cfg.Backend)
}
