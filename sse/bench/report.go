package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// procCPU returns the user and system CPU time of process pid, from
// /proc/PID/stat, whose clock ticks are 1/100 s on Linux (USER_HZ).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("bench: -pid: %w", err)
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("bench: -pid: /proc/%d/stat: too few fields", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("bench: -pid: /proc/%d/stat: %w", pid, err)
	}
	return time.Duration(utime+stime) * (time.Second / 100), nil
}

// procRSS returns the resident set size of process pid in KiB, from
// /proc/PID/status.
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("bench: -pid: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("bench: -pid: /proc/%d/status has no VmRSS", pid)
}

// result is what "kvsse bench" prints. Durations are in milliseconds.
type result struct {
	Writers      int     `json:"writers"`
	Subscribers  int     `json:"subscribers"`
	Format       string  `json:"format"`
	Pattern      string  `json:"pattern"`
	Seconds      float64 `json:"seconds"` // from the first write to the last acknowledgement
	Writes       int64   `json:"writes"`  // acknowledged
	WritesPerSec float64 `json:"writes_per_sec"`
	Txn          int     `json:"txn,omitempty"` // keys a write changed by a transaction
	KeysPerSec   float64 `json:"keys_per_sec"`  // keys changed a second: writes/s, times -txn
	WriteErrors  int64   `json:"write_errors"`
	PutP50       float64 `json:"put_p50_ms"`
	PutP99       float64 `json:"put_p99_ms"`
	PutMax       float64 `json:"put_max_ms"`
	Events       int64   `json:"events"`          // revisions delivered whole (a transaction's changes count once), all subscribers together
	Expected     int64   `json:"events_expected"` // acknowledged changes matching each one's pattern
	EventsPerSec float64 `json:"events_per_sec"`  // from the first write to the last event
	LatencyP50   float64 `json:"latency_p50_ms"`
	LatencyP90   float64 `json:"latency_p90_ms"`
	LatencyP99   float64 `json:"latency_p99_ms"`
	LatencyMax   float64 `json:"latency_max_ms"`
	Gaps         int64   `json:"gaps"`
	Duplicates   int64   `json:"duplicates"`
	OutOfOrder   int64   `json:"out_of_order"`
	Unexpected   int64   `json:"unexpected"` // changes neither acknowledged nor matching
	Reconnects   int64   `json:"reconnects"`
	Resets       int64   `json:"resets"`

	Server   *serverFigures `json:"server,omitempty"`
	Failures []string       `json:"failures,omitempty"`
}

// serverFigures are the server's CPU time (from the first write until
// every change was delivered) and resident memory: before the subscribers
// connected, once they all were, and at the end.
type serverFigures struct {
	CPUSeconds          float64 `json:"cpu_seconds"`
	CPUPerEventMicros   float64 `json:"cpu_us_per_event,omitempty"`
	CPUPerWriteMicros   float64 `json:"cpu_us_per_write,omitempty"`
	RSSBeforeKiB        int64   `json:"rss_before_kib"`
	RSSConnectedKiB     int64   `json:"rss_connected_kib"`
	RSSAfterKiB         int64   `json:"rss_after_kib"`
	RSSPerSubscriberKiB float64 `json:"rss_per_subscriber_kib,omitempty"`
}

func (f *serverFigures) derive(r *result) {
	if r.Events > 0 {
		f.CPUPerEventMicros = f.CPUSeconds * 1e6 / float64(r.Events)
	}
	if r.Writes > 0 {
		f.CPUPerWriteMicros = f.CPUSeconds * 1e6 / float64(r.Writes)
	}
	if r.Subscribers > 0 {
		f.RSSPerSubscriberKiB = float64(f.RSSConnectedKiB-f.RSSBeforeKiB) / float64(r.Subscribers)
	}
}

func millis(d time.Duration) float64 { return float64(d) / 1e6 }

// result gathers the figures and checks each subscriber against the
// acknowledged writes.
func (b *load) figures(writers []writer, subs []*subscriber, a *acks) *result {
	cfg := b.cfg
	r := &result{Writers: cfg.writers, Subscribers: cfg.subscribers, Format: cfg.format, Pattern: cfg.pattern, Txn: cfg.txn}
	var put histogram
	var firstErr error
	lastAck := b.start
	for i := range writers {
		w := &writers[i]
		r.Writes += int64(len(w.acked) / max(cfg.txn, 1)) // a transaction acknowledges -txn keys at one revision
		r.WriteErrors += w.errors
		if firstErr == nil {
			firstErr = w.firstErr
		}
		put.merge(&w.lat)
		if w.lastAck.After(lastAck) {
			lastAck = w.lastAck
		}
	}
	if d := lastAck.Sub(b.start).Seconds(); d > 0 {
		r.Seconds = d
		r.WritesPerSec = float64(r.Writes) / d
		r.KeysPerSec = r.WritesPerSec * float64(max(r.Txn, 1))
	}
	r.PutP50, r.PutP99, r.PutMax = millis(put.quantile(0.5)), millis(put.quantile(0.99)), millis(time.Duration(put.max))
	switch {
	case r.WriteErrors > 0:
		r.Failures = append(r.Failures, fmt.Sprintf("%d of %d writes failed, the first: %v", r.WriteErrors, r.Writes+r.WriteErrors, firstErr))
	case r.Writes == 0:
		r.Failures = append(r.Failures, "no write was made")
	}

	var lat histogram
	lastEvent := b.start
	var bad []string
	for _, s := range subs {
		var expected, matched, gaps int64
		lowest := int64(-1)
		// A transaction's keys share its revision: a subscriber receives
		// the revision once, whatever number of its keys it matches.
		counted := map[int64]bool{}
		for _, k := range s.keys {
			for _, rev := range a.byKey[k] {
				if cfg.txn > 0 {
					if counted[rev] {
						continue
					}
					counted[rev] = true
				}
				expected++
				if s.has(rev) {
					matched++
				} else if gaps++; lowest < 0 || rev < lowest {
					lowest = rev
				}
			}
		}
		unexpected := s.events - s.dups - matched
		r.Events += s.events
		r.Expected += expected
		r.Gaps += gaps
		r.Duplicates += s.dups
		r.OutOfOrder += s.outOfOrder
		r.Unexpected += unexpected
		r.Reconnects += s.reconnects
		r.Resets += s.resets
		lat.merge(&s.lat)
		if s.lastEvent.After(lastEvent) {
			lastEvent = s.lastEvent
		}

		var why []string
		if gaps > 0 {
			why = append(why, fmt.Sprintf("missed %d of %d changes (a gap), the lowest at revision %d", gaps, expected, lowest))
		}
		if s.dups > 0 {
			why = append(why, fmt.Sprintf("%d duplicate changes", s.dups))
		}
		if s.outOfOrder > 0 {
			why = append(why, fmt.Sprintf("%d changes out of order", s.outOfOrder))
		}
		if unexpected > 0 && r.WriteErrors == 0 {
			why = append(why, fmt.Sprintf("%d changes that no write made or its pattern does not match", unexpected))
		}
		if len(why) > 0 {
			if s.lastErr != nil {
				why = append(why, fmt.Sprintf("%d reconnects, the last after: %v", s.reconnects, s.lastErr))
			}
			bad = append(bad, fmt.Sprintf("subscriber %d (%s): %s", s.n, s.pattern, strings.Join(why, ", ")))
		}
	}
	if d := lastEvent.Sub(b.start).Seconds(); d > 0 {
		r.EventsPerSec = float64(r.Events) / d
	}
	r.LatencyP50, r.LatencyP90, r.LatencyP99 = millis(lat.quantile(0.5)), millis(lat.quantile(0.9)), millis(lat.quantile(0.99))
	r.LatencyMax = millis(time.Duration(lat.max))
	const shown = 3
	if len(bad) > shown {
		bad = append(bad[:shown], fmt.Sprintf("and %d more subscribers", len(bad)-shown))
	}
	r.Failures = append(r.Failures, bad...)
	return r
}

// print writes the figures one a line, then, with asJSON, as one JSON
// object on the last line.
func (r *result) print(w io.Writer, asJSON bool) error {
	var b bytes.Buffer
	line := func(name, format string, a ...any) {
		fmt.Fprintf(&b, "%-26s "+format+"\n", append([]any{name}, a...)...)
	}
	// Most figures are counts or latencies.
	count := func(name string, n int64) { line(name, "%d", n) }
	ms := func(name string, v float64) { line(name, "%.3f ms", v) }
	line("writers", "%d", r.Writers)
	if r.Subscribers > 0 {
		line("subscribers", "%d (%s, %s)", r.Subscribers, r.Format, r.Pattern)
	} else {
		line("subscribers", "0")
	}
	line("seconds", "%.3f", r.Seconds)
	count("writes", r.Writes)
	line("writes/s", "%.1f", r.WritesPerSec)
	if r.Txn > 0 {
		line("keys/s", "%.1f (transactions of %d keys)", r.KeysPerSec, r.Txn)
	}
	count("write errors", r.WriteErrors)
	ms("put latency p50", r.PutP50)
	ms("put latency p99", r.PutP99)
	ms("put latency max", r.PutMax)
	if r.Subscribers > 0 {
		count("events delivered", r.Events)
		count("events expected", r.Expected)
		line("events/s", "%.1f", r.EventsPerSec)
		ms("latency p50", r.LatencyP50)
		ms("latency p90", r.LatencyP90)
		ms("latency p99", r.LatencyP99)
		ms("latency max", r.LatencyMax)
		count("gaps", r.Gaps)
		count("duplicates", r.Duplicates)
		count("out of order", r.OutOfOrder)
		count("unexpected", r.Unexpected)
		count("reconnects", r.Reconnects)
		count("resets", r.Resets)
	}
	if s := r.Server; s != nil {
		line("server cpu", "%.2f s", s.CPUSeconds)
		if r.Events > 0 {
			line("server cpu per event", "%.2f µs", s.CPUPerEventMicros)
		}
		if r.Writes > 0 {
			line("server cpu per write", "%.1f µs", s.CPUPerWriteMicros)
		}
		line("server rss before", "%d KiB", s.RSSBeforeKiB)
		line("server rss connected", "%d KiB", s.RSSConnectedKiB)
		line("server rss after", "%d KiB", s.RSSAfterKiB)
		if r.Subscribers > 0 {
			line("server rss per subscriber", "%.1f KiB", s.RSSPerSubscriberKiB)
		}
	}
	if len(r.Failures) == 0 {
		line("checks", "ok")
	} else {
		line("checks", "FAILED")
	}
	return writeReport(w, &b, asJSON, r)
}

// writeReport writes the text report in b and, with asJSON, v as one
// JSON line after it.
func writeReport(w io.Writer, b *bytes.Buffer, asJSON bool, v any) error {
	if asJSON {
		j, err := json.Marshal(v)
		if err != nil {
			return err
		}
		b.Write(j)
		b.WriteByte('\n')
	}
	_, err := w.Write(b.Bytes())
	return err
}
