package server

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestLimitRateLimiter runs the token buckets on a fake clock.
func TestLimitRateLimiter(t *testing.T) {
	type call struct {
		advance time.Duration // the clock moves first
		ip      string
		ok      bool
		wait    time.Duration
		tracked int // addresses tracked after the call
	}
	tests := []struct {
		name        string
		rate        float64
		burst, max  int
		calls       []call
		wantBuckets int
	}{
		{
			name: "burst, then one a second", rate: 1, burst: 2, max: 10,
			calls: []call{
				{0, "a", true, 0, 1},
				{0, "a", true, 0, 1},
				{0, "a", false, time.Second, 1},
				{0, "a", false, time.Second, 1}, // a refusal takes nothing
				{500 * time.Millisecond, "a", false, 500 * time.Millisecond, 1},
				{500 * time.Millisecond, "a", true, 0, 1},
				{0, "b", true, 0, 2}, // addresses are apart
				{time.Hour, "a", true, 0, 2},
				{0, "a", true, 0, 2}, // refilled up to the burst only
				{0, "a", false, time.Second, 2},
			},
		},
		{
			name: "bounded", rate: 1, burst: 1, max: 3,
			calls: []call{
				{0, "a", true, 0, 1},
				{0, "b", true, 0, 2},
				{0, "c", true, 0, 3},
				{0, "d", true, 0, 3},
				{0, "e", true, 0, 3},
				{0, "f", true, 0, 3},
			},
		},
		{
			name: "idle addresses swept", rate: 10, burst: 5, max: 100,
			calls: []call{
				{0, "a", true, 0, 1},
				{0, "b", true, 0, 2},
				{30 * time.Second, "c", true, 0, 3},
				{0, "c", true, 0, 3},
				{31 * time.Second, "d", true, 0, 1}, // a minute on: a, b, c are full again
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Unix(1e9, 0)
			l := newRateLimiter(tt.rate, tt.burst, tt.max, func() time.Time { return now })
			for i, c := range tt.calls {
				now = now.Add(c.advance)
				wait, ok := l.allow(c.ip, 1)
				got := call{c.advance, c.ip, ok, wait, len(l.buckets)}
				if diff := cmp.Diff(c, got, cmp.AllowUnexported(call{})); diff != "" {
					t.Errorf("call %d (-want +got):\n%s", i, diff)
				}
			}
		})
	}
	if l := newRateLimiter(0, 10, 10, time.Now); l != nil {
		t.Errorf("a rate of 0 made a limiter")
	}
}
