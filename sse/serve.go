package sse

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Banner starts the line a kvsse server (or baseline hub) prints on its
// standard output once it serves: Banner and then its URL. Scripts and
// tests wait for that line and read the address from it.
const Banner = "kvsse listening on "

// Announce prints the banner line for url to w.
func Announce(w io.Writer, url string) {
	fmt.Fprintf(w, "%s%s\n", Banner, url)
}

// ReadBanner reads the first line of r, which must be a banner line, and
// returns its URL.
func ReadBanner(r io.Reader) (string, error) {
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("reading the banner line: %w (read %q)", err, line)
	}
	url, ok := strings.CutPrefix(strings.TrimSpace(line), Banner)
	if !ok {
		return "", fmt.Errorf("first line %q, want %s...", line, Banner)
	}
	return url, nil
}

// Serve serves srv on ln until ctx ends, then shuts it down gracefully:
// it calls stop (when not nil) to end what Shutdown would wait for, such
// as streams, then lets requests in flight finish for up to grace, then
// closes every connection that is left. A failure to serve is returned
// at once; the end of ctx is success.
func Serve(ctx context.Context, srv *http.Server, ln net.Listener, grace time.Duration, stop func()) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	if stop != nil {
		stop()
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err := srv.Shutdown(sctx)
	if err != nil {
		srv.Close()
		err = fmt.Errorf("shutdown %s: %w", ln.Addr(), err)
	}
	<-errc // http.ErrServerClosed, once Shutdown or Close was called
	return err
}
