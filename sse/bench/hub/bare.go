package hub

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
)

// Bare returns the baseline for GET and PUT throughput: a plain net/http
// handler, keeping nothing, that answers GET /kv/{key...} with the same 64
// bytes, PUT /kv/{key...} by reading the body and answering 200, and GET
// /healthz with 200.
func Bare() http.Handler {
	return bare(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
	})
}

func bare(put http.HandlerFunc) http.Handler {
	value := bytes.Repeat([]byte("x"), 64)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /kv/{key...}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(value)
	})
	mux.HandleFunc("PUT /kv/{key...}", put)
	mux.HandleFunc("GET /healthz", func(http.ResponseWriter, *http.Request) {})
	return mux
}

// Synced is the baseline for PUT throughput with fsync: the bare handler
// whose PUT answers only once the body is appended to a file and the file
// is synced. The bodies that arrive during one sync share the next one
// (group commit). There is no record format, index, map or event: this is
// the least a net/http server can do before it acknowledges a write as
// durable, so it is the most that kvsse's PUT with -sync always can reach.
type Synced struct {
	f      *os.File
	mu     sync.Mutex // guards next and closed
	next   *group     // the bodies waiting for the next sync
	closed bool
	wake   chan struct{} // capacity 1: next holds bodies
	quit   chan struct{} // closed by Close
	done   chan struct{} // closed when the syncing goroutine ends
}

// group is the bodies that one write and sync make durable.
type group struct {
	buf  []byte
	err  error         // set before done is closed
	done chan struct{} // closed once buf is synced, or failed
}

func newGroup() *group { return &group{done: make(chan struct{})} }

// NewSynced appends the bodies of PUTs to f. One goroutine writes and
// syncs them until Close.
func NewSynced(f *os.File) *Synced {
	s := &Synced{f: f, next: newGroup(), wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
	go s.run()
	return s
}

// Handler is Bare's routes with the durable PUT: 200 once the body is on
// disk, 503 when the write or sync failed or s is closed.
func (s *Synced) Handler() http.Handler {
	return bare(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err := s.append(b); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		}
	})
}

// append adds b to the next group and waits until that group is synced.
func (s *Synced) append(b []byte) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	g := s.next
	g.buf = append(g.buf, b...)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default: // a wake-up is already pending
	}
	<-g.done
	return g.err
}

func (s *Synced) run() {
	defer close(s.done)
	for {
		select {
		case <-s.wake:
			s.sync()
		case <-s.quit:
			s.sync() // what was appended before Close
			return
		}
	}
}

// sync writes and syncs the waiting group, and starts the next.
func (s *Synced) sync() {
	s.mu.Lock()
	g := s.next
	s.next = newGroup()
	s.mu.Unlock()
	if len(g.buf) > 0 {
		_, err := s.f.Write(g.buf)
		if err == nil {
			err = s.f.Sync()
		}
		if err != nil {
			g.err = fmt.Errorf("hub: log: %w", err)
		}
	}
	close(g.done)
}

// Close syncs what was appended, ends the syncing goroutine and makes
// later PUTs fail. It does not close the file.
func (s *Synced) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	close(s.quit)
	<-s.done
}
