package sse

import (
	"errors"
	"sync"
	"syscall"
)

// canPoll says that a Pool can take connections over here.
const canPoll = true

// poller notices clients that close their end of a connection the pool
// took over, with an epoll set of its own: no read waits on each
// connection. It registers each connection for input and hang-up, one
// event at a time (EPOLLONESHOT), and on an event reads what came without
// waiting: end of file ends the stream; bytes (a client may pipeline a
// request that will never be answered) are dropped and the connection is
// armed again.
type poller struct {
	epfd int
	wake [2]int // a pipe: a byte in it ends run

	mu    sync.Mutex // guards conns
	conns map[int32]*conn
}

// newPoller returns a poller, or nil when the system refuses one: the
// pool then notices closed clients only when a write fails.
func newPoller() *poller {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil
	}
	pl := &poller{epfd: epfd, conns: make(map[int32]*conn)}
	if err := syscall.Pipe2(pl.wake[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		syscall.Close(epfd)
		return nil
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(pl.wake[0])}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, pl.wake[0], &ev); err != nil {
		pl.free()
		return nil
	}
	return pl
}

const pollEvents = syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT

// add watches c's connection. When it cannot, c is noticed gone only
// when a write fails.
func (pl *poller) add(c *conn) {
	c.raw.Control(func(fd uintptr) {
		pl.mu.Lock()
		pl.conns[int32(fd)] = c
		pl.mu.Unlock()
		ev := syscall.EpollEvent{Events: pollEvents, Fd: int32(fd)}
		if syscall.EpollCtl(pl.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev) != nil {
			pl.mu.Lock()
			delete(pl.conns, int32(fd))
			pl.mu.Unlock()
		}
	})
}

// remove stops watching c's connection, which must still be open.
func (pl *poller) remove(c *conn) {
	c.raw.Control(func(fd uintptr) {
		pl.mu.Lock()
		if pl.conns[int32(fd)] == c {
			delete(pl.conns, int32(fd))
		}
		pl.mu.Unlock()
		syscall.EpollCtl(pl.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil)
	})
}

// run waits for events until close. An event may be stale (its
// connection closed, even its descriptor reused): everything it leads to
// goes through the conn's own RawConn, which fails on a closed
// connection, and a live one is only read without waiting.
func (pl *poller) run() {
	events := make([]syscall.EpollEvent, 128)
	for {
		n, err := syscall.EpollWait(pl.epfd, events, -1)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			return
		}
		for _, ev := range events[:n] {
			if int(ev.Fd) == pl.wake[0] {
				return
			}
			pl.mu.Lock()
			c := pl.conns[ev.Fd]
			pl.mu.Unlock()
			if c != nil {
				pl.check(c)
			}
		}
	}
}

// check reads what came on c's connection without waiting: on end of
// file or an error the client is gone; otherwise the connection is armed
// again.
func (pl *poller) check(c *conn) {
	var buf [512]byte
	gone := false
	err := c.raw.Read(func(fd uintptr) bool {
		for range 64 { // a client that keeps sending gets the next turn later
			n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_DONTWAIT)
			switch {
			case err == syscall.EINTR:
				continue
			case err == syscall.EAGAIN:
				return true
			case err != nil || n == 0:
				gone = true
				return true
			}
		}
		return true
	})
	if err != nil || gone {
		c.gone.Store(true)
		c.schedule()
		return
	}
	c.raw.Control(func(fd uintptr) {
		ev := syscall.EpollEvent{Events: pollEvents, Fd: int32(fd)}
		syscall.EpollCtl(pl.epfd, syscall.EPOLL_CTL_MOD, int(fd), &ev)
	})
}

// close makes run return; the caller waits for it, then calls free.
func (pl *poller) close() {
	syscall.Write(pl.wake[1], []byte{0})
}

// free releases the poller's descriptors once run has returned.
func (pl *poller) free() {
	syscall.Close(pl.wake[0])
	syscall.Close(pl.wake[1])
	syscall.Close(pl.epfd)
}

// tryWrite writes what of b the socket takes at once, without waiting.
func (c *conn) tryWrite(b []byte) (int, error) {
	if c.raw == nil {
		return 0, nil
	}
	var n int
	var werr error
	err := c.raw.Write(func(fd uintptr) bool {
		for n < len(b) {
			m, err := syscall.Write(int(fd), b[n:])
			if m > 0 {
				n += m
			}
			switch {
			case err == syscall.EINTR:
			case err == syscall.EAGAIN:
				return true
			case err != nil:
				werr = err
				return true
			case m == 0:
				return true
			}
		}
		return true
	})
	if err == nil {
		err = werr
	}
	return n, err
}
