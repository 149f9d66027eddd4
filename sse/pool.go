package sse

import (
	"context"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"kvsse/kv"
)

// Pool serves the live part of streams on HTTP/1.1 connections in clear
// without a goroutine for each. Once a stream's catch-up is written, the
// pool takes its connection over from net/http (it hijacks it): the
// handler's goroutine and net/http's background read end, and the
// connection's buffers go. An idle stream is then a connection, its
// subscription, a timer and a little state; a few worker goroutines write
// to the streams that have something to write. At 10,000 idle streams
// this is about 4 KiB of server memory a stream instead of 43 (two
// goroutine stacks, the connection's read and write buffers), and a
// delivery costs less CPU (a worker writes many streams in turn, where
// each stream's goroutine had to be woken). Behind a proxy, which speaks
// HTTP/1.1 in clear to kvsse, every stream takes this path.
//
// Writes never block a worker: they are made without waiting (the socket
// takes what fits), and only a stream whose client does not read fast
// enough gets a goroutine, for as long as its write waits. A client that
// closes its end is noticed by the poller (Linux epoll), without a read
// under way on each connection. HTTP/2 streams (over TLS or h2c, many on
// one connection), HTTP/1.1 over TLS (a TLS write cannot be tried without
// waiting: one that times out breaks the connection), and every stream on
// other systems keep the ordinary path: [Stream] on the handler's
// goroutine.
//
// A long poll that has to wait (StreamOptions.Poll) is taken over the
// same way, its headers written first, and answered by a worker.
//
// net/http does not track a connection it handed over: [Pool.Close] ends
// them.
type Pool struct {
	workers int

	mu      sync.Mutex // guards the fields below; taken after the feed's locks
	work    sync.Cond  // on mu: queue has streams, or the pool is done
	queue   []*conn    // streams to run, each at most once
	streams map[*conn]struct{}
	ended   sync.Cond // on mu: a stream left streams
	started bool      // the workers and the poller run
	closing bool      // Close was called: every stream is told to stop
	done    bool      // Close ended every stream: the workers return
	poller  *poller   // nil: none (not Linux, or it could not start)
	wg      sync.WaitGroup
}

// NewPool returns a pool that writes with workers goroutines (0: one a
// CPU). It starts them with the first stream it takes over.
func NewPool(workers int) *Pool {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	p := &Pool{workers: workers, streams: make(map[*conn]struct{})}
	p.work.L = &p.mu
	p.ended.L = &p.mu
	return p
}

// Serve writes sub to the client like Stream, and calls done once with
// why the stream ended and the body bytes the pool wrote itself (0 when
// the stream stayed on the handler's goroutine). When the pool takes the
// connection over (an HTTP/1.1 GET in clear), Serve returns as soon as the
// catch-up is written, and done runs later on one of the pool's
// goroutines; otherwise done runs before Serve returns. Serve must run on
// the request's handler goroutine; it does not cancel sub. A nil pool
// takes nothing over.
func (p *Pool) Serve(w http.ResponseWriter, r *http.Request, sub *kv.Subscription, opts StreamOptions, done func(why string, bytes int64)) {
	if opts.Poll != nil {
		p.servePoll(w, r, sub, opts, done)
		return
	}
	if !p.takes(r) {
		done(Stream(w, r, sub, opts), 0)
		return
	}
	// The connection never goes back to net/http: a client must not keep
	// it for another request once the stream ends.
	w.Header().Set("Connection", "close")
	s := newStream(w, sub, opts)
	ok := s.catchUp()
	s.release()
	if !ok {
		done(EndWrite, 0)
		return
	}
	c := p.takeOver(s.rc, sub, opts, done)
	if c == nil {
		return
	}
	c.flushed, c.enc.last = s.flushed, s.enc.last
	p.start(c)
}

// takeOver hijacks a response whose headers (and catch-up) are flushed:
// nothing is left in net/http's buffers. It returns the conn to start,
// or nil when the hijack failed and done was called.
func (p *Pool) takeOver(rc *http.ResponseController, sub *kv.Subscription, opts StreamOptions, done func(why string, bytes int64)) *conn {
	if opts.HandOver != nil {
		opts.HandOver()
		opts.HandOver = nil // it may hold the request: let it go
	}
	nc, _, err := rc.Hijack()
	if err != nil {
		done(EndWrite, 0)
		return nil
	}
	c := &conn{pool: p, nc: nc, done: done}
	c.state.Store(running) // until start has set it up: whatever comes meanwhile waits
	c.live = live{sub: sub, opts: opts, enc: newEncoder(&opts, 0)}
	if sc, ok := nc.(syscall.Conn); ok {
		c.raw, _ = sc.SyscallConn()
	}
	return c
}

// takes reports whether the pool would take r's connection over.
func (p *Pool) takes(r *http.Request) bool {
	if p == nil || !canPoll || r.Method != http.MethodGet || r.TLS != nil || r.ProtoMajor != 1 || r.ProtoMinor < 1 {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.closing
}

// start registers c and arms its signals. A stream that comes while the
// pool is closing stops at once; one that comes after it closed is ended
// here, on the handler's goroutine.
func (p *Pool) start(c *conn) {
	p.mu.Lock()
	if p.done {
		p.mu.Unlock()
		c.endLate()
		return
	}
	if !p.started {
		p.started = true
		p.poller = newPoller()
		p.wg.Add(p.workers)
		for range p.workers {
			go p.work1()
		}
		if p.poller != nil {
			p.wg.Go(p.poller.run)
		}
	}
	p.streams[c] = struct{}{}
	closing := p.closing
	p.mu.Unlock()

	if c.raw != nil && p.poller != nil {
		p.poller.add(c)
	}
	first := jitter(c.opts.Heartbeat)
	if c.poll != nil {
		first = c.poll.waitLeft() // the beat ends a long poll's wait
	}
	c.beat = time.AfterFunc(first, func() {
		c.beatDue.Store(true)
		c.schedule()
	})
	c.stopStop = afterFunc(c.opts.Stop, c.stop)
	c.stopRevoke = afterFunc(c.opts.Revoked, func() {
		c.revoked.Store(true)
		c.schedule()
	})
	if closing {
		c.stop()
	}
	c.sub.OnReady(c.schedule)
	if !c.state.CompareAndSwap(running, idle) { // something came during set-up
		c.state.Store(queued)
		p.enqueue(c)
	}
}

// Close ends every stream the pool took over, as a server shutdown does
// (the retry line, a second's grace for a client that does not read), waits
// for them, and stops the pool's goroutines. Streams that come afterwards
// stay on the ordinary path. It is idempotent.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closing {
		for !p.done {
			p.ended.Wait()
		}
		p.mu.Unlock()
		return
	}
	p.closing = true
	conns := make([]*conn, 0, len(p.streams))
	for c := range p.streams {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.stop()
	}
	// The stop writes have a deadline; in case one is stuck anyway, cut
	// the connections once it is long past.
	force := time.AfterFunc(2*stopGrace, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		for c := range p.streams {
			c.nc.Close()
		}
	})
	defer force.Stop()
	p.mu.Lock()
	for len(p.streams) > 0 {
		p.ended.Wait()
	}
	p.done = true
	p.work.Broadcast()
	p.ended.Broadcast()
	poller := p.poller
	p.mu.Unlock()
	if poller != nil {
		poller.close()
	}
	p.wg.Wait()
	if poller != nil {
		poller.free()
	}
}

// enqueue hands c to a worker. It never blocks for long: it may be called
// by the feed's publisher.
func (p *Pool) enqueue(c *conn) {
	p.mu.Lock()
	p.queue = append(p.queue, c)
	p.mu.Unlock()
	p.work.Signal()
}

// work1 is a worker: it runs the streams queued, until the pool is done.
func (p *Pool) work1() {
	defer p.wg.Done()
	for {
		p.mu.Lock()
		for len(p.queue) == 0 && !p.done {
			p.work.Wait()
		}
		if len(p.queue) == 0 {
			p.mu.Unlock()
			return
		}
		c := p.queue[0]
		p.queue[0] = nil
		p.queue = p.queue[1:]
		p.mu.Unlock()
		c.work()
	}
}

// remove forgets c, which has ended.
func (p *Pool) remove(c *conn) {
	p.mu.Lock()
	delete(p.streams, c)
	p.mu.Unlock()
	p.ended.Broadcast()
}

// afterFunc is context.AfterFunc for a context that may be nil (never
// done).
func afterFunc(ctx context.Context, f func()) (stop func() bool) {
	if ctx == nil {
		return func() bool { return true }
	}
	return context.AfterFunc(ctx, f)
}

// The run states of a conn. A conn is run by one goroutine at a time: a
// worker, or, while its write waits, the goroutine that writes.
const (
	idle     int32 = iota // nothing to do
	queued                // in the pool's queue
	running               // a worker runs it
	again                 // a worker runs it, and something new came meanwhile
	finished              // it has ended: nothing more to do
)

// conn is a stream the pool took over.
type conn struct {
	pool *Pool
	nc   net.Conn
	raw  syscall.RawConn // nil: every write waits on a goroutine of its own
	done func(why string, bytes int64)

	state    atomic.Int32
	stalled  atomic.Bool  // a goroutine is writing pend
	gone     atomic.Bool  // the client closed its end
	beatDue  atomic.Bool  // the heartbeat timer fired
	revoked  atomic.Bool  // opts.Revoked is done
	stopping atomic.Bool  // opts.Stop is done, or the pool closes
	stopAt   atomic.Int64 // when stopping, the deadline of the last writes (Unix ns)

	// Owned by whoever runs the conn (see the run states).
	live
	pend       []byte      // bytes to write, chunk framing included
	werr       error       // the last write's error
	why        string      // set when the stream ends: the last bytes go, then the connection closes
	flushed    time.Time   // when the last write was made
	pace       *time.Timer // made on first use
	bytes      int64       // body bytes written (chunk framing not counted)
	beat       *time.Timer
	stopStop   func() bool
	stopRevoke func() bool
	poll       *pollState // a long poll's, nil for a stream
}

// schedule asks a worker to run c. Any goroutine may call it; it never
// blocks for long.
func (c *conn) schedule() {
	for {
		switch c.state.Load() {
		case idle:
			if c.state.CompareAndSwap(idle, queued) {
				c.pool.enqueue(c)
				return
			}
		case running:
			if c.state.CompareAndSwap(running, again) {
				return
			}
		default: // queued or again: it will run; finished: nothing to do
			return
		}
	}
}

// work runs c on a worker, again while something came meanwhile.
func (c *conn) work() {
	if !c.state.CompareAndSwap(queued, running) {
		return
	}
	for {
		c.run()
		if c.state.CompareAndSwap(running, idle) || !c.state.CompareAndSwap(again, running) {
			return
		}
	}
}

// stop ends the stream as a shutdown does. It cuts the deadline of a
// write under way to the grace left.
func (c *conn) stop() {
	at := time.Now().Add(stopGrace)
	c.stopAt.CompareAndSwap(0, at.UnixNano())
	c.stopping.Store(true)
	c.nc.SetWriteDeadline(time.Unix(0, c.stopAt.Load()))
	c.schedule()
}

// run does what c has to do: end it, or write what is due. It returns at
// once while a write waits.
func (c *conn) run() {
	if c.stalled.Load() {
		return
	}
	if c.why != "" || c.werr != nil {
		c.finish()
		return
	}
	if c.poll != nil {
		c.runPoll()
		return
	}
	switch {
	case c.revoked.Load():
		c.end(EndAuth)
		return
	case c.gone.Load():
		c.why = EndClient
		c.finish()
		return
	case c.stopping.Load():
		c.shutdown()
		c.end(EndShutdown)
		return
	}
	beat := c.beatDue.Swap(false)
	if !beat && !c.more() { // the rest of a batch goes at once
		if wait := c.opts.flushInterval() - time.Since(c.flushed); wait > 0 {
			c.paceFor(wait)
			return
		}
	}
	// A signal that changes were queued may have been spent on a run that
	// went on with a batch taken earlier: once that batch is done, c runs
	// again to take them.
	again := c.more()
	why := ""
	if beat {
		why = c.heartbeat()
	} else {
		why = c.deliver()
	}
	if why != "" {
		c.end(why)
		return
	}
	if beat {
		c.beat.Reset(jitter(c.opts.Heartbeat))
	}
	c.write()
	if (again || c.more()) && !c.stalled.Load() && c.werr == nil {
		c.schedule() // a stalled write schedules c when done
	}
}

// paceFor makes c run again in wait, when the stream may flush again:
// events gathered until then go out with one write.
func (c *conn) paceFor(wait time.Duration) {
	if c.pace == nil {
		c.pace = time.AfterFunc(wait, c.schedule)
		return
	}
	c.pace.Reset(wait)
}

// end ends the stream cleanly for why: what is buffered, then the last
// chunk, go out; then the connection closes.
func (c *conn) end(why string) {
	c.why = why
	c.frame()
	c.pend = append(c.pend, "0\r\n\r\n"...)
	c.write()
	if !c.stalled.Load() {
		c.finish()
	}
}

// frame moves the encoded events into pend as one chunk.
func (c *conn) frame() {
	if len(c.enc.buf) == 0 {
		return
	}
	c.pend = strconv.AppendInt(c.pend, int64(len(c.enc.buf)), 16)
	c.pend = append(c.pend, '\r', '\n')
	c.pend = append(c.pend, c.enc.buf...)
	c.pend = append(c.pend, '\r', '\n')
	c.bytes += int64(len(c.enc.buf))
	c.enc.buf = c.enc.buf[:0]
	if cap(c.enc.buf) > maxKeep {
		c.enc.buf = nil
	}
}

// maxKeep is the largest buffer a stream keeps between writes: a burst's
// bigger buffer goes back to the collector.
const maxKeep = 32 << 10

// write writes pend without waiting: what the socket does not take at
// once is written by a goroutine that may wait (stall).
func (c *conn) write() {
	c.frame()
	if len(c.pend) == 0 {
		return
	}
	n, err := c.tryWrite(c.pend)
	c.flushed = time.Now()
	if err != nil {
		c.werr = err
		c.pend = c.pend[:0]
		c.schedule()
		return
	}
	c.pend = c.pend[:copy(c.pend, c.pend[n:])]
	if len(c.pend) == 0 {
		if cap(c.pend) > maxKeep {
			c.pend = nil
		}
		return
	}
	c.stalled.Store(true)
	c.pool.wg.Go(c.writeStalled)
}

// writeStalled writes pend, waiting up to the write timeout (or the
// grace left, when stopping), then lets a worker run c again.
func (c *conn) writeStalled() {
	if c.opts.WriteTimeout > 0 {
		c.nc.SetWriteDeadline(time.Now().Add(c.opts.WriteTimeout))
	}
	if c.stopping.Load() { // after the deadline above: stop's must win
		c.nc.SetWriteDeadline(time.Unix(0, c.stopAt.Load()))
	}
	_, err := c.nc.Write(c.pend)
	c.nc.SetWriteDeadline(time.Time{}) // writes without waiting check it too
	if c.stopping.Load() {
		c.nc.SetWriteDeadline(time.Unix(0, c.stopAt.Load()))
	}
	c.pend = c.pend[:0]
	if cap(c.pend) > maxKeep {
		c.pend = nil
	}
	if err != nil && c.why == "" {
		c.werr = err
	}
	c.flushed = time.Now()
	c.stalled.Store(false)
	c.schedule()
}

// finish closes the connection of a stream that has ended, and reports
// why.
func (c *conn) finish() {
	why := c.why
	switch {
	case why != "":
	case c.stopping.Load():
		why = EndShutdown // its last write failed, or ran out of grace
	default:
		why = EndWrite
	}
	c.state.Store(finished)
	c.sub.OnReady(nil)
	c.beat.Stop()
	if c.pace != nil {
		c.pace.Stop()
	}
	c.stopStop()
	c.stopRevoke()
	if c.raw != nil && c.pool.poller != nil {
		c.pool.poller.remove(c)
	}
	c.nc.Close()
	c.done(why, c.bytes)
	c.pool.remove(c) // last: Close waits for done to have run
}

// endLate ends, on the caller's goroutine, a stream that came after the
// pool closed: the server is stopping.
func (c *conn) endLate() {
	c.state.Store(finished)
	switch {
	case c.poll != nil:
		c.poll.take()
		c.enc.buf = c.poll.answer(c.enc.buf, false)
	case c.opts.Format == SSE:
		c.enc.retry(c.opts.ShutdownRetry)
	}
	c.frame()
	c.pend = append(c.pend, "0\r\n\r\n"...)
	c.nc.SetWriteDeadline(time.Now().Add(stopGrace))
	c.nc.Write(c.pend)
	c.nc.Close()
	c.done(EndShutdown, c.bytes)
}
