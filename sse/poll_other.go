//go:build !linux

package sse

// canPoll says that a Pool can take connections over here: not without
// epoll, so every stream keeps the ordinary path.
const canPoll = false

type poller struct{}

func newPoller() *poller          { return nil }
func (pl *poller) add(c *conn)    {}
func (pl *poller) remove(c *conn) {}
func (pl *poller) run()           {}
func (pl *poller) close()         {}
func (pl *poller) free()          {}

// tryWrite leaves every write to a goroutine that may wait.
func (c *conn) tryWrite(b []byte) (int, error) { return 0, nil }
