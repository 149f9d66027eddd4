package cli

import (
	"testing"
)

func TestMetricsAddrEnv(t *testing.T) {
	cfg, _, _, err := parseFlags(nil, func(k string) string {
		return map[string]string{"KVSSE_METRICS_ADDR": "127.0.0.1:9090"}[k]
	})
	if err != nil || cfg.srv.MetricsAddr != "127.0.0.1:9090" {
		t.Errorf("KVSSE_METRICS_ADDR: got %q, %v", cfg.srv.MetricsAddr, err)
	}
}
