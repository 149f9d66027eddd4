package sse_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"kvsse/sse"
)

// chunkReader returns at most n bytes per Read, to cut lines at every place.
type chunkReader struct {
	r io.Reader
	n int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	return c.r.Read(p[:min(len(p), c.n)])
}

// readAll returns the messages of r up to its first error.
func readAll(r *sse.Reader) ([]sse.Message, error) {
	var msgs []sse.Message
	for {
		m, err := r.Next()
		if err != nil {
			return msgs, err
		}
		msgs = append(msgs, m)
	}
}

func TestReader(t *testing.T) {
	tests := []struct {
		name       string
		in         string
		want       []sse.Message
		wantLastID string
		wantRetry  time.Duration
	}{
		{
			name: "standard: stock ticker",
			in:   "data: YHOO\ndata: +2\ndata: 10\n\n",
			want: []sse.Message{{Data: "YHOO\n+2\n10"}},
		},
		{
			name: "standard: four blocks",
			in:   ": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
			want: []sse.Message{
				{ID: "1", Data: "first event"},
				{ID: "", Data: "second event"},
				{ID: "", Data: " third event"},
			},
		},
		{
			name: "standard: empty data",
			in:   "data\n\ndata\ndata\n\ndata:",
			want: []sse.Message{{Data: ""}, {Data: "\n"}},
		},
		{
			name: "standard: data:test and data: test",
			in:   "data:test\n\ndata: test\n\n",
			want: []sse.Message{{Data: "test"}, {Data: "test"}},
		},
		{
			name: "product stream",
			in: "retry: 2000\n\n" +
				"event: put\ndata: {\"revision\":12}\n\n" +
				"id: 40\nevent: sync\ndata: {\"revision\":40}\n\n" +
				": keep-alive\nid: 57\n\n",
			want: []sse.Message{
				{Event: "put", Data: `{"revision":12}`, Retry: 2 * time.Second},
				{ID: "40", Event: "sync", Data: `{"revision":40}`, Retry: 2 * time.Second},
			},
			wantLastID: "57",
			wantRetry:  2 * time.Second,
		},
		{
			name:       "id-only block moves the last event id",
			in:         "id: 57\n\n",
			wantLastID: "57",
		},
		{
			name: "id without blank line at EOF is not used",
			in:   "data: a\n\nid: 5\n",
			want: []sse.Message{{Data: "a"}},
		},
		{
			name:       "id is kept across events",
			in:         "id: 1\ndata: a\n\ndata: b\n\n",
			want:       []sse.Message{{ID: "1", Data: "a"}, {ID: "1", Data: "b"}},
			wantLastID: "1",
		},
		{
			name:       "id with NUL ignored",
			in:         "id: 1\n\nid: 2\x003\ndata: x\n\n",
			want:       []sse.Message{{ID: "1", Data: "x"}},
			wantLastID: "1",
		},
		{
			name:       "last id field wins",
			in:         "id: 1\nid: 2\ndata: x\nid: 3\n\n",
			want:       []sse.Message{{ID: "3", Data: "x"}},
			wantLastID: "3",
		},
		{
			name: "event without blank line at EOF discarded",
			in:   "data: a\n\ndata: b\n",
			want: []sse.Message{{Data: "a"}},
		},
		{
			name: "unterminated last line discarded",
			in:   "data: a\n\ndata: b",
			want: []sse.Message{{Data: "a"}},
		},
		{
			name: "BOM stripped",
			in:   "\xef\xbb\xbfdata: a\n\n",
			want: []sse.Message{{Data: "a"}},
		},
		{
			name: "second BOM is part of the field name",
			in:   "\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n",
			want: []sse.Message{{Data: "b"}},
		},
		{
			name: "BOM later in the stream is not stripped",
			in:   "data: a\n\n\xef\xbb\xbfdata: b\n\n",
			want: []sse.Message{{Data: "a"}},
		},
		{
			name: "BOM alone",
			in:   "\xef\xbb\xbf",
		},
		{
			name:       "CR line endings",
			in:         "id: 1\rdata: a\rdata: b\r\r",
			want:       []sse.Message{{ID: "1", Data: "a\nb"}},
			wantLastID: "1",
		},
		{
			name:       "CRLF line endings",
			in:         "id: 1\r\ndata: a\r\ndata: b\r\n\r\n",
			want:       []sse.Message{{ID: "1", Data: "a\nb"}},
			wantLastID: "1",
		},
		{
			name: "mixed line endings",
			in:   "data: a\r\n\rdata: b\n\rdata: c\r\r\n",
			want: []sse.Message{{Data: "a"}, {Data: "b"}, {Data: "c"}},
		},
		{
			name: "LF CR is two line endings",
			in:   "data: a\n\r",
			want: []sse.Message{{Data: "a"}},
		},
		{
			name: "comments skipped",
			in:   ":\n: x\n::data: no\ndata: a\n:\n\n",
			want: []sse.Message{{Data: "a"}},
		},
		{
			name: "field without colon has an empty value",
			in:   "event: put\nevent\ndata\n\n",
			want: []sse.Message{{Data: ""}},
		},
		{
			name: "only one space removed",
			in:   "data:  a\ndata:\tb\ndata: c \n\n",
			want: []sse.Message{{Data: " a\n\tb\nc "}},
		},
		{
			name: "colon in value",
			in:   "data: a: b\ndata::c\n\n",
			want: []sse.Message{{Data: "a: b\n:c"}},
		},
		{
			name: "unknown and miscased fields ignored",
			in:   "foo: bar\nData: no\ndata : no\n data: no\ndata: a\n\n",
			want: []sse.Message{{Data: "a"}},
		},
		{
			name: "event type resets after dispatch",
			in:   "event: put\ndata: a\n\ndata: b\n\n",
			want: []sse.Message{{Event: "put", Data: "a"}, {Data: "b"}},
		},
		{
			name: "event type resets after a block without data",
			in:   "event: put\n\ndata: b\n\n",
			want: []sse.Message{{Data: "b"}},
		},
		{
			name: "last event field wins",
			in:   "event: a\nevent: b\ndata: x\n\n",
			want: []sse.Message{{Event: "b", Data: "x"}},
		},
		{
			name:      "retry",
			in:        "retry: 1500\ndata: a\n\nretry: 0\ndata: b\n\n",
			want:      []sse.Message{{Data: "a", Retry: 1500 * time.Millisecond}, {Data: "b"}},
			wantRetry: 0,
		},
		{
			name: "retry not all digits ignored",
			in: "retry: 100\n" +
				"retry: 15x\nretry: -1\nretry: +1\nretry:  10\nretry: 1.5\nretry:\nretry\n" +
				"retry: 99999999999999999999\nretry: 9223372036855\n" +
				"data: a\n\n",
			want:      []sse.Message{{Data: "a", Retry: 100 * time.Millisecond}},
			wantRetry: 100 * time.Millisecond,
		},
		{
			name:      "largest retry",
			in:        "retry: 9223372036854\n\n",
			wantRetry: 9223372036854 * time.Millisecond,
		},
		{
			name:      "retry needs no dispatch",
			in:        "retry: 7\n",
			wantRetry: 7 * time.Millisecond,
		},
		{
			name: "bytes pass through",
			in:   "data: \x00\xff\xfe\n\n",
			want: []sse.Message{{Data: "\x00\xff\xfe"}},
		},
		{
			name: "empty stream",
			in:   "",
		},
		{
			name: "blank lines only",
			in:   "\n\r\n\r",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			readers := map[string]io.Reader{
				"whole":       strings.NewReader(tt.in),
				"byte a time": iotest.OneByteReader(strings.NewReader(tt.in)),
			}
			for how, in := range readers {
				r := sse.NewReader(in)
				got, err := readAll(r)
				if err != io.EOF {
					t.Errorf("%s: Next: error %v, want io.EOF", how, err)
				}
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Errorf("%s: messages (-want +got):\n%s", how, diff)
				}
				if got := r.LastEventID(); got != tt.wantLastID {
					t.Errorf("%s: LastEventID() = %q, want %q", how, got, tt.wantLastID)
				}
				if got := r.Retry(); got != tt.wantRetry {
					t.Errorf("%s: Retry() = %v, want %v", how, got, tt.wantRetry)
				}
				if _, err := r.Next(); err != io.EOF {
					t.Errorf("%s: Next after EOF: error %v, want io.EOF", how, err)
				}
			}
		})
	}
}

func TestReaderLimit(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []sse.Message
		wantErr error
	}{
		{
			name:    "line at the limit",
			in:      "data:123\r\n\r\n",
			want:    []sse.Message{{Data: "123"}},
			wantErr: io.EOF,
		},
		{
			name:    "line over the limit",
			in:      "data: a\n\ndata:1234\n\n",
			want:    []sse.Message{{Data: "a"}},
			wantErr: sse.ErrTooLong,
		},
		{
			name:    "comment over the limit",
			in:      ":23456789\ndata: a\n\n",
			wantErr: sse.ErrTooLong,
		},
		{
			name:    "unterminated line over the limit",
			in:      "data: 123",
			wantErr: sse.ErrTooLong,
		},
		{
			name:    "data at the limit",
			in:      "data:12\ndata:12\ndata:12\n\n",
			want:    []sse.Message{{Data: "12\n12\n12"}},
			wantErr: io.EOF,
		},
		{
			name:    "data over the limit",
			in:      "data:12\ndata:12\ndata:123\n\n",
			wantErr: sse.ErrTooLong,
		},
		{
			name:    "many empty data lines",
			in:      strings.Repeat("data\n", 100) + "\n",
			wantErr: sse.ErrTooLong,
		},
		{
			name:    "BOM not counted",
			in:      "\xef\xbb\xbfdata:123\n\n",
			want:    []sse.Message{{Data: "123"}},
			wantErr: io.EOF,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := sse.NewReaderSize(iotest.OneByteReader(strings.NewReader(tt.in)), 8)
			got, err := readAll(r)
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("Next: error %v, want %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("messages (-want +got):\n%s", diff)
			}
			if _, err2 := r.Next(); err2 != err {
				t.Errorf("Next after error: error %v, want %v", err2, err)
			}
		})
	}
}

func TestReaderReadError(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name    string
		in      io.Reader
		want    []sse.Message
		wantErr error
	}{
		{
			name:    "error after an event",
			in:      io.MultiReader(strings.NewReader("data: a\n\ndata: b\n"), iotest.ErrReader(boom)),
			want:    []sse.Message{{Data: "a"}},
			wantErr: boom,
		},
		{
			name:    "data and error together",
			in:      iotest.DataErrReader(strings.NewReader("data: a\n\n")),
			want:    []sse.Message{{Data: "a"}},
			wantErr: io.EOF,
		},
		{
			name:    "reader without progress",
			in:      emptyReader{},
			wantErr: io.ErrNoProgress,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readAll(sse.NewReader(tt.in))
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("Next: error %v, want %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("messages (-want +got):\n%s", diff)
			}
		})
	}
}

// emptyReader returns 0, nil forever.
type emptyReader struct{}

func (emptyReader) Read([]byte) (int, error) { return 0, nil }

// TestReaderAllocs: Next allocates only a message's data, NextFrame
// nothing, heartbeats included.
func TestReaderAllocs(t *testing.T) {
	var events, beats []byte // beats: each event followed by a heartbeat
	e := typicalEvent(t)
	for range 200 {
		events = e.AppendTo(events)
		beats = append(e.AppendTo(beats), ": keep-alive\nid: 9\n\n"...)
	}
	for _, tt := range []struct {
		name   string
		stream []byte
		next   func(*sse.Reader) error
		max    float64
	}{
		// A changed id costs Next its new string: the heartbeats are left out.
		{"Next", events, func(r *sse.Reader) error { _, err := r.Next(); return err }, 1},
		{"NextFrame", beats, func(r *sse.Reader) error { _, err := r.NextFrame(); return err }, 0},
	} {
		r := sse.NewReader(bytes.NewReader(tt.stream))
		if err := tt.next(r); err != nil { // warm up the buffers
			t.Fatal(err)
		}
		allocs := testing.AllocsPerRun(100, func() {
			if err := tt.next(r); err != nil {
				t.Fatal(err)
			}
		})
		if allocs > tt.max {
			t.Errorf("%s: %v allocs per call, want at most %v", tt.name, allocs, tt.max)
		}
	}
}

func BenchmarkReader(b *testing.B) {
	var stream []byte
	e := typicalEvent(b)
	for range 1000 {
		stream = e.AppendTo(stream)
	}
	br := bytes.NewReader(stream)
	b.ReportAllocs()
	b.SetBytes(int64(len(stream)))
	for b.Loop() {
		br.Reset(stream)
		r := sse.NewReader(br)
		for {
			if _, err := r.Next(); err != nil {
				break
			}
		}
	}
}

func ExampleReader() {
	stream := "retry: 2000\n\n" +
		"id: 41\nevent: put\ndata: {\"key\":\"config/a\"}\n\n" +
		": keep-alive\nid: 57\n\n"
	r := sse.NewReader(strings.NewReader(stream))
	for {
		m, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			panic(err)
		}
		fmt.Printf("id=%s event=%s data=%s retry=%v\n", m.ID, m.Event, m.Data, m.Retry)
	}
	fmt.Println("resume after", r.LastEventID())
	// Output:
	// id=41 event=put data={"key":"config/a"} retry=2s
	// resume after 57
}

// refResult is what the reference parser finds in a stream.
type refResult struct {
	msgs    []sse.Message
	lastID  string
	retry   time.Duration
	longest int // longest line, the unterminated tail included
	biggest int // largest data, counted line by line
}

// reference parses a whole stream by the standard's rules, written for
// clarity rather than speed.
func reference(in string) refResult {
	var res refResult
	in = strings.TrimPrefix(in, "\uFEFF")
	var data, typ, id string
	for {
		i := strings.IndexAny(in, "\r\n")
		if i < 0 {
			res.longest = max(res.longest, len(in))
			return res
		}
		line := in[:i]
		res.longest = max(res.longest, len(line))
		if strings.HasPrefix(in[i:], "\r\n") {
			in = in[i+2:]
		} else {
			in = in[i+1:]
		}
		switch {
		case line == "":
			res.lastID = id
			if data == "" {
				typ = ""
				continue
			}
			res.msgs = append(res.msgs, sse.Message{
				ID: id, Event: typ, Data: strings.TrimSuffix(data, "\n"), Retry: res.retry,
			})
			data, typ = "", ""
		case line[0] == ':':
		default:
			field, value, _ := strings.Cut(line, ":")
			value = strings.TrimPrefix(value, " ")
			switch field {
			case "data":
				res.biggest = max(res.biggest, len(data)+len(value))
				data += value + "\n"
			case "event":
				typ = value
			case "id":
				if !strings.Contains(value, "\x00") {
					id = value
				}
			case "retry":
				ms, err := strconv.ParseInt(value, 10, 64)
				allDigits := value != "" && strings.Trim(value, "0123456789") == ""
				if allDigits && err == nil && ms <= math.MaxInt64/int64(time.Millisecond) {
					res.retry = time.Duration(ms) * time.Millisecond
				}
			}
		}
	}
}

func FuzzReader(f *testing.F) {
	f.Add([]byte("data: YHOO\ndata: +2\ndata: 10\n\n"), uint8(0))
	f.Add([]byte(": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n"), uint8(3))
	f.Add([]byte("data\n\ndata\ndata\n\ndata:"), uint8(1))
	f.Add([]byte("\xef\xbb\xbfid: 1\rdata: a\r\ndata:b\r\r\n: x\nid: 2\x00\n\nretry: 12\n\n"), uint8(2))
	f.Add([]byte("event: put\nretry: 9223372036854\nretry: 9223372036855\ndata\n\n"), uint8(5))
	f.Fuzz(func(t *testing.T, in []byte, chunk uint8) {
		want := reference(string(in))

		r := sse.NewReader(&chunkReader{r: bytes.NewReader(in), n: int(chunk) + 1})
		got, err := readAll(r)
		if err != io.EOF {
			t.Fatalf("Next: error %v, want io.EOF", err)
		}
		if diff := cmp.Diff(want.msgs, got); diff != "" {
			t.Errorf("messages (-want +got):\n%s", diff)
		}
		if got := r.LastEventID(); got != want.lastID {
			t.Errorf("LastEventID() = %q, want %q", got, want.lastID)
		}
		if got := r.Retry(); got != want.retry {
			t.Errorf("Retry() = %v, want %v", got, want.retry)
		}

		const limit = 16
		r = sse.NewReaderSize(&chunkReader{r: bytes.NewReader(in), n: int(chunk) + 1}, limit)
		got, err = readAll(r)
		tooLong := want.longest > limit || want.biggest > limit
		switch {
		case tooLong && err != sse.ErrTooLong:
			t.Fatalf("limit %d: Next: error %v, want ErrTooLong", limit, err)
		case !tooLong && err != io.EOF:
			t.Fatalf("limit %d: Next: error %v, want io.EOF", limit, err)
		case len(got) > len(want.msgs):
			t.Fatalf("limit %d: %d messages, want at most %d", limit, len(got), len(want.msgs))
		}
		wantMsgs := want.msgs
		if tooLong {
			wantMsgs = want.msgs[:len(got)]
		}
		if diff := cmp.Diff(wantMsgs, got, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("limit %d: messages (-want +got):\n%s", limit, diff)
		}
	})
}
