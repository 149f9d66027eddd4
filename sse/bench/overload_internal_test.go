package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"kvsse/sse"
	"kvsse/sse/server/servertest"
)

// BenchmarkOverloadedStream measures what a stream whose reader cannot
// keep up costs the server, per event it delivers: a plain stream, which
// the server ends as too slow and which resumes by Last-Event-ID (as
// EventSource does), against a coalescing one (coalesce=1), which is never
// ended. The server is the real binary; its CPU time comes from /proc.
// Writers change 20 keys (1 KiB values, so that a stream's backlog soon
// outgrows the sockets' buffers) as fast as the server answers, in
// transactions of 20 changes, while 100 readers each take at most 64 KiB a
// second; once the writes end, the readers read at full speed until each
// has seen the last one.
//
// Each run first makes b.N changes with no stream open, then b.N changes
// with the readers: server-µs/event is the CPU time the second phase took
// until every reader caught up, beyond the first, divided by the events
// the readers got; server-µs/write is the same extra time per change.
// The server's CPU time is counted in ticks of 10 ms: run at least
// 40,000 changes.
//
//	go test -run '^$' -bench OverloadedStream -benchtime 40000x -count 3 ./sse/bench
func BenchmarkOverloadedStream(b *testing.B) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		b.Skip("needs Linux /proc for the server's CPU time")
	}
	for _, mode := range []string{"plain", "coalesce"} {
		b.Run(mode, func(b *testing.B) {
			p := servertest.StartProc(b, "-memory", "-write-rate", "0") // the writers are one address
			pid := p.Cmd.Process.Pid
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
			defer client.CloseIdleConnections()

			b.ResetTimer()
			cpu := func() time.Duration {
				d, err := procCPU(pid)
				if err != nil {
					b.Fatal(err)
				}
				return d
			}
			cpu0 := cpu()
			overloadWrites(b, client, p.URL, b.N)
			cpu1 := cpu()

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			readers := make([]*slowReader, 100)
			var wg sync.WaitGroup
			for i := range readers {
				readers[i] = &slowReader{coalesce: mode == "coalesce", opened: make(chan struct{})}
				readers[i].slow.Store(true)
				wg.Add(1)
				go func() {
					defer wg.Done()
					readers[i].run(ctx, client, p.URL)
				}()
			}
			for _, r := range readers {
				<-r.opened
			}
			cpu2 := cpu()
			overloadWrites(b, client, p.URL, b.N)
			last := servertest.Put(b, p.URL, "load/end", "1")
			var delivered, resumes int64
			for _, r := range readers {
				r.slow.Store(false)
			}
			deadline := time.Now().Add(2 * time.Minute)
			for _, r := range readers {
				for r.last.Load() < last {
					if time.Now().After(deadline) {
						b.Fatalf("a reader is at revision %d of %d after 2 minutes", r.last.Load(), last)
					}
					time.Sleep(10 * time.Millisecond)
				}
				delivered += r.delivered.Load()
				resumes += r.resumes.Load()
			}
			cpu3 := cpu()
			cancel()
			wg.Wait()
			b.StopTimer()

			extra := (cpu3 - cpu2) - (cpu1 - cpu0)
			b.ReportMetric(float64(extra.Microseconds())/float64(delivered), "server-µs/event")
			b.ReportMetric(float64(extra.Microseconds())/float64(b.N), "server-µs/write")
			b.ReportMetric(float64(delivered)/float64(b.N), "events/write")
			b.ReportMetric(float64(resumes), "resumes")
		})
	}
}

// overloadWrites makes n changes of 1 KiB values to the keys load/0 to
// load/19, in transactions that each change all 20 (txnBody, as "kvsse
// bench -txn 20" makes them), from 4 connections: a transaction costs the
// server about as much HTTP work as one PUT, so the cost of the streams
// stands out of that of the writes.
func overloadWrites(b *testing.B, client *http.Client, base string, n int) {
	l := &load{cfg: &config{txn: 20}}
	for k := range 20 {
		l.keys = append(l.keys, fmt.Sprintf("load/%d", k))
	}
	pad := strings.Repeat("x", 1000)
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	for range 4 {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if (i-1)*20 >= int64(n) {
					return
				}
				body := l.txnBody(0, []byte(strconv.FormatInt(i, 10)+pad))
				resp, data, err := servertest.Do(context.Background(), client, http.MethodPost, base+"/txn", string(body))
				if err == nil && resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("POST /txn: %s: %s", resp.Status, data)
				}
				if err != nil {
					failed.Store(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err, ok := failed.Load().(error); ok {
		b.Fatal(err)
	}
}

// slowReader follows /watch/load/** until its context ends, counting the
// events it gets; a plain stream that ends is resumed from the last id, as
// EventSource would.
type slowReader struct {
	coalesce  bool
	opened    chan struct{} // closed once the first stream is open
	once      sync.Once
	slow      atomic.Bool  // read at most 64 KiB a second
	last      atomic.Int64 // the last id seen
	delivered atomic.Int64
	resumes   atomic.Int64
}

func (s *slowReader) run(ctx context.Context, client *http.Client, base string) {
	u := base + "/watch/load/**"
	if s.coalesce {
		u += "?coalesce=1"
	}
	for ctx.Err() == nil {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return
		}
		if last := s.last.Load(); last > 0 {
			req.Header.Set("Last-Event-ID", strconv.FormatInt(last, 10))
			s.resumes.Add(1)
		}
		resp, err := client.Do(req)
		if err != nil {
			continue
		}
		s.once.Do(func() { close(s.opened) })
		rd := sse.NewReaderSize(&throttled{r: resp.Body, on: &s.slow, perSecond: 64 << 10}, 1<<20)
		for {
			m, err := rd.Next()
			if err != nil {
				break
			}
			if m.Event == "put" || m.Event == "delete" {
				s.delivered.Add(1)
			}
			if id, err := strconv.ParseInt(rd.LastEventID(), 10, 64); err == nil {
				s.last.Store(id)
			}
		}
		resp.Body.Close()
	}
}

// throttled reads from r, while on holds true, at most perSecond bytes a
// second, in reads of at most 4 KiB.
type throttled struct {
	r         io.Reader
	on        *atomic.Bool
	perSecond int
	start     time.Time
	n         int
}

func (t *throttled) Read(p []byte) (int, error) {
	if !t.on.Load() {
		return t.r.Read(p)
	}
	if t.start.IsZero() {
		t.start = time.Now()
	}
	if due := t.start.Add(time.Duration(t.n) * time.Second / time.Duration(t.perSecond)); time.Until(due) > 0 {
		time.Sleep(time.Until(due))
	}
	n, err := t.r.Read(p[:min(len(p), 4096)])
	t.n += n
	return n, err
}
