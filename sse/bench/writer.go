package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

// writer is what one writer saw. Only its writer touches it until the
// writers have all ended.
type writer struct {
	server   string // the URL it writes to
	acked    []ack
	errors   int64
	firstErr error
	lat      histogram // PUT round trips
	lastAck  time.Time
}

// ack is an acknowledged write: its revision and the number of its key.
type ack struct {
	rev int64
	key int32
}

// write sends PUTs until the run's writes are all handed out, its time is
// up, or ctx ends. With -rate, write number n (from 0, across all writers)
// is sent at start + n/rate, or at once when the writers are behind; no
// write starts after the end of -duration either way. After a failed
// write, the writer waits (10 ms, doubling up to 1 s) so that a server
// that is gone or restarting is not hammered.
func (b *load) write(ctx context.Context, ws *writer) {
	var backoff time.Duration
	for ctx.Err() == nil {
		n := b.tickets.Add(1) - 1
		if b.cfg.writes > 0 && n >= b.cfg.writes {
			return
		}
		at := time.Now().Add(backoff)
		if b.cfg.rate > 0 {
			if due := b.start.Add(time.Duration(float64(n) * float64(time.Second) / b.cfg.rate)); due.After(at) {
				at = due
			}
		}
		if !b.end.IsZero() && (!at.Before(b.end) || !time.Now().Before(b.end)) {
			return // its time is up, or the writers fell behind -rate until the end
		}
		if !sleepUntil(ctx, at) {
			return
		}
		if b.put(ctx, ws, int(n%int64(len(b.keys)))) {
			backoff = 0
		} else {
			backoff = min(max(2*backoff, 10*time.Millisecond), time.Second)
		}
	}
}

// sleepUntil waits until t, and reports false if ctx ended first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}

// put writes key number k once, records the outcome in ws and reports
// whether the write was acknowledged.
func (b *load) put(ctx context.Context, ws *writer, k int) bool {
	value := make([]byte, b.cfg.valueSize) // the transport may read it after Do returns
	sent := time.Now()
	n := len(strconv.AppendInt(value[:0], sent.UnixNano(), 10))
	for i := n; i < len(value); i++ {
		value[i] = 'x'
	}
	fail := func(err error) {
		if ctx.Err() != nil {
			return // interrupted: not the server's failure
		}
		if ws.errors == 0 {
			ws.firstErr = err
		}
		ws.errors++
	}
	method, url, body := http.MethodPut, ws.server+b.keyPaths[k], value
	if b.cfg.txn > 0 {
		method, url, body = http.MethodPost, ws.server+"/txn", b.txnBody(k, value)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		fail(err)
		return false
	}
	resp, err := b.writeHTTP.Do(req)
	if err != nil {
		fail(err)
		return false
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		fail(fmt.Errorf("PUT %s: %s: %s", b.keys[k], resp.Status, bytes.TrimSpace(msg)))
		return false
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		fail(fmt.Errorf("PUT %s: %w", b.keys[k], err))
		return false
	}
	rev, err := strconv.ParseInt(resp.Header.Get("Kvsse-Revision"), 10, 64)
	if err != nil || rev <= 0 {
		fail(fmt.Errorf("PUT %s: %s without a valid Kvsse-Revision (%q)", b.keys[k], resp.Status, resp.Header.Get("Kvsse-Revision")))
		return false
	}
	ws.lastAck = time.Now()
	ws.lat.record(int64(ws.lastAck.Sub(sent)))
	for i := range max(b.cfg.txn, 1) {
		ws.acked = append(ws.acked, ack{rev: rev, key: int32((k + i) % len(b.keys))})
	}
	return true
}

// txnBody is the transaction that puts value to the -txn keys from number
// k on, in turn.
func (b *load) txnBody(k int, value []byte) []byte {
	body := []byte(`{"then":[`)
	for i := range b.cfg.txn {
		if i > 0 {
			body = append(body, ',')
		}
		body = append(body, `{"put":`...)
		body = strconv.AppendQuote(body, b.keys[(k+i)%len(b.keys)])
		body = append(body, `,"value":`...)
		body = strconv.AppendQuote(body, string(value))
		body = append(body, '}')
	}
	return append(body, "]}"...)
}

// acks are the acknowledged revisions of a run, by key.
type acks struct {
	byKey  [][]int64 // the revisions of each key, in no order
	maxRev []int64   // the highest revision of each key, 0 when none
}

func collectAcks(writers []writer, keys int) *acks {
	a := &acks{byKey: make([][]int64, keys), maxRev: make([]int64, keys)}
	for i := range writers {
		for _, w := range writers[i].acked {
			a.byKey[w.key] = append(a.byKey[w.key], w.rev)
			a.maxRev[w.key] = max(a.maxRev[w.key], w.rev)
		}
	}
	return a
}

// awaitDelivery waits until every subscriber has seen the highest
// acknowledged revision matching its pattern, and reports whether it gave
// up after -sync-timeout instead.
func (b *load) awaitDelivery(ctx context.Context, subs []*subscriber, a *acks) bool {
	targets := make([]int64, len(subs))
	for i, s := range subs {
		for _, k := range s.keys {
			targets[i] = max(targets[i], a.maxRev[k])
		}
	}
	deadline := time.Now().Add(b.cfg.syncTimeout)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for i := 0; i < len(subs); {
		if subs[i].last.Load() >= targets[i] {
			i++
			continue
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return ctx.Err() == nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
	}
	return false
}
