//go:build linux

package server_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"kvsse/sse/server/servertest"
)

// The browser tests drive Debian's chromium, headless, through the
// DevTools protocol with the small websocket and CDP clients below.
// Without chromium on PATH they skip, unless KVSSE_REQUIRE_CHROMIUM=1.
// KVSSE_SCREENSHOT=1 writes screenshot.png into web/, beside the page,
// and phone and dark screenshots to the temp dir the test names.

// brTimeout bounds each DevTools command and each wait for the page.
const brTimeout = 10 * time.Second

// ---- a minimal RFC 6455 websocket client ----

// brWS is a client websocket connection. One goroutine reads; writes are
// serialized by wmu.
type brWS struct {
	conn net.Conn
	br   *bufio.Reader
	wmu  sync.Mutex // guards writes to conn
}

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// brDialWS opens a websocket to a ws:// URL.
func brDialWS(ctx context.Context, raw string) (*brWS, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, err
	}
	var nonce [16]byte
	rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", u.RequestURI(), u.Host, key)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("websocket handshake: %w", err)
	}
	sum := sha1.Sum([]byte(key + wsGUID))
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		conn.Close()
		return nil, fmt.Errorf("websocket handshake: %s, accept %q", resp.Status, resp.Header.Get("Sec-WebSocket-Accept"))
	}
	return &brWS{conn: conn, br: br}, nil
}

// writeFrame writes one whole, masked frame.
func (w *brWS) writeFrame(op byte, payload []byte) error {
	hdr := []byte{0x80 | op}
	switch n := len(payload); {
	case n < 126:
		hdr = append(hdr, 0x80|byte(n))
	case n <= 0xFFFF:
		hdr = append(hdr, 0x80|126)
		hdr = binary.BigEndian.AppendUint16(hdr, uint16(n))
	default:
		hdr = append(hdr, 0x80|127)
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(n))
	}
	var mask [4]byte
	rand.Read(mask[:])
	frame := append(hdr, mask[:]...)
	for i, b := range payload {
		frame = append(frame, b^mask[i%4])
	}
	w.wmu.Lock()
	defer w.wmu.Unlock()
	_, err := w.conn.Write(frame)
	return err
}

// readMessage reads one text or binary message, joining continuation
// frames and answering pings on the way.
func (w *brWS) readMessage() ([]byte, error) {
	var msg []byte
	started := false
	for {
		var h [2]byte
		if _, err := io.ReadFull(w.br, h[:]); err != nil {
			return nil, err
		}
		fin, op := h[0]&0x80 != 0, h[0]&0x0F
		n := uint64(h[1] & 0x7F)
		switch n {
		case 126:
			var b [2]byte
			if _, err := io.ReadFull(w.br, b[:]); err != nil {
				return nil, err
			}
			n = uint64(binary.BigEndian.Uint16(b[:]))
		case 127:
			var b [8]byte
			if _, err := io.ReadFull(w.br, b[:]); err != nil {
				return nil, err
			}
			n = binary.BigEndian.Uint64(b[:])
		}
		if n > 256<<20 {
			return nil, fmt.Errorf("websocket frame of %d bytes", n)
		}
		var mask [4]byte
		masked := h[1]&0x80 != 0
		if masked {
			if _, err := io.ReadFull(w.br, mask[:]); err != nil {
				return nil, err
			}
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(w.br, payload); err != nil {
			return nil, err
		}
		if masked {
			for i := range payload {
				payload[i] ^= mask[i%4]
			}
		}
		switch op {
		case 0x8: // close
			w.writeFrame(0x8, nil)
			return nil, io.EOF
		case 0x9: // ping
			if err := w.writeFrame(0xA, payload); err != nil {
				return nil, err
			}
			continue
		case 0xA: // pong
			continue
		case 0x1, 0x2:
			if started {
				return nil, errors.New("websocket: new message inside a fragmented one")
			}
			started, msg = true, payload
		case 0x0:
			if !started {
				return nil, errors.New("websocket: continuation frame without a message")
			}
			msg = append(msg, payload...)
		default:
			return nil, fmt.Errorf("websocket: unknown opcode %d", op)
		}
		if fin {
			return msg, nil
		}
	}
}

func (w *brWS) close() { w.conn.Close() }

// ---- a minimal DevTools protocol client ----

// brCDP sends DevTools commands over one websocket and routes the answers
// and events that its reader goroutine receives.
type brCDP struct {
	ws      *brWS
	onEvent func(method string, params json.RawMessage) // called by the reader goroutine

	mu      sync.Mutex // guards next, pending, err
	next    int64
	pending map[int64]chan brReply
	err     error // set when the reader stopped
}

type brReply struct {
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func brDialCDP(ctx context.Context, wsURL string, onEvent func(string, json.RawMessage)) (*brCDP, error) {
	ws, err := brDialWS(ctx, wsURL)
	if err != nil {
		return nil, err
	}
	c := &brCDP{ws: ws, onEvent: onEvent, pending: map[int64]chan brReply{}}
	go c.read()
	return c, nil
}

func (c *brCDP) read() {
	for {
		b, err := c.ws.readMessage()
		if err != nil {
			c.mu.Lock()
			c.err = err
			for id, ch := range c.pending {
				close(ch)
				delete(c.pending, id)
			}
			c.mu.Unlock()
			return
		}
		var m struct {
			ID     int64           `json:"id"`
			Method string          `json:"method"`
			Params json.RawMessage `json:"params"`
			brReply
		}
		if json.Unmarshal(b, &m) != nil {
			continue
		}
		if m.ID == 0 {
			if c.onEvent != nil {
				c.onEvent(m.Method, m.Params)
			}
			continue
		}
		c.mu.Lock()
		ch := c.pending[m.ID]
		delete(c.pending, m.ID)
		c.mu.Unlock()
		if ch != nil {
			ch <- m.brReply
		}
	}
}

// call sends a command and decodes its result into result (if not nil).
// It may be called from any goroutine but the reader's.
func (c *brCDP) call(method string, params, result any) error {
	if params == nil {
		params = struct{}{}
	}
	ch := make(chan brReply, 1)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return fmt.Errorf("%s: connection closed: %w", method, c.err)
	}
	c.next++
	id := c.next
	c.pending[id] = ch
	c.mu.Unlock()
	b, err := json.Marshal(map[string]any{"id": id, "method": method, "params": params})
	if err != nil {
		return err
	}
	if err := c.ws.writeFrame(0x1, b); err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	select {
	case r, ok := <-ch:
		switch {
		case !ok:
			return fmt.Errorf("%s: connection closed", method)
		case r.Error != nil:
			return fmt.Errorf("%s: %s (%d)", method, r.Error.Message, r.Error.Code)
		case result != nil:
			return json.Unmarshal(r.Result, result)
		}
		return nil
	case <-time.After(brTimeout):
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
		return fmt.Errorf("%s: no answer in %v", method, brTimeout)
	}
}

func (c *brCDP) close() { c.ws.close() }

// ---- chromium ----

// brBrowser is a headless chromium started for one test.
type brBrowser struct {
	devtools string // host:port of the DevTools HTTP endpoint
	cdp      *brCDP // the browser target
}

// brStart starts headless chromium with a fresh profile and connects to
// it; cleanup closes it and ends every process it started.
func brStart(t *testing.T) *brBrowser {
	t.Helper()
	path := servertest.RequireTool(t, "chromium", "chromium", "KVSSE_REQUIRE_CHROMIUM")
	profile := t.TempDir()
	cmd := exec.Command(path,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+profile, "--remote-debugging-port=0", "about:blank")
	stderr := new(servertest.LockedBuffer)
	cmd.Stderr = stderr
	// Its helpers share its process group, killed at cleanup; and should
	// the test binary die before that, so does chromium.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	b := &brBrowser{}
	t.Cleanup(func() {
		if b.cdp != nil {
			b.cdp.call("Browser.close", nil, nil)
			b.cdp.close()
		}
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
		}
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // what is left of the group we started
		<-exited
	})

	// Chromium writes the port and the browser target's path to
	// DevToolsActivePort when it listens.
	deadline := time.Now().Add(20 * time.Second)
	var port, target string
	for {
		if b, err := os.ReadFile(filepath.Join(profile, "DevToolsActivePort")); err == nil {
			if lines := strings.Split(strings.TrimSpace(string(b)), "\n"); len(lines) == 2 {
				port, target = strings.TrimSpace(lines[0]), strings.TrimSpace(lines[1])
				break
			}
		}
		select {
		case <-exited:
			t.Fatalf("chromium exited at start:\n%s", stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("chromium did not write DevToolsActivePort in time:\n%s", stderr.String())
		}
	}
	b.devtools = "127.0.0.1:" + port
	ctx, cancel := context.WithTimeout(context.Background(), brTimeout)
	defer cancel()
	c, err := brDialCDP(ctx, "ws://"+b.devtools+target, nil)
	if err != nil {
		t.Fatalf("connect to chromium: %v", err)
	}
	b.cdp = c
	return b
}

// brPage is one browser tab, driven over its own DevTools connection.
type brPage struct {
	cdp *brCDP

	mu      sync.Mutex // guards logs, dialogs
	logs    []string   // console messages, exceptions and log entries
	dialogs []string   // alert, confirm and prompt messages
}

// newPage opens a tab on about:blank.
func (b *brBrowser) newPage(t *testing.T) *brPage {
	t.Helper()
	var target struct {
		TargetID string `json:"targetId"`
	}
	if err := b.cdp.call("Target.createTarget", map[string]any{"url": "about:blank"}, &target); err != nil {
		t.Fatal(err)
	}
	p := &brPage{}
	ctx, cancel := context.WithTimeout(context.Background(), brTimeout)
	defer cancel()
	c, err := brDialCDP(ctx, "ws://"+b.devtools+"/devtools/page/"+target.TargetID, p.event)
	if err != nil {
		t.Fatalf("connect to the page: %v", err)
	}
	p.cdp = c
	t.Cleanup(func() {
		b.cdp.call("Target.closeTarget", map[string]any{"targetId": target.TargetID}, nil)
		c.close()
	})
	for _, m := range []string{"Page.enable", "Runtime.enable", "Log.enable"} {
		if err := c.call(m, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	// Record CSP violations; DevTools scripts are not subject to the CSP.
	err = c.call("Page.addScriptToEvaluateOnNewDocument", map[string]any{"source": `
		window.__csp = [];
		document.addEventListener('securitypolicyviolation', (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));`}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// event records what the page says; it runs on the reader goroutine.
func (p *brPage) event(method string, params json.RawMessage) {
	var line string
	switch method {
	case "Runtime.consoleAPICalled":
		var e struct {
			Type string `json:"type"`
			Args []struct {
				Value       any    `json:"value"`
				Description string `json:"description"`
			} `json:"args"`
		}
		json.Unmarshal(params, &e)
		line = "console." + e.Type + ":"
		for _, a := range e.Args {
			line += fmt.Sprintf(" %v%s", a.Value, a.Description)
		}
	case "Runtime.exceptionThrown":
		var e struct {
			Details struct {
				Text      string `json:"text"`
				Exception struct {
					Description string `json:"description"`
				} `json:"exception"`
			} `json:"exceptionDetails"`
		}
		json.Unmarshal(params, &e)
		line = "exception: " + e.Details.Text + " " + e.Details.Exception.Description
	case "Log.entryAdded":
		var e struct {
			Entry struct {
				Level, Source, Text, URL string
			} `json:"entry"`
		}
		json.Unmarshal(params, &e)
		line = fmt.Sprintf("log %s/%s: %s %s", e.Entry.Source, e.Entry.Level, e.Entry.Text, e.Entry.URL)
	case "Page.javascriptDialogOpening":
		var e struct {
			Message string `json:"message"`
		}
		json.Unmarshal(params, &e)
		p.mu.Lock()
		p.dialogs = append(p.dialogs, e.Message)
		p.mu.Unlock()
		go p.cdp.call("Page.handleJavaScriptDialog", map[string]any{"accept": false}, nil)
		return
	default:
		return
	}
	p.mu.Lock()
	p.logs = append(p.logs, line)
	p.mu.Unlock()
}

func (p *brPage) journal() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.logs) == 0 {
		return "(the page logged nothing)"
	}
	return "the page logged:\n  " + strings.Join(p.logs, "\n  ")
}

// eval runs JavaScript in the page, awaits a promise it returns, and
// returns the value as JSON.
func (p *brPage) eval(expr string) (json.RawMessage, error) {
	var r struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		Exception *struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	err := p.cdp.call("Runtime.evaluate", map[string]any{"expression": expr, "awaitPromise": true, "returnByValue": true}, &r)
	if err != nil {
		return nil, err
	}
	if r.Exception != nil {
		return nil, fmt.Errorf("%s %s", r.Exception.Text, r.Exception.Exception.Description)
	}
	return r.Result.Value, nil
}

// do evaluates expr and decodes its value into out (if not nil).
func (p *brPage) do(t testing.TB, expr string, out any) {
	t.Helper()
	v, err := p.eval(expr)
	if err != nil {
		t.Fatalf("evaluate %s: %v\n%s", expr, err, p.journal())
	}
	if out != nil {
		if err := json.Unmarshal(v, out); err != nil {
			t.Fatalf("evaluate %s: decode %s: %v", expr, v, err)
		}
	}
}

// waitFor polls expr until it is true, for at most timeout.
func (p *brPage) waitFor(t testing.TB, what, expr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		v, err := p.eval(expr)
		if err == nil && string(v) == "true" {
			return
		}
		if time.Now().After(deadline) {
			state, _ := p.eval(brStateJS)
			t.Fatalf("after %v: not %s (%s: %s, %v)\npage: %s\n%s", timeout, what, expr, v, err, state, p.journal())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// navigate loads url and waits until its document has loaded.
func (p *brPage) navigate(t testing.TB, url string) {
	t.Helper()
	var r struct {
		ErrorText string `json:"errorText"`
	}
	if err := p.cdp.call("Page.navigate", map[string]any{"url": url}, &r); err != nil || r.ErrorText != "" {
		t.Fatalf("navigate to %s: %v %s", url, err, r.ErrorText)
	}
	p.waitFor(t, "loaded", fmt.Sprintf("location.href === %s && document.readyState === 'complete'", brJS(url)), brTimeout)
}

// screenshot captures the page as PNG at the given width.
func (p *brPage) screenshot(t testing.TB, width, height int, mobile bool, scheme string) []byte {
	t.Helper()
	scale := 1.0
	if mobile {
		scale = 2
	}
	if err := p.cdp.call("Emulation.setDeviceMetricsOverride", map[string]any{
		"width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile}, nil); err != nil {
		t.Fatal(err)
	}
	if err := p.cdp.call("Emulation.setEmulatedMedia", map[string]any{
		"features": []map[string]string{{"name": "prefers-color-scheme", "value": scheme}}}, nil); err != nil {
		t.Fatal(err)
	}
	// Wait for the layout at the new size, and for no row to be flashing.
	p.waitFor(t, "laid out", fmt.Sprintf(`new Promise((ok) => requestAnimationFrame(() => requestAnimationFrame(() =>
		ok(innerWidth === %d && !document.querySelector('tr.flash') && (scrollTo(0, 0), true)))))`, width), brTimeout)
	var shot struct {
		Data []byte `json:"data"`
	}
	if err := p.cdp.call("Page.captureScreenshot", map[string]any{"format": "png"}, &shot); err != nil {
		t.Fatal(err)
	}
	return shot.Data
}

// brJS quotes s as a JavaScript string.
func brJS(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// JavaScript helpers for the built-in page.
const (
	brRowJS   = `((k) => [...document.querySelectorAll('#rows tr')].find((tr) => tr.dataset.key === k))`
	brStateJS = `JSON.stringify({conn: document.getElementById('conn').textContent, state: document.getElementById('conn').dataset.state,
		msg: document.getElementById('msg').textContent, rows: [...document.querySelectorAll('#rows tr')].map((tr) => tr.innerText)})`
)

// brRowValue is JavaScript for the value cell's text of key's row, or null.
func brRowValue(key string) string {
	return fmt.Sprintf(`(%s(%s)?.querySelector('td.v').textContent ?? null)`, brRowJS, brJS(key))
}

// brFill is JavaScript that types into the page's put form.
func brFill(key, value string) string {
	return fmt.Sprintf(`(() => {
		for (const [id, v] of [['key', %s], ['value', %s]]) {
			const el = document.getElementById(id);
			el.value = v;
			el.dispatchEvent(new Event('input', {bubbles: true}));
		}
	})()`, brJS(key), brJS(value))
}

// ---- HTTP helpers ----

// brPut stores a value the way curl would and returns its revision.
func brPut(t testing.TB, base, key, value string) int64 {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPut, base+"/kv/"+key, strings.NewReader(value))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct {
		Revision int64 `json:"revision"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || resp.StatusCode/100 != 2 {
		t.Fatalf("PUT %s: %s %v", key, resp.Status, err)
	}
	return r.Revision
}

// brGet reads a key: its status and value.
func brGet(t testing.TB, base, key string) (int, string) {
	t.Helper()
	resp, err := http.Get(base + "/kv/" + key)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// brWaitValue polls the server until key holds want (or is missing, for
// want ""), so that a write the page made is known to have landed.
func brWaitValue(t testing.TB, base, key, want string, wantStatus int) {
	t.Helper()
	deadline := time.Now().Add(brTimeout)
	for {
		status, got := brGet(t, base, key)
		if status == wantStatus && (wantStatus != http.StatusOK || got == want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %d %q, want %d %q", key, status, got, wantStatus, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// brOtherOrigin is the page of another site that watches kvsse with
// credentials and tries a compare-and-set write.
const brOtherOrigin = `<!doctype html><title>other origin</title><script>
const kv = new URLSearchParams(location.search).get('kvsse');
window.got = []; window.errors = 0; window.synced = false;
const es = new EventSource(kv + '/watch?pattern=' + encodeURIComponent('xo/**') + '&snapshot=1', {withCredentials: true});
es.addEventListener('put', (e) => got.push(JSON.parse(e.data)));
es.addEventListener('sync', () => { window.synced = true; });
es.onerror = () => { window.errors++; window.closed = es.readyState === EventSource.CLOSED; };
window.tryPut = async (key, value) => {
  try {
    const r = await fetch(kv + '/kv/' + key, {method: 'PUT', body: value, credentials: 'include',
      headers: {'Content-Type': 'text/plain', 'If-None-Match': '*'}});
    return {status: r.status, etag: r.headers.get('ETag'), revision: r.headers.get('Kvsse-Revision')};
  } catch (e) {
    return {error: String(e)};
  }
};
</script>`

// ---- the tests ----

// TestBrowser drives the built-in page and a page of another origin in
// headless chromium against a real server, restarted once on the same
// address and data directory.
func TestBrowser(t *testing.T) {
	b := brStart(t)
	parent := t
	otherPage := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, brOtherOrigin)
	})
	allowed := httptest.NewServer(otherPage)
	defer allowed.Close()
	refused := httptest.NewServer(otherPage)
	defer refused.Close()

	addr, dir := servertest.FreeAddr(t), t.TempDir()
	args := []string{"-addr", addr, "-data", dir, "-cors-origins", allowed.URL}
	srv := servertest.Start(t, args...)
	base := srv.URL

	p := b.newPage(t)
	p.navigate(t, base+"/")
	p.waitFor(t, "connected", `document.getElementById('conn').dataset.state === 'live'`, brTimeout)

	t.Run("StyleAndScriptPassCSP", func(t *testing.T) {
		var got struct {
			CSP  []string `json:"csp"`
			Font string   `json:"font"`
		}
		p.do(t, `({csp: window.__csp, font: getComputedStyle(document.querySelector('td, .mono, body')).fontFamily})`, &got)
		if len(got.CSP) > 0 {
			t.Errorf("CSP violations: %q", got.CSP)
		}
		if !strings.Contains(got.Font, "system-ui") && !strings.Contains(got.Font, "monospace") {
			t.Errorf("the page's style did not apply: font %q", got.Font)
		}
	})

	t.Run("ShowsPutFromHTTP", func(t *testing.T) {
		start := time.Now()
		brPut(t, base, "t/http", "hello")
		p.waitFor(t, "showing t/http", brRowValue("t/http")+` === 'hello'`, 2*time.Second)
		t.Logf("shown %v after the PUT", time.Since(start).Round(time.Millisecond))
		p.waitFor(t, "highlighting the changed row", brRowJS+`('t/http').classList.contains('flash')`, time.Second)
	})

	t.Run("EditInPage", func(t *testing.T) {
		p.do(t, brRowJS+`('t/http').querySelector('button.edit').click()`, nil)
		var form struct{ Key, Value string }
		p.do(t, `({key: document.getElementById('key').value, value: document.getElementById('value').value})`, &form)
		if form.Key != "t/http" || form.Value != "hello" {
			t.Fatalf("Edit loaded %+v into the form", form)
		}
		p.do(t, brFill("t/http", "edited in the page"), nil)
		p.do(t, `document.getElementById('put').click()`, nil)
		brWaitValue(t, base, "t/http", "edited in the page", http.StatusOK)
		p.waitFor(t, "saying saved", `document.getElementById('msg').textContent.startsWith('Saved t/http')`, brTimeout)
		p.waitFor(t, "showing the edit", brRowValue("t/http")+` === 'edited in the page'`, brTimeout)
	})

	t.Run("StaleEditRefused", func(t *testing.T) {
		brPut(t, base, "t/stale", "v1")
		p.waitFor(t, "showing t/stale", brRowValue("t/stale")+` === 'v1'`, brTimeout)
		p.do(t, brRowJS+`('t/stale').querySelector('button.edit').click()`, nil)
		rev := brPut(t, base, "t/stale", "v2") // someone else, after the page loaded v1
		p.waitFor(t, "showing v2", brRowValue("t/stale")+` === 'v2'`, brTimeout)
		p.do(t, brFill("t/stale", "mine"), nil)
		p.do(t, `document.getElementById('put').click()`, nil)
		p.waitFor(t, "telling the user", `document.getElementById('msg').dataset.kind === 'error'`, brTimeout)
		var msg string
		p.do(t, `document.getElementById('msg').textContent`, &msg)
		if !strings.Contains(msg, "Not saved") || !strings.Contains(msg, fmt.Sprintf("revision %d", rev)) || !strings.Contains(msg, "precondition failed") {
			t.Errorf("message %q, want it to say the put was refused, the current revision %d and the server's error", msg, rev)
		}
		if status, v := brGet(t, base, "t/stale"); status != http.StatusOK || v != "v2" {
			t.Errorf("after the stale edit the key is %d %q, want v2", status, v)
		}
	})

	t.Run("DeleteButton", func(t *testing.T) {
		p.do(t, brRowJS+`('t/http').querySelector('button.del').click()`, nil)
		p.waitFor(t, "without the row", brRowJS+`('t/http') === undefined`, brTimeout)
		brWaitValue(t, base, "t/http", "", http.StatusNotFound)
	})

	t.Run("MarkupShownAsText", func(t *testing.T) {
		const markup = `<img src=x onerror=alert(1)>`
		brPut(t, base, "t/html", markup)
		p.waitFor(t, "showing the markup", brRowValue("t/html")+` === `+brJS(markup), brTimeout)
		var imgs int
		p.do(t, `document.querySelectorAll('#keys img').length`, &imgs)
		if imgs != 0 {
			t.Errorf("%d img elements in the table", imgs)
		}
		p.mu.Lock()
		dialogs := p.dialogs
		p.mu.Unlock()
		if len(dialogs) > 0 {
			t.Errorf("the value ran script: dialogs %q", dialogs)
		}
	})

	t.Run("TimeToLive", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPut, base+"/kv/t/lease?ttl=3s", strings.NewReader("short-lived"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != http.StatusCreated {
			t.Fatalf("PUT with a ttl: %v %v", err, resp)
		}
		resp.Body.Close()
		ttl := brRowJS + `('t/lease')?.querySelector('.ttl')?.textContent`
		p.waitFor(t, "showing when it expires", `/^expires in [1-3] s$/.test(`+ttl+`)`, brTimeout)
		// When its time runs out, the row is marked expired before it goes.
		p.waitFor(t, "marking it expired", brRowJS+`('t/lease')?.classList.contains('expired') && `+ttl+` === 'expired'`, brTimeout)
		p.waitFor(t, "without the row", brRowJS+`('t/lease') === undefined`, brTimeout)
	})

	t.Run("TransactionAsOneStep", func(t *testing.T) {
		brPut(t, base, "t/pair/a", "0")
		brPut(t, base, "t/pair/b", "0")
		p.waitFor(t, "showing the pair", brRowValue("t/pair/b")+` === '0'`, brTimeout)
		// After every change of the table, the two keys must agree: a
		// transaction sets both at once.
		p.do(t, `(() => {
			window.__pairs = [];
			const v = (k) => [...document.querySelectorAll('#rows tr')].find((tr) => tr.dataset.key === k)?.querySelector('td.v').textContent;
			new MutationObserver(() => window.__pairs.push([v('t/pair/a'), v('t/pair/b')])).observe(document.getElementById('rows'), {subtree: true, childList: true, characterData: true});
		})()`, nil)
		for i := 1; i <= 5; i++ {
			body := fmt.Sprintf(`{"then": [{"put": "t/pair/a", "value": "%d"}, {"put": "t/pair/b", "value": "%d"}]}`, i, i)
			resp, err := http.Post(base+"/txn", "application/json", strings.NewReader(body))
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("POST /txn: %v %v", err, resp)
			}
			resp.Body.Close()
		}
		p.waitFor(t, "showing the last transaction", brRowValue("t/pair/a")+` === '5' && `+brRowValue("t/pair/b")+` === '5'`, brTimeout)
		var pairs [][2]string
		p.do(t, `window.__pairs`, &pairs)
		for _, pair := range pairs {
			if pair[0] != pair[1] {
				t.Errorf("the table showed half a transaction: t/pair/a %q, t/pair/b %q (all states seen: %q)", pair[0], pair[1], pairs)
				break
			}
		}
		if len(pairs) == 0 {
			t.Error("the observer saw no change")
		}
	})

	t.Run("ChangedBeforeThePageSaysSo", func(t *testing.T) {
		o := b.newPage(t)
		o.navigate(t, base+"/?pattern=t/**")
		o.waitFor(t, "connected", `document.getElementById('conn').dataset.state === 'live'`, brTimeout)
		var age string
		o.do(t, brRowJS+`('t/stale').querySelector('.age').textContent`, &age)
		if age != "changed earlier" {
			t.Errorf("age of a key changed before the page opened: %q, want words: changed earlier", age)
		}
		brPut(t, base, "t/stale", "v3")
		o.waitFor(t, "saying it just changed", brRowJS+`('t/stale').querySelector('.age').textContent === 'just now'`, brTimeout)
	})

	t.Run("ResumesAfterRestart", func(t *testing.T) {
		srv.Stop(t)
		p.waitFor(t, "reconnecting", `document.getElementById('conn').dataset.state === 'reconnecting'`, brTimeout)
		// A change made while the page is cut off, by a server on the same
		// data directory but another address.
		other := servertest.Start(t, "-data", dir)
		rev := brPut(t, other.URL, "t/while-down", "changed while down")
		other.Stop(t)
		srv = servertest.Start(parent, args...)
		start := time.Now()
		p.waitFor(t, "resumed", `document.getElementById('conn').dataset.state === 'resumed'`, brTimeout)
		p.waitFor(t, "showing the change", brRowValue("t/while-down")+` === 'changed while down'`, brTimeout)
		var conn string
		p.do(t, `document.getElementById('conn').textContent`, &conn)
		if !strings.Contains(conn, "Resumed") || !strings.Contains(conn, fmt.Sprint(rev)) {
			t.Errorf("status %q, want Resumed at revision %d or later", conn, rev)
		}
		t.Logf("resumed %v after the restart", time.Since(start).Round(time.Millisecond))
	})

	t.Run("OtherOrigin", func(t *testing.T) {
		o := b.newPage(t)
		o.navigate(t, allowed.URL+"/?kvsse="+url.QueryEscape(base))
		o.waitFor(t, "synced", `window.synced === true`, brTimeout)
		brPut(t, base, "xo/a", "for the app")
		o.waitFor(t, "receiving the put", `got.some((e) => e.key === 'xo/a' && e.value === 'for the app')`, brTimeout)
		var put struct {
			Status   int
			ETag     string
			Revision string
			Error    string
		}
		o.do(t, `tryPut('xo/b', 'from the app')`, &put)
		if put.Status != http.StatusCreated || put.ETag == "" || put.Revision == "" {
			t.Errorf("PUT from the allowed origin: %+v, want 201 with ETag and Kvsse-Revision readable", put)
		}
		brWaitValue(t, base, "xo/b", "from the app", http.StatusOK)

		o.navigate(t, refused.URL+"/?kvsse="+url.QueryEscape(base))
		o.waitFor(t, "refused", `window.errors > 0 && !window.synced && got.length === 0`, brTimeout)
		put = struct {
			Status   int
			ETag     string
			Revision string
			Error    string
		}{}
		o.do(t, `tryPut('xo/c', 'from elsewhere')`, &put)
		if put.Error == "" {
			t.Errorf("PUT from an origin not listed: %+v, want it refused", put)
		}
		if status, _ := brGet(t, base, "xo/c"); status != http.StatusNotFound {
			t.Errorf("xo/c after a refused PUT: %d, want 404", status)
		}
		var events int
		o.do(t, `got.length`, &events)
		if events != 0 {
			t.Errorf("the refused page received %d events", events)
		}
	})

	t.Run("PatternBox", func(t *testing.T) {
		setPattern := func(pattern string) {
			p.do(t, fmt.Sprintf(`(() => {
				document.getElementById('pattern').value = %s;
				document.getElementById('watch-form').requestSubmit();
			})()`, brJS(pattern)), nil)
		}
		setPattern("t/*")
		p.waitFor(t, "watching t/*", `location.search === '?pattern=t/*' && document.getElementById('conn').dataset.state === 'live' &&
			[...document.querySelectorAll('#rows tr')].map((tr) => tr.dataset.key).join(' ') === 't/html t/stale t/while-down'`, brTimeout)
		setPattern("t**")
		p.waitFor(t, "telling the pattern is invalid", `document.getElementById('conn').dataset.state === 'failed' &&
			/pattern/.test(document.getElementById('conn').textContent) && document.querySelectorAll('#rows tr').length === 0`, brTimeout)
		var conn string
		p.do(t, `document.getElementById('conn').textContent`, &conn)
		t.Logf("status for t**: %q", conn)
	})

	t.Run("FloodWhileBusy", func(t *testing.T) {
		brFloodWhileBusy(t, b)
	})

	t.Run("Screenshots", func(t *testing.T) {
		brScreenshots(t, p, base)
	})
}

// brFloodWhileBusy floods keys that the page watches while its script is
// busy, so that it reads nothing and its stream falls far behind a small
// -sub-buffer: the server merges the waiting changes
// (coalesce=1) instead of ending the stream. Once the page runs again it
// shows exactly the keys and values the server lists, it was never cut
// off, and it got fewer events than there were writes.
func brFloodWhileBusy(t *testing.T, b *brBrowser) {
	srv := servertest.Start(t, "-sub-buffer", "64", "-sync", "none", "-write-rate", "0")
	p := b.newPage(t)
	p.navigate(t, srv.URL+"/?pattern=flood/**")
	p.waitFor(t, "connected", `document.getElementById('conn').dataset.state === 'live'`, brTimeout)
	p.do(t, `(() => {
		window.__states = [];
		const conn = document.getElementById('conn');
		new MutationObserver(() => window.__states.push(conn.dataset.state)).observe(conn, {attributes: true});
	})()`, nil)

	// Paused at its next statement, which the first event of the flood
	// runs, until the flood is over.
	for _, m := range []string{"Debugger.enable", "Debugger.pause"} {
		if err := p.cdp.call(m, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	sent := func() float64 { return metricsScrape(t, srv.URL+"/metrics").val("kvsse_events_sent_total") }
	before := sent()
	const writers, each = 4, 2500 // 10 MB, more than the socket buffers and the browser's hold
	if err := servertest.Flood(srv.URL, "flood/", 20, writers, each); err != nil {
		t.Fatal(err)
	}
	if err := p.cdp.call("Debugger.resume", nil, nil); err != nil {
		t.Fatal(err)
	}

	wantJSON, _ := json.Marshal(servertest.Values(t, srv.URL, "flood/"))
	shown := `JSON.stringify(Object.fromEntries([...document.querySelectorAll('#rows tr')].map((tr) => [tr.dataset.key, tr.querySelector('td.v').textContent])))`
	p.waitFor(t, "showing the listing", shown+` === `+brJS(string(wantJSON)), 3*brTimeout)
	var states []string
	p.do(t, `window.__states`, &states)
	for _, s := range states {
		if s != "live" {
			t.Errorf("the page's connection went %q during the flood (all: %q): the stream was cut off", s, states)
			break
		}
	}
	var state map[string]string
	var table string
	p.do(t, shown, &table)
	if err := json.Unmarshal([]byte(table), &state); err != nil {
		t.Fatal(err)
	}
	servertest.CheckCoalesced(t, srv.URL, "flood/", state, int(sent()-before), writers*each)
}

// brScreenshots fills a view of a few keys and captures it at desktop
// width in light and dark, and at phone width.
func brScreenshots(t *testing.T, p *brPage, base string) {
	p.navigate(t, base+"/?pattern=app/**")
	p.waitFor(t, "connected", `document.getElementById('conn').dataset.state === 'live'`, brTimeout)
	for _, kv := range [][2]string{
		{"app/config/theme", "dark"},
		{"app/config/max-upload", "25MB"},
		{"app/flags/new-checkout", "on"},
		{"app/jobs/nightly-report", `{"state":"running","progress":0.42}`},
		{"app/presence/alice", "online"},
		{"app/presence/bob", "away since 14:02"},
	} {
		brPut(t, base, kv[0], kv[1])
	}
	req, _ := http.NewRequest(http.MethodPut, base+"/kv/app/avatar/alice", bytes.NewReader([]byte{0x89, 'P', 'N', 'G', 0xff, 0xfe, 0, 1, 2, 3, 4, 5}))
	if resp, err := http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}
	p.waitFor(t, "showing the keys", `document.querySelectorAll('#rows tr').length === 7`, brTimeout)
	p.do(t, brRowJS+`('app/presence/bob').querySelector('button.edit').click()`, nil)

	var shots []string
	save := func(name string, png []byte) {
		dir := t.TempDir()
		if os.Getenv("KVSSE_SCREENSHOT") == "1" {
			dir = filepath.Join(os.TempDir(), "kvsse-screenshots")
			if name == "screenshot.png" {
				dir = "web"
			}
			os.MkdirAll(dir, 0o755)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		shots = append(shots, path)
	}
	save("screenshot.png", p.screenshot(t, 1000, 720, false, "light"))
	save("screenshot-dark.png", p.screenshot(t, 1000, 720, false, "dark"))

	phone := p.screenshot(t, 375, 812, true, "light")
	var overflow bool
	p.do(t, `document.documentElement.scrollWidth > innerWidth`, &overflow)
	if overflow {
		t.Errorf("at 375 px the page is wider than the screen")
	}
	save("screenshot-phone.png", phone)
	t.Logf("screenshots: %s", strings.Join(shots, " "))
}

// TestBrowserWebSocketFragments checks the test's websocket client on a
// message split in continuation frames with a ping between them.
func TestBrowserWebSocketFragments(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	ws := &brWS{conn: client, br: bufio.NewReader(client)}
	go func() {
		defer server.Close()
		server.Write([]byte{0x01, 3, 'a', 'b', 'c'}) // text, not final
		server.Write([]byte{0x89, 1, 'p'})           // ping
		io.ReadFull(server, make([]byte, 2+4+1))     // the masked pong
		server.Write([]byte{0x00, 2, 'd', 'e'})      // continuation
		server.Write([]byte{0x80, 1, 'f'})           // final continuation
		server.Write(append([]byte{0x81, 126, 0x01, 0x00}, bytes.Repeat([]byte{'x'}, 256)...))
	}()
	for _, want := range []string{"abcdef", strings.Repeat("x", 256)} {
		got, err := ws.readMessage()
		if err != nil || string(got) != want {
			t.Fatalf("readMessage = %q, %v; want %q", got, err, want)
		}
	}
}
