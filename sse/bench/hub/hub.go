// Package hub is the plain Go Server-Sent Events hub that "kvsse bench
// -baseline" measures kvsse against: what fanning writes out to streams
// costs with nothing else on the path. It keeps nothing (no store, log,
// history or resume) and answers the routes the bench uses, so the same
// load drives both. [Bare] is the baseline for GET and PUT throughput.
package hub

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
)

// Buffer is how many messages a subscriber may have queued; one more
// drops it.
const Buffer = 1024

// maxBatch is how many queued messages a stream writes before one flush.
const maxBatch = 64

// ErrClosed is returned by Subscribe once the hub is closed.
var ErrClosed = errors.New("hub: closed")

// Hub fans published messages out to its subscribers. Its methods are
// safe for concurrent use.
type Hub struct {
	// mu guards rev, subs and closed. Publish holds it across its sends,
	// so every subscriber queues messages in revision order.
	mu     sync.Mutex
	rev    int64
	subs   map[*Subscription]struct{}
	closed bool
}

// New returns an empty hub at revision 0.
func New() *Hub { return &Hub{subs: map[*Subscription]struct{}{}} }

// Subscription is one subscriber's queue.
type Subscription struct {
	// C yields the encoded SSE events of the matching messages published
	// after Revision. The hub closes it when the subscriber is dropped
	// (its queue was full), unsubscribed or the hub closed.
	C        <-chan []byte
	Revision int64

	c        chan []byte
	prefixes []string // a key matches when it starts with one
	keys     []string // or equals one
}

// Subscribe adds a subscriber to the keys matching any of patterns: "**"
// (every key), "PREFIX/**" or an exact key. Other patterns are an error.
func (h *Hub) Subscribe(patterns ...string) (*Subscription, error) {
	c := make(chan []byte, Buffer)
	s := &Subscription{C: c, c: c}
	for _, p := range patterns {
		switch prefix, ok := strings.CutSuffix(p, "**"); {
		case p == "**":
			s.prefixes = append(s.prefixes, "")
		case ok && strings.HasSuffix(prefix, "/") && !strings.Contains(prefix, "*"):
			s.prefixes = append(s.prefixes, prefix)
		case p != "" && !strings.Contains(p, "*"):
			s.keys = append(s.keys, p)
		default:
			return nil, fmt.Errorf("hub: pattern %q: only **, PREFIX/** and exact keys are supported", p)
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, ErrClosed
	}
	s.Revision = h.rev
	h.subs[s] = struct{}{}
	return s, nil
}

func (s *Subscription) match(key string) bool {
	for _, p := range s.prefixes {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	for _, k := range s.keys {
		if k == key {
			return true
		}
	}
	return false
}

// Unsubscribe removes s and closes s.C, unless the hub already did.
func (h *Hub) Unsubscribe(s *Subscription) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[s]; ok {
		delete(h.subs, s)
		close(s.c)
	}
}

// Subscribers returns the number of subscribers.
func (h *Hub) Subscribers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}

// Publish gives key's new value the next revision and queues its event,
// encoded once, to every matching subscriber, without waiting: a
// subscriber whose queue is full is dropped. It returns the revision.
// Its cost is one encoding plus one channel send per subscriber.
func (h *Hub) Publish(key string, value []byte) int64 {
	data, _ := json.Marshal(struct { // strings cannot fail
		Key   string `json:"key"`
		Value string `json:"value"`
	}{key, string(value)})
	h.mu.Lock()
	defer h.mu.Unlock()
	h.rev++
	m := make([]byte, 0, len(data)+64)
	m = strconv.AppendInt(append(m, "id: "...), h.rev, 10)
	m = append(append(m, "\nevent: put\ndata: "...), data[:len(data)-1]...)
	m = strconv.AppendInt(append(m, `,"revision":`...), h.rev, 10)
	m = append(m, "}\n\n"...)
	for s := range h.subs {
		if !s.match(key) {
			continue
		}
		select {
		case s.c <- m:
		default:
			delete(h.subs, s)
			close(s.c)
		}
	}
	return h.rev
}

// Close ends every subscription, and Subscribe fails from then on. Call
// it before http.Server.Shutdown, which waits for the streams to end.
func (h *Hub) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for s := range h.subs {
		delete(h.subs, s)
		close(s.c)
	}
}

// Handler serves PUT /kv/{key...} (publish the body; 200 with the
// revision in Kvsse-Revision), GET /watch and GET /watch/{pattern...}
// (an SSE stream: retry, one sync event at the current revision, then
// every matching message; patterns from the path and ?pattern=, "**" when
// none) and GET /healthz. Last-Event-ID is ignored: a dropped subscriber
// that comes back has lost what it missed.
func (h *Hub) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /kv/{key...}", func(w http.ResponseWriter, r *http.Request) {
		value, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Kvsse-Revision", strconv.FormatInt(h.Publish(r.PathValue("key"), value), 10))
	})
	mux.HandleFunc("GET /watch", h.watch)
	mux.HandleFunc("GET /watch/{pattern...}", h.watch)
	mux.HandleFunc("GET /healthz", func(http.ResponseWriter, *http.Request) {})
	return mux
}

// watch is the stream: the only writer of w, in the handler's goroutine.
func (h *Hub) watch(w http.ResponseWriter, r *http.Request) {
	patterns := r.URL.Query()["pattern"]
	if p := r.PathValue("pattern"); p != "" {
		patterns = append(patterns, p)
	}
	if len(patterns) == 0 {
		patterns = []string{"**"}
	}
	s, err := h.Subscribe(patterns...)
	switch {
	case errors.Is(err, ErrClosed):
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	case err != nil:
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	defer h.Unsubscribe(s)
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	buf := fmt.Appendf(nil, "retry: 2000\n\nid: %d\nevent: sync\ndata: {\"revision\":%d}\n\n", s.Revision, s.Revision)
	for {
		if _, err := w.Write(buf); err != nil || rc.Flush() != nil {
			return
		}
		buf = buf[:0]
		select {
		case <-r.Context().Done():
			return
		case m, ok := <-s.C:
			if !ok {
				return
			}
			buf = append(buf, m...)
		}
	drain: // what is already queued goes out with it, before one flush
		for range maxBatch - 1 {
			select {
			case m, ok := <-s.C:
				if !ok {
					break drain // written first; the next receive ends the stream
				}
				buf = append(buf, m...)
			default:
				break drain
			}
		}
	}
}
