package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"kvsse/sse"
)

// client talks to a kvsse server for the command-line subcommands.
type client struct {
	base string
	http *http.Client
	cfg  *config
}

func newClient(cfg *config) *client {
	return &client{base: strings.TrimSuffix(cfg.server, "/"), http: &http.Client{}, cfg: cfg}
}

// commandTable is every client command, in the order the help lists them.
func commandTable() []command {
	cmds := []command{
		{name: "get", args: "KEY", short: "print a value",
			long: `Prints the value of KEY exactly, bytes as stored, nothing added.
Exit status: 0, 1 when the key does not exist, 2 on any other error.
`, run: cmdGet},
		{name: "put", args: "KEY [VALUE]", short: "set a value (from stdin when VALUE is absent)",
			long: `Sets KEY to VALUE, or to the bytes of standard input, exactly, when
VALUE is absent, and prints the revision the write took.
Exit status: 0, 2 on an error (a failed -if-rev among them).
`, flags: []string{"ttl", "if-rev"}, run: cmdPut},
		{name: "del", args: "KEY | -prefix P", short: "delete a key, or every key starting with P",
			long: `Deletes KEY. With -prefix P, deletes every key that starts with P (not
empty) as one write, and prints its revision.
Exit status: 0, 1 when KEY does not exist, 2 on any other error.
`, flags: []string{"if-rev", "prefix"}, run: cmdDel},
		{name: "ls", args: "[PREFIX]", short: "list keys",
			long: `Prints the keys that start with PREFIX (every key without one), one a
line, in byte order.
Exit status: 0, 2 on an error.
`, run: cmdLs},
		{name: "txn", args: "[FILE]", short: "run a transaction: conditions and changes as one write",
			long: `Sends the transaction in FILE (standard input when absent) to the server:
a JSON object like

  {"if":   [{"key": "cfg/version", "revision": 41}],
   "then": [{"put": "cfg/a", "value": "on"}, {"delete": "cfg/old"},
            {"delete_prefix": "cfg/tmp/"}]}

When every condition holds, all the changes happen as one write, and the
revision it took is printed.
Exit status: 0, 1 when a condition did not hold (nothing changed; the
keys and their revisions are on stderr), 2 on any other error.
`, run: cmdTxn},
		{name: "watch", args: "PATTERN...", short: "print changes as they happen",
			long: `Prints the changes of the keys matching any PATTERN as they happen, one
a line:

  <revision> put <key> <value>
  <revision> delete <key>
  <revision> delete <key> expired      (the key's time to live ran out)

A value that is not one line of printable UTF-8 is printed as a JSON
string, a binary one as base64: and its base64. The changes of one
revision (a transaction) are printed together, once the last of them
has come. With -json, each event is printed as it comes, as the
server's NDJSON object, sync, reset and heartbeats included; the last
change of a revision carries "last":true. A dropped connection is opened
again, resuming after the last revision received whole, so no change is
missed or printed twice (with -json, the objects of a revision cut off
in the middle come again).
With -poll, long polls of up to 30 seconds each replace the stream
(for proxies that buffer streams): the same lines, each revision whole;
-json then prints the changes' objects, and a snapshot's keys as puts.
-events put or -events delete prints only that kind of change (a
snapshot's keys are puts). -prev, with -json, adds to each change its
key's previous value, as prev_value (and prev_content_type).
-coalesce suits a slow reader that wants the current state, not every
step: when it falls behind, the changes waiting for it merge to the
newest of each key and are printed together (revisions are skipped,
never reordered), instead of the stream being cut off and replayed.
Exit status: 0 when interrupted, 2 when the server refuses the watch.
`, flags: []string{"json", "snapshot", "since", "poll", "events", "prev", "coalesce"}, run: cmdWatch},
	}
	return append(cmds, backupCommands()...)
}

// keyURL is the URL of a key, each segment escaped.
func (c *client) keyURL(key string) string {
	segs := strings.Split(key, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return c.base + "/kv/" + strings.Join(segs, "/")
}

// do sends a request and returns the response when its status is one of
// ok; otherwise the server's error text, as an exitError with status 1
// for 404 and 2 for the rest.
func (c *client) do(req *http.Request, ok ...int) (*http.Response, error) {
	if c.cfg.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.cfg.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var dial *net.OpError
		if errors.As(err, &dial) && dial.Op == "dial" {
			err = fmt.Errorf("no server answers at %s (%v): start one with 'kvsse', or point -server or KVSSE_URL at yours", c.base, dial.Err)
		}
		return nil, &exitError{code: 2, err: err}
	}
	for _, s := range ok {
		if resp.StatusCode == s {
			return resp, nil
		}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e struct {
		Error string `json:"error"`
	}
	msg := strings.TrimSpace(string(body))
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		msg = e.Error
	}
	code := 2
	if resp.StatusCode == http.StatusNotFound {
		code = 1
	}
	return nil, &exitError{code: code, err: &statusError{status: resp.StatusCode, msg: fmt.Sprintf("%s: %s", resp.Status, msg)}}
}

// statusError is an error answer of the server.
type statusError struct {
	status int
	msg    string
}

func (e *statusError) Error() string { return e.msg }

// final reports whether retrying the same request cannot help: the server
// refused the request itself (4xx, but for timeouts and rate limits).
func (e *statusError) final() bool {
	return e.status >= 400 && e.status < 500 && e.status != http.StatusRequestTimeout && e.status != http.StatusTooManyRequests
}

func wantArgs(args []string, lo, hi int, usage string) error {
	if len(args) < lo || len(args) > hi {
		return usageErr(strings.Fields(usage)[0], "usage: kvsse %s", usage)
	}
	return nil
}

// send makes a request to u: prepare (when not nil) sets its headers,
// then do sends it, and returns the response when its status is one of ok.
func (c *client) send(ctx context.Context, method, u string, body io.Reader, prepare func(*http.Request), ok ...int) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, usageErr("", "%v", err)
	}
	if prepare != nil {
		prepare(req)
	}
	return c.do(req, ok...)
}

func (c *client) ifRev(req *http.Request) {
	if c.cfg.ifRev > 0 {
		req.Header.Set("If-Match", `"`+strconv.FormatInt(c.cfg.ifRev, 10)+`"`)
	}
}

func cmdGet(ctx context.Context, c *client, args []string, _ io.Reader, stdout, _ io.Writer) error {
	if err := wantArgs(args, 1, 1, "get KEY"); err != nil {
		return err
	}
	return c.getTo(ctx, c.keyURL(args[0]), stdout, "get")
}

// getTo writes the body of GET u to w exactly; what names the command in
// an error, a body cut short among them.
func (c *client) getTo(ctx context.Context, u string, w io.Writer, what string) error {
	resp, err := c.send(ctx, http.MethodGet, u, nil, nil, http.StatusOK)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

func cmdPut(ctx context.Context, c *client, args []string, stdin io.Reader, stdout, _ io.Writer) error {
	if err := wantArgs(args, 1, 2, "put KEY [VALUE] (VALUE from stdin when absent)"); err != nil {
		return err
	}
	var body io.Reader = stdin
	if len(args) == 2 {
		body = strings.NewReader(args[1])
	}
	value, err := io.ReadAll(body)
	if err != nil {
		return fmt.Errorf("put: read value: %w", err)
	}
	u := c.keyURL(args[0])
	if c.cfg.ttl != "" {
		u += "?ttl=" + url.QueryEscape(c.cfg.ttl)
	}
	resp, err := c.send(ctx, http.MethodPut, u, bytes.NewReader(value), c.ifRev, http.StatusOK, http.StatusCreated)
	if err != nil {
		return err
	}
	resp.Body.Close()
	fmt.Fprintln(stdout, resp.Header.Get("Kvsse-Revision"))
	return nil
}

func cmdDel(ctx context.Context, c *client, args []string, _ io.Reader, stdout, _ io.Writer) error {
	if c.cfg.prefix != "" {
		if err := wantArgs(args, 0, 0, "del -prefix PREFIX"); err != nil {
			return err
		}
		resp, err := c.send(ctx, http.MethodDelete, c.base+"/kv?"+url.Values{"prefix": {c.cfg.prefix}}.Encode(), nil, nil, http.StatusOK)
		if err != nil {
			return err
		}
		resp.Body.Close()
		fmt.Fprintln(stdout, resp.Header.Get("Kvsse-Revision"))
		return nil
	}
	if err := wantArgs(args, 1, 1, "del KEY"); err != nil {
		return err
	}
	resp, err := c.send(ctx, http.MethodDelete, c.keyURL(args[0]), nil, c.ifRev, http.StatusNoContent)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// input is the file args[0] names, open, or stdin when args is empty or
// args[0] is "-"; done closes it. what names the command in an error.
func input(stdin io.Reader, args []string, what string) (r io.Reader, done func(), err error) {
	if len(args) == 0 || args[0] == "-" {
		return stdin, func() {}, nil
	}
	f, err := os.Open(args[0])
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	return f, func() { f.Close() }, nil
}

func cmdTxn(ctx context.Context, c *client, args []string, stdin io.Reader, stdout, _ io.Writer) error {
	if err := wantArgs(args, 0, 1, "txn [FILE]"); err != nil {
		return err
	}
	body, done, err := input(stdin, args, "txn")
	if err != nil {
		return err
	}
	defer done()
	txn, err := io.ReadAll(body)
	if err != nil {
		return fmt.Errorf("txn: read: %w", err)
	}
	resp, err := c.send(ctx, http.MethodPost, c.base+"/txn", bytes.NewReader(txn), func(req *http.Request) {
		req.Header.Set("Content-Type", "application/json")
	}, http.StatusOK)
	var se *statusError
	if errors.As(err, &se) && se.status == http.StatusPreconditionFailed {
		return &exitError{code: 1, err: err}
	}
	if err != nil {
		return err
	}
	resp.Body.Close()
	fmt.Fprintln(stdout, resp.Header.Get("Kvsse-Revision"))
	return nil
}

// prefixQuery is the query of GET /kv: the pairs of name and value, and
// prefix, args[0], when args holds it.
func prefixQuery(args []string, pairs ...string) url.Values {
	q := url.Values{}
	for i := 0; i+1 < len(pairs); i += 2 {
		q.Set(pairs[i], pairs[i+1])
	}
	if len(args) == 1 {
		q.Set("prefix", args[0])
	}
	return q
}

func cmdLs(ctx context.Context, c *client, args []string, _ io.Reader, stdout, _ io.Writer) error {
	if err := wantArgs(args, 0, 1, "ls [PREFIX]"); err != nil {
		return err
	}
	q := prefixQuery(args, "limit", "1000")
	w := bufio.NewWriter(stdout)
	for {
		resp, err := c.send(ctx, http.MethodGet, c.base+"/kv?"+q.Encode(), nil, nil, http.StatusOK)
		if err != nil {
			return err
		}
		var page struct {
			Items []struct {
				Key string `json:"key"`
			} `json:"items"`
			Next string `json:"next"`
		}
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil {
			return fmt.Errorf("ls: %w", err)
		}
		for _, it := range page.Items {
			fmt.Fprintln(w, it.Key)
		}
		if page.Next == "" {
			return w.Flush()
		}
		q.Set("after", page.Next)
	}
}

// watchEvent is one NDJSON object of a stream.
type watchEvent struct {
	Event    string `json:"event"`
	Key      string `json:"key"`
	Value    string `json:"value"`
	Encoding string `json:"encoding"`
	Revision int64  `json:"revision"`
	Reason   string `json:"reason"`
	Last     bool   `json:"last"` // a change that ends its revision on the stream
}

// cmdWatch prints the changes of the keys matching the patterns until ctx
// ends. It reconnects by itself, with backoff, and resumes after the last
// revision it saw, so no change is missed or printed twice.
func cmdWatch(ctx context.Context, c *client, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageErr("watch", "usage: kvsse watch PATTERN...")
	}
	q := url.Values{"pattern": args, "format": {"ndjson"}}
	if c.cfg.snapshot {
		q.Set("snapshot", "1")
	}
	if c.cfg.events != "" {
		q.Set("events", c.cfg.events) // the server names a bad one
	}
	if c.cfg.coalesce {
		q.Set("coalesce", "1") // a long poll ignores it: its answers hold whole revisions
	}
	if c.cfg.prev {
		if !c.cfg.json {
			return usageErr("watch", "-prev needs -json: the lines print no previous value")
		}
		q.Set("prev", "1")
	}
	last := int64(-1)
	if c.cfg.since >= 0 {
		last = c.cfg.since
	}
	w := bufio.NewWriter(stdout)
	once := c.watchOnce
	if c.cfg.poll {
		q.Del("format")
		once = c.pollOnce
	}
	backoff := 100 * time.Millisecond
	for {
		connected, err := once(ctx, q, &last, w, stderr)
		if ctx.Err() != nil {
			return nil
		}
		var se *statusError
		if errors.As(err, &se) && se.final() {
			return err
		}
		if connected {
			backoff = 100 * time.Millisecond
		}
		fmt.Fprintf(stderr, "kvsse: watch: %v; reconnecting in %v\n", err, backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// watchOnce follows one connection. It reports whether it got a stream.
// A revision is applied as one step: its changes (a transaction's) are
// held until the one marked "last" arrives, then printed together, and
// only then does the resume point move to it. A connection cut in the
// middle of a revision drops what it held: the next one resumes from
// before that revision and gets it whole. With -json the objects are
// printed as they come (they carry "last" themselves), and the resume
// point moves the same way.
func (c *client) watchOnce(ctx context.Context, q url.Values, last *int64, w *bufio.Writer, stderr io.Writer) (bool, error) {
	resume := func(req *http.Request) {
		if *last >= 0 {
			req.Header.Set("Last-Event-ID", strconv.FormatInt(*last, 10))
		}
	}
	resp, err := c.send(ctx, http.MethodGet, c.base+"/watch?"+q.Encode(), nil, resume, http.StatusOK)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	rd := sse.NewNDJSONReader(resp.Body, 64<<20)
	// Before the sync, the events are a replay (changes, when resuming) or
	// a snapshot (keys at their own revisions, which are no position in
	// the stream): only the first move last.
	replaying, synced := *last >= 0, false
	var held []watchEvent // the changes of a revision whose last has not come
	for {
		f, err := rd.NextFrame()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return true, err
		}
		var ev watchEvent
		if err := json.Unmarshal(f.Data, &ev); err != nil {
			return true, fmt.Errorf("bad event %q: %w", f.Data, err)
		}
		isChange := ev.Event == "put" || ev.Event == "delete"
		inRevision := isChange && (synced || replaying) // not a snapshot item
		switch ev.Event {
		case "sync":
			synced = true
			*last = max(*last, ev.Revision)
		case "heartbeat":
			*last = max(*last, ev.Revision)
		case "reset":
			replaying = false
			fmt.Fprintf(stderr, "kvsse: watch: history reset at revision %d (%s): a snapshot follows\n", ev.Revision, ev.Reason)
		}
		switch {
		case c.cfg.json:
			w.Write(f.Data)
			w.WriteByte('\n')
		case inRevision:
			if held = append(held, ev); !ev.Last {
				continue
			}
			for i := range held {
				printEvent(w, &held[i])
			}
			held = held[:0]
		case isChange:
			printEvent(w, &ev)
		}
		if err := w.Flush(); err != nil {
			return true, err
		}
		if inRevision && ev.Last {
			*last = max(*last, ev.Revision)
		}
	}
	return true, errors.New("stream ended")
}

// pollWait is the wait= of the long polls of watch -poll: well within
// the server's default -max-wait, and short enough that a proxy's idle
// timeout seldom cuts one.
const pollWait = "30s"

// pollOnce long-polls until a poll fails, and reports whether one
// succeeded. Each answer holds whole revisions (or a snapshot, after a
// reset or for -snapshot), printed as watch prints them; the revision it
// gives back is the since of the next poll, so nothing is printed twice.
func (c *client) pollOnce(ctx context.Context, q url.Values, last *int64, w *bufio.Writer, stderr io.Writer) (bool, error) {
	q = maps.Clone(q)
	q.Set("wait", pollWait)
	for polled := false; ; polled = true {
		if *last >= 0 {
			q.Set("since", strconv.FormatInt(*last, 10))
			q.Del("snapshot")
		}
		resp, err := c.send(ctx, http.MethodGet, c.base+"/watch?"+q.Encode(), nil, nil, http.StatusOK)
		if err != nil {
			return polled, err
		}
		var a struct {
			Revision int64             `json:"revision"`
			Reset    string            `json:"reset"`
			Events   []json.RawMessage `json:"events"`
			Items    []json.RawMessage `json:"items"`
		}
		err = json.NewDecoder(resp.Body).Decode(&a)
		resp.Body.Close()
		if err != nil {
			return polled, fmt.Errorf("bad answer: %w", err)
		}
		if a.Reset != "" {
			fmt.Fprintf(stderr, "kvsse: watch: history reset at revision %d (%s): a snapshot follows\n", a.Revision, a.Reset)
		}
		for _, raw := range a.Items {
			if err := c.printRaw(w, append([]byte(`{"event":"put",`), raw[1:]...)); err != nil {
				return polled, err
			}
		}
		for _, raw := range a.Events {
			if err := c.printRaw(w, raw); err != nil {
				return polled, err
			}
		}
		if err := w.Flush(); err != nil {
			return polled, err
		}
		*last = a.Revision
	}
}

// printRaw prints one NDJSON object: as it is with -json, else as a line
// of printEvent.
func (c *client) printRaw(w *bufio.Writer, raw []byte) error {
	if c.cfg.json {
		w.Write(raw)
		return w.WriteByte('\n')
	}
	var ev watchEvent
	if err := json.Unmarshal(raw, &ev); err != nil {
		return fmt.Errorf("bad event %q: %w", raw, err)
	}
	printEvent(w, &ev)
	return nil
}

// printEvent prints a change as "<revision> put <key> <value>" or
// "<revision> delete <key>", and "<revision> delete <key> expired" for an
// expiry. A value that is not one line of printable
// UTF-8 is printed as a JSON string; a binary one as "base64:" and its
// base64.
func printEvent(w io.Writer, ev *watchEvent) {
	if ev.Event != "put" {
		if ev.Reason == "expired" {
			fmt.Fprintf(w, "%d %s %s expired\n", ev.Revision, ev.Event, ev.Key)
			return
		}
		fmt.Fprintf(w, "%d %s %s\n", ev.Revision, ev.Event, ev.Key)
		return
	}
	v := ev.Value
	switch {
	case ev.Encoding == "base64":
		v = "base64:" + v
	case !printable(v):
		b, _ := json.Marshal(v)
		v = string(b)
	}
	fmt.Fprintf(w, "%d put %s %s\n", ev.Revision, ev.Key, v)
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) && r != ' ' {
			return false
		}
	}
	return true
}
