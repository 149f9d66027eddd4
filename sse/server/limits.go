package server

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"kvsse/kv"
)

// Errors of the per-address limits.
var (
	errRateLimited = errors.New("too many writes from this address")
)

// maxRateBuckets bounds the addresses whose write rate is tracked at once.
const maxRateBuckets = 100_000

// checkLimits refuses limit flags out of their range.
func checkLimits(cfg *Config) error {
	switch {
	case cfg.MaxKeys < 0 || cfg.MaxBytes < 0:
		return configErr("-max-keys and -max-bytes must be 0 (no limit) or positive")
	case cfg.MaxSubscribersPerIP < 0:
		return configErr("-max-subscribers-per-ip must be 0 (no limit) or positive")
	case cfg.MaxPatterns <= 0:
		return configErr("-max-patterns must be positive")
	case cfg.MaxPatternBytes < 0 || cfg.MaxGlobsPerIP < 0:
		return configErr("-max-pattern-bytes and -max-globs-per-ip must be 0 (no limit) or positive")
	case cfg.WriteRate < 0 || math.IsNaN(cfg.WriteRate) || math.IsInf(cfg.WriteRate, 0):
		return configErr("-write-rate must be 0 (no limit) or a positive number of writes a second")
	case cfg.WriteRate > 0 && cfg.WriteBurst < 1:
		return configErr("-write-burst must be at least 1")
	case cfg.MaxTxnOps <= 0 || cfg.MaxTxnBytes <= 0:
		return configErr("-max-txn-ops and -max-txn-bytes must be positive")
	case cfg.MaxWait <= 0:
		return configErr("-max-wait must be positive")
	case cfg.ReadHeaderTimeout <= 0:
		return configErr("-read-header-timeout must be positive")
	}
	return nil
}

// clientIP is the address the limits count r against: the host of its
// connection's remote address. Behind a proxy that is the proxy's, for
// every client: X-Forwarded-For is not trusted.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// allowWrite reports whether r's client may write now. When it may not,
// allowWrite has answered 429 with Retry-After, and r must not go on.
func (a *api) allowWrite(w http.ResponseWriter, r *http.Request) bool {
	return a.allowWrites(w, r, 1)
}

// allowWrites is allowWrite for a request of n writes (a transaction's
// ops), which count as n against -write-rate, at most -write-burst.
func (a *api) allowWrites(w http.ResponseWriter, r *http.Request, n int) bool {
	if a.writes == nil {
		return true
	}
	wait, ok := a.writes.allow(clientIP(r), n)
	if ok {
		return true
	}
	w.Header().Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(wait.Seconds())))))
	writeError(w, r, a.logger, fmt.Errorf("%w: the limit is %g a second (-write-rate) in bursts of up to %d (-write-burst); retry after the seconds in Retry-After", errRateLimited, a.cfg.WriteRate, a.cfg.WriteBurst))
	return false
}

// rateLimiter is a token bucket per client address: an address may write
// rate times a second on average and burst times at once. Its map is
// bounded: idle addresses (whose bucket has refilled) are swept out, and
// when it holds max addresses all the same an arbitrary one is dropped,
// which starts again with a full bucket. It is safe for concurrent use.
type rateLimiter struct {
	rate  float64 // tokens a second
	burst float64
	max   int
	now   func() time.Time

	mu      sync.Mutex // guards buckets and swept
	buckets map[string]*bucket
	swept   time.Time // the last sweep of idle buckets
}

type bucket struct {
	tokens float64
	last   time.Time // when tokens was last brought up to date
}

// newRateLimiter returns a limiter of rate writes a second, in bursts of
// up to burst, over at most addrs addresses; nil when rate is 0 (no
// limit).
func newRateLimiter(rate float64, burst, addrs int, now func() time.Time) *rateLimiter {
	if rate <= 0 {
		return nil
	}
	return &rateLimiter{rate: rate, burst: float64(burst), max: addrs, now: now,
		buckets: make(map[string]*bucket), swept: now()}
}

// allow takes n tokens (at most the burst) from ip's bucket. When there
// are fewer it takes nothing and returns how long until there are.
func (l *rateLimiter) allow(ip string, n int) (wait time.Duration, ok bool) {
	need := min(float64(n), l.burst)
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[ip]
	if b == nil {
		l.makeRoom(now)
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[ip] = b
	}
	b.tokens = l.refill(b, now)
	b.last = now
	if b.tokens < need {
		return time.Duration((need - b.tokens) / l.rate * float64(time.Second)), false
	}
	b.tokens -= need
	return 0, true
}

// refill is b's tokens at now. The caller holds mu.
func (l *rateLimiter) refill(b *bucket, now time.Time) float64 {
	return min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
}

// makeRoom makes room for one more address: at most once a second when
// the map is full, and once a minute anyway, it drops the idle buckets,
// then arbitrary ones while it is still full. The caller holds mu.
func (l *rateLimiter) makeRoom(now time.Time) {
	since := now.Sub(l.swept)
	if since >= time.Minute || (len(l.buckets) >= l.max && since >= time.Second) {
		l.swept = now
		for ip, b := range l.buckets {
			if l.refill(b, now) >= l.burst {
				delete(l.buckets, ip)
			}
		}
	}
	for ip := range l.buckets {
		if len(l.buckets) < l.max {
			break
		}
		delete(l.buckets, ip)
	}
}

// admit takes the resources of a stream from ip on patterns: a slot of
// -max-subscribers, one of -max-subscribers-per-ip, and room for the
// patterns' globs in -max-globs-per-ip. It returns the function that
// gives them back, to call once when the stream ends, or the error that
// names the limit it met.
func (a *api) admit(ip string, patterns []kv.Pattern) (release func(), err error) {
	select {
	case a.subs <- struct{}{}:
	default:
		return nil, fmt.Errorf("%w: %d streams are open, the most -max-subscribers allows", errTooManySubs, a.cfg.MaxSubscribers)
	}
	if !a.subsByIP.acquire(ip) {
		<-a.subs
		return nil, fmt.Errorf("%w: this address has %d streams open, the most -max-subscribers-per-ip allows", errTooManySubs, a.cfg.MaxSubscribersPerIP)
	}
	var globs []string
	for _, p := range patterns {
		globs = append(globs, p.Globs()...)
	}
	freeGlobs, n := a.globs.acquire(ip, globs)
	if freeGlobs == nil {
		a.subsByIP.release(ip)
		<-a.subs
		return nil, fmt.Errorf("%w: this address's streams would hold %d distinct glob segments (like \"user-*\"), the most -max-globs-per-ip allows is %d", errTooManySubs, n, a.cfg.MaxGlobsPerIP)
	}
	return func() {
		freeGlobs()
		a.subsByIP.release(ip)
		<-a.subs
	}, nil
}

// globCounter counts the distinct glob segments (kv.Pattern.Globs) that
// the open streams of each client address have registered, up to max an
// address (0: no limit): each costs the watch index memory and, now and
// then, a try on a write. Its maps hold only addresses with a stream
// open. It is safe for concurrent use.
type globCounter struct {
	max int

	mu   sync.Mutex // guards byIP
	byIP map[string]map[string]int
}

func newGlobCounter(max int) *globCounter {
	return &globCounter{max: max, byIP: make(map[string]map[string]int)}
}

// acquire counts globs (which may repeat) once more for ip, unless that
// would take ip past max distinct globs: it then returns a nil release and
// the count it would have reached. release takes them back, once.
func (c *globCounter) acquire(ip string, globs []string) (release func(), n int) {
	if len(globs) == 0 {
		return func() {}, 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	held := c.byIP[ip]
	n = len(held)
	for i, g := range globs {
		if held[g] == 0 && !slices.Contains(globs[:i], g) {
			n++
		}
	}
	if c.max > 0 && n > c.max {
		return nil, n
	}
	if held == nil {
		held = make(map[string]int)
		c.byIP[ip] = held
	}
	for _, g := range globs {
		held[g]++
	}
	return sync.OnceFunc(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, g := range globs {
			if held[g]--; held[g] == 0 {
				delete(held, g)
			}
		}
		if len(held) == 0 {
			delete(c.byIP, ip)
		}
	}), n
}

// ipCounter counts the open streams of each client address, up to max
// each (0: no limit). Its map holds only addresses with a stream open, so
// -max-subscribers bounds it. It is safe for concurrent use.
type ipCounter struct {
	max int

	mu sync.Mutex // guards n
	n  map[string]int
}

func newIPCounter(perIP int) *ipCounter {
	return &ipCounter{max: perIP, n: make(map[string]int)}
}

// acquire counts one more stream of ip, unless ip has max already. Each
// successful acquire must be followed by one release.
func (c *ipCounter) acquire(ip string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.max > 0 && c.n[ip] >= c.max {
		return false
	}
	c.n[ip]++
	return true
}

// release counts one stream of ip fewer.
func (c *ipCounter) release(ip string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[ip]--; c.n[ip] <= 0 {
		delete(c.n, ip)
	}
}
