package server_test

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"

	"kvsse/sse"
	"kvsse/sse/server"
	"kvsse/sse/server/servertest"
)

// promSample is one sample line of a text exposition.
type promSample struct {
	name   string
	labels map[string]string
	value  float64
}

// promText is a parsed and validated text exposition.
type promText struct {
	types   map[string]string // family name → type
	samples []promSample
}

// parseProm parses the Prometheus text format 0.0.4 strictly, as kvsse
// writes it, and checks it: every family has one HELP and one TYPE line
// before its samples, and its samples are together; names and labels
// have the right syntax; label values use only the escapes \\, \" and
// \n; values are floats; counters end in _total; histograms have
// cumulative _bucket series ending with le="+Inf", then _sum, and a
// _count equal to the +Inf bucket; no sample appears twice.
func parseProm(text string) (*promText, error) {
	if !strings.HasSuffix(text, "\n") {
		return nil, fmt.Errorf("the exposition does not end in a line feed")
	}
	p := &promText{types: map[string]string{}}
	help := map[string]bool{}
	started := map[string]bool{} // families with samples
	over := map[string]bool{}    // families that another family followed
	current := ""
	enter := func(fam string) error {
		if fam == current {
			return nil
		}
		if over[fam] {
			return fmt.Errorf("family %s is split", fam)
		}
		if current != "" {
			over[current] = true
		}
		current = fam
		return nil
	}
	seen := map[string]bool{}
	for i, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		fail := func(format string, a ...any) error {
			return fmt.Errorf("line %d %q: %s", i+1, line, fmt.Sprintf(format, a...))
		}
		if strings.HasPrefix(line, "#") {
			f := strings.SplitN(line, " ", 4)
			if len(f) < 3 || f[0] != "#" || (f[1] != "HELP" && f[1] != "TYPE") {
				return nil, fail("a comment other than HELP or TYPE")
			}
			name := f[2]
			if !promName(name, true) {
				return nil, fail("bad metric name")
			}
			if err := enter(name); err != nil {
				return nil, fail("%v", err)
			}
			if started[name] {
				return nil, fail("%s after the family's samples", f[1])
			}
			if f[1] == "HELP" {
				if help[name] {
					return nil, fail("second HELP")
				}
				help[name] = true
				if len(f) == 4 {
					if _, err := promUnescape(f[3], false); err != nil {
						return nil, fail("%v", err)
					}
				}
				continue
			}
			if p.types[name] != "" {
				return nil, fail("second TYPE")
			}
			if len(f) != 4 || !slices.Contains([]string{"counter", "gauge", "histogram", "summary", "untyped"}, f[3]) {
				return nil, fail("bad TYPE")
			}
			if f[3] == "counter" && !strings.HasSuffix(name, "_total") {
				return nil, fail("a counter whose name does not end in _total")
			}
			p.types[name] = f[3]
			continue
		}
		s, err := promParseSample(line)
		if err != nil {
			return nil, fail("%v", err)
		}
		fam := s.name
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(s.name, suffix); ok && p.types[base] == "histogram" {
				fam = base
			}
		}
		if !help[fam] || p.types[fam] == "" {
			return nil, fail("a sample of %s before its HELP and TYPE", fam)
		}
		if err := enter(fam); err != nil {
			return nil, fail("%v", err)
		}
		started[fam] = true
		_, hasLe := s.labels["le"]
		switch typ := p.types[fam]; {
		case typ == "histogram" && s.name == fam+"_bucket":
			if !hasLe {
				return nil, fail("a bucket without le")
			}
			if _, err := strconv.ParseFloat(s.labels["le"], 64); err != nil {
				return nil, fail("le is not a float")
			}
		case typ == "histogram":
			if hasLe {
				return nil, fail("le outside a bucket")
			}
		case s.name != fam:
			return nil, fail("sample name %s in family %s", s.name, fam)
		}
		key := s.name + "{" + promLabelKey(s.labels, "") + "}"
		if seen[key] {
			return nil, fail("a second sample %s", key)
		}
		seen[key] = true
		p.samples = append(p.samples, s)
	}
	return p, p.checkHistograms()
}

// checkHistograms checks each histogram series: buckets in increasing
// le with non-decreasing counts, the last +Inf, a _sum, and a _count
// equal to the +Inf bucket.
func (p *promText) checkHistograms() error {
	type series struct {
		les, counts []float64
		sum, count  *float64
	}
	all := map[string]*series{}
	var order []string
	for _, s := range p.samples {
		fam, suffix := s.name, ""
		for _, x := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(s.name, x); ok && p.types[base] == "histogram" {
				fam, suffix = base, x
			}
		}
		if suffix == "" {
			continue
		}
		id := fam + "{" + promLabelKey(s.labels, "le") + "}"
		h := all[id]
		if h == nil {
			h = new(series)
			all[id] = h
			order = append(order, id)
		}
		v := s.value
		switch suffix {
		case "_bucket":
			le, _ := strconv.ParseFloat(s.labels["le"], 64)
			if n := len(h.les); n > 0 && (le <= h.les[n-1] || v < h.counts[n-1]) {
				return fmt.Errorf("%s: bucket le=%s (%v) after le=%v (%v): not increasing and cumulative", id, s.labels["le"], v, h.les[n-1], h.counts[n-1])
			}
			if h.sum != nil || h.count != nil {
				return fmt.Errorf("%s: a bucket after _sum or _count", id)
			}
			h.les, h.counts = append(h.les, le), append(h.counts, v)
		case "_sum":
			h.sum = &v
		case "_count":
			h.count = &v
		}
	}
	for _, id := range order {
		h := all[id]
		n := len(h.les)
		switch {
		case n == 0 || !math.IsInf(h.les[n-1], 1):
			return fmt.Errorf("%s: the buckets do not end with le=\"+Inf\"", id)
		case h.sum == nil || h.count == nil:
			return fmt.Errorf("%s: no _sum or no _count", id)
		case *h.count != h.counts[n-1]:
			return fmt.Errorf("%s: _count %v, +Inf bucket %v", id, *h.count, h.counts[n-1])
		}
	}
	return nil
}

// promLabelKey is a canonical form of labels, leaving out the label skip.
func promLabelKey(labels map[string]string, skip string) string {
	var parts []string
	for k, v := range labels {
		if k != skip {
			parts = append(parts, k+"="+strconv.Quote(v))
		}
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

// promParseSample reads `name{label="value",...} value`.
func promParseSample(line string) (promSample, error) {
	s := promSample{labels: map[string]string{}}
	end := strings.IndexAny(line, "{ ")
	if end < 0 {
		return s, fmt.Errorf("no value")
	}
	s.name, line = line[:end], line[end:]
	if !promName(s.name, true) {
		return s, fmt.Errorf("bad metric name")
	}
	if rest, ok := strings.CutPrefix(line, "{"); ok {
		line = rest
		for !strings.HasPrefix(line, "}") {
			name, rest, ok := strings.Cut(line, `="`)
			if !ok || !promName(name, false) || strings.HasPrefix(name, "__") {
				return s, fmt.Errorf("bad label name in %q", line)
			}
			if _, dup := s.labels[name]; dup {
				return s, fmt.Errorf("label %s twice", name)
			}
			value, n, err := promQuoted(rest)
			if err != nil {
				return s, err
			}
			s.labels[name] = value
			line = rest[n:]
			if r, ok := strings.CutPrefix(line, ","); ok && !strings.HasPrefix(r, "}") {
				line = r
			} else if !strings.HasPrefix(line, "}") {
				return s, fmt.Errorf("want , or } at %q", line)
			}
		}
		line = line[1:]
	}
	v, ok := strings.CutPrefix(line, " ")
	if !ok || strings.Contains(v, " ") {
		return s, fmt.Errorf("want one space and a value (no timestamp) at %q", line)
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return s, fmt.Errorf("value %q: %v", v, err)
	}
	s.value = f
	return s, nil
}

// promQuoted reads a label value up to its closing quote and returns it
// unescaped and the bytes read, quote included.
func promQuoted(s string) (string, int, error) {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '"':
			v, err := promUnescape(s[:i], true)
			return v, i + 1, err
		case '\n':
			return "", 0, fmt.Errorf("raw line feed in a label value")
		}
	}
	return "", 0, fmt.Errorf("unterminated label value")
}

// promUnescape undoes \\ and \n, and \" in label values; any other escape is
// an error.
func promUnescape(s string, label bool) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		i++
		switch {
		case i == len(s):
			return "", fmt.Errorf("a trailing backslash in %q", s)
		case s[i] == '\\':
			b.WriteByte('\\')
		case s[i] == 'n':
			b.WriteByte('\n')
		case s[i] == '"' && label:
			b.WriteByte('"')
		default:
			return "", fmt.Errorf("bad escape \\%c in %q", s[i], s)
		}
	}
	return b.String(), nil
}

func promName(s string, colon bool) bool {
	for i, c := range s {
		ok := c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || colon && c == ':' || i > 0 && c >= '0' && c <= '9'
		if !ok {
			return false
		}
	}
	return s != ""
}

// get is the value of the sample with exactly these labels (name, value
// pairs), and whether there is one.
func (p *promText) get(name string, labels ...string) (float64, bool) {
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	for _, s := range p.samples {
		if s.name == name && promLabelKey(s.labels, "") == promLabelKey(want, "") {
			return s.value, true
		}
	}
	return 0, false
}

// val is get's value, 0 for a series not there (yet).
func (p *promText) val(name string, labels ...string) float64 {
	v, _ := p.get(name, labels...)
	return v
}

// metricsScrape fetches and validates an exposition.
func metricsScrape(t *testing.T, url string) *promText {
	t.Helper()
	resp, body := servertest.Send(t, "GET", url, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, body)
	}
	if ct, want := resp.Header.Get("Content-Type"), "text/plain; version=0.0.4; charset=utf-8"; ct != want {
		t.Errorf("Content-Type %q, want %q", ct, want)
	}
	p, err := parseProm(string(body))
	if err != nil {
		t.Fatalf("invalid exposition: %v\n%s", err, body)
	}
	return p
}

// metricsWait scrapes url until ok holds of the exposition, or fails the
// test after 10 s.
func metricsWait(t *testing.T, url, what string, ok func(*promText) bool) *promText {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		p := metricsScrape(t, url)
		if ok(p) {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// metricsDo sends one request and returns the response with its body read.
func metricsDo(t *testing.T, method, url, body string, header ...string) (*http.Response, []byte) {
	t.Helper()
	return servertest.Send(t, method, url, strings.NewReader(body), header...)
}

// metricsOpenStream opens a watch and reads up to its sync event. Cancel ends it.
func metricsOpenStream(t *testing.T, url string) (*sse.Reader, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	rd := sse.NewReader(resp.Body)
	for {
		m, err := rd.Next()
		if err != nil {
			t.Fatalf("reading %s up to sync: %v", url, err)
		}
		if m.Event == "sync" {
			return rd, cancel
		}
	}
}

func TestMetricsParser(t *testing.T) {
	// The exposition kvsse writes for awkward label values reads back.
	odd := "a\"b\\c\nd{}=,"
	b := server.Exposition(odd)
	p, err := parseProm(string(b))
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	if v, ok := p.get("x_total", "route", odd, "code", "200"); !ok || v != 3 {
		t.Errorf("x_total = %v, %v; want 3\n%s", v, ok, b)
	}
	var got []float64
	for _, le := range []string{"0.1", "1", "+Inf"} {
		got = append(got, p.val("d_seconds_bucket", "route", odd, "le", le))
	}
	got = append(got, p.val("d_seconds_count", "route", odd), p.val("d_seconds_sum", "route", odd))
	if diff := gocmp.Diff([]float64{1, 3, 4, 4, 8.05}, got); diff != "" {
		t.Errorf("histogram (-want +got):\n%s", diff)
	}

	// The parser refuses what breaks the format.
	const head = "# HELP a_total A.\n# TYPE a_total counter\n"
	const hist = "# HELP h H.\n# TYPE h histogram\n"
	for _, tc := range []struct{ name, text string }{
		{"no HELP", "# TYPE a_total counter\na_total 1\n"},
		{"no TYPE", "# HELP a_total A.\na_total 1\n"},
		{"TYPE after sample", "# HELP a_total A.\na_total 1\n# TYPE a_total counter\n"},
		{"counter without _total", "# HELP a A.\n# TYPE a counter\na 1\n"},
		{"bad value", head + "a_total one\n"},
		{"timestamp", head + "a_total 1 1700000000\n"},
		{"bad label name", head + "a_total{1x=\"v\"} 1\n"},
		{"bad escape", head + "a_total{x=\"\\t\"} 1\n"},
		{"unquoted label", head + "a_total{x=v} 1\n"},
		{"unterminated label", head + "a_total{x=\"v} 1\n"},
		{"duplicate label", head + "a_total{x=\"v\",x=\"w\"} 1\n"},
		{"duplicate sample", head + "a_total 1\na_total 2\n"},
		{"split family", head + "a_total{x=\"1\"} 1\n# HELP b B.\n# TYPE b gauge\nb 1\na_total{x=\"2\"} 1\n"},
		{"no final newline", head + "a_total 1"},
		{"not cumulative", hist + "h_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n"},
		{"no +Inf", hist + "h_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n"},
		{"count differs", hist + "h_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n"},
		{"no sum", hist + "h_bucket{le=\"+Inf\"} 2\nh_count 2\n"},
		{"le not increasing", hist + "h_bucket{le=\"1\"} 1\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := parseProm(tc.text); err == nil {
				t.Errorf("parseProm accepted\n%s", tc.text)
			}
		})
	}
}

func TestMetricsFamilies(t *testing.T) {
	ts := servertest.Start(t)
	metricsDo(t, "PUT", ts.URL+"/kv/fam/secret-key-name", "v")
	metricsDo(t, "GET", ts.URL+"/kv/fam/secret-key-name", "")
	metricsDo(t, "GET", ts.URL+"/kv/fam/missing-key-name", "")
	_, cancel := metricsOpenStream(t, ts.URL+"/watch/fam/**")
	cancel()
	p := metricsScrape(t, ts.URL+"/metrics")

	want := map[string]string{
		"kvsse_http_requests_total":           "counter",
		"kvsse_http_request_duration_seconds": "histogram",
		"kvsse_stream_duration_seconds":       "histogram",
		"kvsse_subscribers":                   "gauge",
		"kvsse_events_sent_total":             "counter",
		"kvsse_stream_ends_total":             "counter",
		"kvsse_revision":                      "gauge",
		"kvsse_keys":                          "gauge",
		"kvsse_value_bytes":                   "gauge",
		"kvsse_writes_total":                  "counter",
		"kvsse_write_batches_total":           "counter",
		"kvsse_log_fsyncs_total":              "counter",
		"kvsse_log_fsync_seconds_total":       "counter",
		"kvsse_log_bytes":                     "gauge",
		"kvsse_compactions_total":             "counter",
		"kvsse_transactions_total":            "counter",
		"kvsse_transaction_changes_total":     "counter",
	}
	if diff := gocmp.Diff(want, p.types); diff != "" {
		t.Errorf("families (-want +got):\n%s", diff)
	}
	routes := map[string]bool{}
	for _, s := range p.samples {
		if r, ok := s.labels["route"]; ok {
			routes[r] = true
		}
		for _, v := range s.labels {
			if strings.Contains(v, "secret-key-name") || strings.Contains(v, "missing-key-name") {
				t.Errorf("a key in a label: %s%v", s.name, s.labels)
			}
		}
	}
	for _, r := range []string{"PUT /kv/{key...}", "GET /kv/{key...}", "GET /healthz"} {
		if !routes[r] {
			t.Errorf("no series for route %q; routes: %v", r, routes)
		}
	}
	if _, ok := p.get("kvsse_stream_ends_total", "why", sse.EndLag); !ok {
		t.Errorf("no kvsse_stream_ends_total{why=%q} series before any lag", sse.EndLag)
	}
}

func TestMetricsCounters(t *testing.T) {
	ts := servertest.Start(t) // -sync always, the default
	m := ts.URL + "/metrics"
	put := `PUT /kv/{key...}`
	get := `GET /kv/{key...}`
	watch := `GET /watch/{pattern...}`

	before := metricsScrape(t, m)
	const n = 5
	var rev int64
	var size float64
	for i := range n {
		value := strings.Repeat("x", 10+i)
		resp, _ := metricsDo(t, "PUT", fmt.Sprintf("%s/kv/c/k%d", ts.URL, i), value)
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("PUT: %s", resp.Status)
		}
		rev, _ = strconv.ParseInt(resp.Header.Get("Kvsse-Revision"), 10, 64)
		size += float64(len(value))
	}
	if resp, _ := metricsDo(t, "GET", ts.URL+"/kv/c/nope", ""); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET missing: %s", resp.Status)
	}
	after := metricsScrape(t, m)
	delta := func(name string, labels ...string) float64 {
		return after.val(name, labels...) - before.val(name, labels...)
	}
	got := map[string]float64{
		"201 puts":  delta("kvsse_http_requests_total", "route", put, "code", "201"),
		"put times": delta("kvsse_http_request_duration_seconds_count", "route", put),
		"404 gets":  delta("kvsse_http_requests_total", "route", get, "code", "404"),
		"200 gets":  delta("kvsse_http_requests_total", "route", get, "code", "200"),
		"writes":    delta("kvsse_writes_total"),
		"keys":      delta("kvsse_keys"),
		"bytes":     delta("kvsse_value_bytes"),
		"revision":  after.val("kvsse_revision"),
	}
	want := map[string]float64{
		"201 puts": n, "put times": n, "404 gets": 1, "200 gets": 0,
		"writes": n, "keys": n, "bytes": size, "revision": float64(rev),
	}
	if diff := gocmp.Diff(want, got); diff != "" {
		t.Errorf("after %d puts and a 404 (-want +got):\n%s", n, diff)
	}
	if after.val("kvsse_log_fsyncs_total") <= 0 || after.val("kvsse_log_bytes") <= 0 || after.val("kvsse_log_fsync_seconds_total") <= 0 {
		t.Errorf("fsyncs %v (%v s), log bytes %v; want them above 0 with -sync always",
			after.val("kvsse_log_fsyncs_total"), after.val("kvsse_log_fsync_seconds_total"), after.val("kvsse_log_bytes"))
	}

	// Replacing a value counts the difference; a delete frees its key.
	metricsDo(t, "PUT", ts.URL+"/kv/c/k0", strings.Repeat("y", 100))
	metricsDo(t, "DELETE", ts.URL+"/kv/c/k1", "")
	p := metricsScrape(t, m)
	if k, b := p.val("kvsse_keys")-before.val("kvsse_keys"), p.val("kvsse_value_bytes")-before.val("kvsse_value_bytes"); k != n-1 || b != size-10-11+100 {
		t.Errorf("after a replace and a delete: keys +%v, bytes +%v; want +%d, +%v", k, b, n-1, size-10-11+100)
	}

	// A stream: subscribers while open, events sent as delivered, its
	// end counted, its duration kept out of the request histogram.
	before = metricsScrape(t, m)
	rd, cancel := metricsOpenStream(t, ts.URL+"/watch/s/**")
	if v := metricsScrape(t, m).val("kvsse_subscribers"); v != before.val("kvsse_subscribers")+1 {
		t.Errorf("subscribers %v with a stream open, want %v", v, before.val("kvsse_subscribers")+1)
	}
	const events = 3
	for i := range events {
		metricsDo(t, "PUT", fmt.Sprintf("%s/kv/s/k%d", ts.URL, i), "v")
	}
	for range events {
		if m, err := rd.Next(); err != nil || m.Event != "put" {
			t.Fatalf("got %+v, %v; want a put", m, err)
		}
	}
	if d := metricsScrape(t, m).val("kvsse_events_sent_total") - before.val("kvsse_events_sent_total"); d != events {
		t.Errorf("events sent +%v after %d delivered", d, events)
	}
	cancel()
	after = metricsWait(t, m, "the stream's end to be counted", func(p *promText) bool {
		return p.val("kvsse_http_requests_total", "route", watch, "code", "200") > before.val("kvsse_http_requests_total", "route", watch, "code", "200")
	})
	got = map[string]float64{
		"subscribers":    after.val("kvsse_subscribers"),
		"client ends":    delta("kvsse_stream_ends_total", "why", sse.EndClient),
		"streams timed":  delta("kvsse_stream_duration_seconds_count"),
		"watches timed":  delta("kvsse_http_request_duration_seconds_count", "route", watch),
		"watch requests": delta("kvsse_http_requests_total", "route", watch, "code", "200"),
	}
	want = map[string]float64{
		"subscribers":    before.val("kvsse_subscribers"),
		"client ends":    1,
		"streams timed":  1,
		"watches timed":  0,
		"watch requests": 1,
	}
	if diff := gocmp.Diff(want, got); diff != "" {
		t.Errorf("after the stream closed (-want +got):\n%s", diff)
	}

	// An NDJSON export is a request, timed with the listings, not a
	// stream, although it is streamed as application/x-ndjson.
	before = after
	list := "GET /kv"
	if resp, b := metricsDo(t, "GET", ts.URL+"/kv?prefix=s/&format=ndjson", ""); resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("export: %s %q %s", resp.Status, resp.Header.Get("Content-Type"), b)
	}
	after = metricsScrape(t, m)
	got = map[string]float64{
		"streams timed":  delta("kvsse_stream_duration_seconds_count"),
		"listings timed": delta("kvsse_http_request_duration_seconds_count", "route", list),
	}
	want = map[string]float64{"streams timed": 0, "listings timed": 1}
	if diff := gocmp.Diff(want, got); diff != "" {
		t.Errorf("after an export (-want +got):\n%s", diff)
	}
}

func TestMetricsLag(t *testing.T) {
	ts := servertest.Start(t, "-memory", "-sync", "none", "-sub-buffer", "1")
	conn, rd := servertest.OpenAtSync(t, ts.URL, "/watch/lag/**", 64<<10)
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	// The client reads nothing while 16 MiB of events are written: far
	// more than the socket buffers hold, so the one-event buffer fills.
	value := strings.Repeat("v", 1<<20)
	for i := range 16 {
		if resp, b := metricsDo(t, "PUT", fmt.Sprintf("%s/kv/lag/k%d", ts.URL, i), value); resp.StatusCode != http.StatusCreated {
			t.Fatalf("PUT: %s %s", resp.Status, b)
		}
	}
	for {
		if _, err := rd.Next(); err != nil {
			break // the server ended the stream
		}
	}
	metricsWait(t, ts.URL+"/metrics", `kvsse_stream_ends_total{why="lag"} 1`, func(p *promText) bool {
		return p.val("kvsse_stream_ends_total", "why", sse.EndLag) == 1
	})
}

func TestMetricsRestart(t *testing.T) {
	dir := t.TempDir()
	ts := servertest.Start(t, "-data", dir)
	for _, k := range []string{"a", "b", "c"} {
		metricsDo(t, "PUT", ts.URL+"/kv/r/"+k, "value-"+k)
	}
	metricsDo(t, "DELETE", ts.URL+"/kv/r/b", "")
	ts.Stop(t)
	ts = servertest.Start(t, "-data", dir)
	p := metricsScrape(t, ts.URL+"/metrics")
	got := []float64{p.val("kvsse_keys"), p.val("kvsse_value_bytes"), p.val("kvsse_revision")}
	if diff := gocmp.Diff([]float64{2, 14, 4}, got); diff != "" {
		t.Errorf("keys, value bytes, revision after a restart (-want +got):\n%s", diff)
	}
}

func TestMetricsAddr(t *testing.T) {
	ts := servertest.Start(t, "-memory", "-metrics-addr", "127.0.0.1:0")
	if ts.MetricsURL == "" || ts.MetricsURL == ts.URL {
		t.Fatalf("metrics URL %q, main URL %q", ts.MetricsURL, ts.URL)
	}
	metricsDo(t, "PUT", ts.URL+"/kv/m/a", "v")
	for _, base := range []string{ts.MetricsURL, ts.URL} {
		if w := metricsScrape(t, base+"/metrics").val("kvsse_writes_total"); w != 1 {
			t.Errorf("%s/metrics: kvsse_writes_total %v, want 1", base, w)
		}
	}
	for _, tc := range []struct {
		url, want string
		status    int
	}{
		{ts.MetricsURL + "/debug/pprof/", "goroutine", http.StatusOK},
		{ts.MetricsURL + "/debug/pprof/goroutine?debug=1", "goroutine profile", http.StatusOK},
		{ts.MetricsURL + "/debug/pprof/cmdline", "", http.StatusOK},
		{ts.MetricsURL + "/debug/pprof/symbol", "num_symbols", http.StatusOK},
		{ts.URL + "/debug/pprof/", "no_route", http.StatusNotFound},
	} {
		resp, body := metricsDo(t, "GET", tc.url, "")
		if resp.StatusCode != tc.status || !bytes.Contains(body, []byte(tc.want)) {
			t.Errorf("GET %s: %s, want %d with %q\n%.300s", tc.url, resp.Status, tc.status, tc.want, body)
		}
	}

	// A taken -metrics-addr is an error from server.Serve.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = servertest.Serve(ctx, []string{"-addr", "127.0.0.1:0", "-memory", "-metrics-addr", ln.Addr().String()},
		io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "metrics-addr") {
		t.Errorf("server.Serve with a taken -metrics-addr returned %v", err)
	}
}

func TestAccessLog(t *testing.T) {
	ts := servertest.Start(t, "-memory", "-log-format", "json", "-log-level", "info")
	logBuf := ts.Log
	const (
		value = "value-secret-123"
		token = "token-secret-456"
	)
	metricsDo(t, "PUT", ts.URL+"/kv/acc/k?ttl=1h", value, "Authorization", "Bearer "+token)
	metricsDo(t, "GET", ts.URL+"/kv/acc/k", "")
	metricsDo(t, "GET", ts.URL+"/kv/acc/missing", "")
	metricsDo(t, "GET", ts.URL+"/kv?prefix=acc/", "")
	_, cancel := metricsOpenStream(t, ts.URL+"/watch/acc/**?access_token="+token)
	cancel()
	ts.Stop(t) // every handler has returned: every line is written

	type line struct {
		Method string `json:"method"`
		Route  string `json:"route"`
		Status int    `json:"status"`
	}
	var got []line
	for _, raw := range strings.Split(strings.TrimSpace(logBuf.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(raw), &rec); err != nil {
			t.Fatalf("a log line that is not JSON: %v\n%s", err, raw)
		}
		if rec["msg"] != "access" || rec["route"] == "GET /healthz" {
			continue
		}
		for _, f := range []string{"time", "level", "method", "route", "status", "duration", "bytes", "remote"} {
			if _, ok := rec[f]; !ok {
				t.Errorf("access line without %q: %s", f, raw)
			}
		}
		if rec["level"] != "INFO" {
			t.Errorf("access line at %v: %s", rec["level"], raw)
		}
		if host, _, err := net.SplitHostPort(fmt.Sprint(rec["remote"])); err != nil || host != "127.0.0.1" {
			t.Errorf("remote %v: %s", rec["remote"], raw)
		}
		if rec["route"] == "GET /kv/{key...}" && rec["status"] == 200.0 && rec["bytes"] != float64(len(value)) {
			t.Errorf("GET logged %v bytes, want %d: %s", rec["bytes"], len(value), raw)
		}
		var l line
		json.Unmarshal([]byte(raw), &l)
		got = append(got, l)
	}
	slices.SortFunc(got, func(a, b line) int {
		return cmp.Or(strings.Compare(a.Route, b.Route), cmp.Compare(a.Status, b.Status))
	})
	want := []line{
		{"GET", "GET /kv", 200},
		{"GET", "GET /kv/{key...}", 200},
		{"GET", "GET /kv/{key...}", 404},
		{"GET", "GET /watch/{pattern...}", 200},
		{"PUT", "PUT /kv/{key...}", 201},
	}
	if diff := gocmp.Diff(want, got); diff != "" {
		t.Errorf("access lines (-want +got):\n%s\nlog:\n%s", diff, logBuf.String())
	}
	for _, secret := range []string{value, token, "access_token", "ttl=", "prefix="} {
		if strings.Contains(logBuf.String(), secret) {
			t.Errorf("the log holds %q:\n%s", secret, logBuf.String())
		}
	}
}

func TestMetricsRouteBehindAuth(t *testing.T) {
	// The auth middleware hands the mux a copy of the request: the route
	// is still found, for refused requests too.
	file := filepath.Join(t.TempDir(), "auth.json")
	const token = "metrics-test-token"
	if err := os.WriteFile(file, []byte(`{"tokens":[{"name":"all","token":"`+token+`","read":["**"],"write":["**"]}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	ts := servertest.Start(t, "-auth", file)
	bearer := []string{"Authorization", "Bearer " + token}
	if resp, _ := metricsDo(t, "PUT", ts.URL+"/kv/a/b", "v"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("PUT without a token: %s", resp.Status)
	}
	if resp, _ := metricsDo(t, "PUT", ts.URL+"/kv/a/b", "v", bearer...); resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT with a token: %s", resp.Status)
	}
	resp, body := metricsDo(t, "GET", ts.URL+"/metrics", "", bearer...)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics with a ** token: %s", resp.Status)
	}
	p, err := parseProm(string(body))
	if err != nil {
		t.Fatal(err)
	}
	route := "PUT /kv/{key...}"
	got := []float64{p.val("kvsse_http_requests_total", "route", route, "code", "401"), p.val("kvsse_http_requests_total", "route", route, "code", "201")}
	if diff := gocmp.Diff([]float64{1, 1}, got); diff != "" {
		t.Errorf("PUTs refused and done, by route (-want +got):\n%s", diff)
	}
}
