package server_test

import (
	"bufio"
	"bytes"
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
//	go test -run '^$' -bench OverloadedStream -benchtime 40000x -count 3 ./sse/server
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
			cpu0 := procCPU(b, pid)
			overloadWrites(b, client, p.URL, b.N)
			cpu1 := procCPU(b, pid)

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
			cpu2 := procCPU(b, pid)
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
			cpu3 := procCPU(b, pid)
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
// load/19, in transactions that each change all 20, from 4 connections:
// a transaction costs the server about as much HTTP work as one PUT, so
// the cost of the streams stands out of that of the writes.
func overloadWrites(b *testing.B, client *http.Client, base string, n int) {
	pad := strings.Repeat("x", 1000)
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if (i-1)*20 >= int64(n) {
					return
				}
				var body strings.Builder
				body.WriteString(`{"then":[`)
				for k := range 20 {
					if k > 0 {
						body.WriteByte(',')
					}
					fmt.Fprintf(&body, `{"put":"load/%d","value":"%d%s"}`, k, i, pad)
				}
				body.WriteString(`]}`)
				resp, data, err := servertest.Do(context.Background(), client, http.MethodPost, base+"/txn", body.String())
				if err == nil && resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("POST /txn: %s: %s", resp.Status, data)
				}
				if err != nil {
					failed.Store(err)
					return
				}
			}
		}()
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
		sc := bufio.NewScanner(&throttled{r: resp.Body, on: &s.slow, perSecond: 64 << 10})
		for sc.Scan() {
			line := sc.Bytes()
			switch {
			case bytes.HasPrefix(line, []byte("data:")):
				s.delivered.Add(1)
			case bytes.HasPrefix(line, []byte("id:")):
				if id, err := strconv.ParseInt(string(bytes.TrimSpace(line[3:])), 10, 64); err == nil {
					s.last.Store(id)
				}
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

// procCPU returns the user and system CPU time of process pid.
func procCPU(b *testing.B, pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// The fields after the command name, which is in parentheses.
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	utime, err := strconv.ParseInt(f[11], 10, 64)
	if err != nil {
		b.Fatal(err)
	}
	stime, err := strconv.ParseInt(f[12], 10, 64)
	if err != nil {
		b.Fatal(err)
	}
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}
