package sse_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"kvsse/sse"
)

func TestEncode(t *testing.T) {
	newEvent := func(name, id, data string) func() (sse.Event, error) {
		return func() (sse.Event, error) { return sse.New(name, id, []byte(data)) }
	}
	tests := []struct {
		name    string
		build   func() (sse.Event, error)
		want    string
		wantErr error
	}{
		{
			name:  "plain event",
			build: newEvent("put", "41", `{"key":"a","revision":41}`),
			want:  "id: 41\nevent: put\ndata: {\"key\":\"a\",\"revision\":41}\n\n",
		},
		{
			name:  "no name no id",
			build: newEvent("", "", "x"),
			want:  "data: x\n\n",
		},
		{
			name:  "multi-line data LF",
			build: newEvent("", "", "a\nb\nc"),
			want:  "data: a\ndata: b\ndata: c\n\n",
		},
		{
			name:  "multi-line data CRLF",
			build: newEvent("", "", "a\r\nb"),
			want:  "data: a\ndata: b\n\n",
		},
		{
			name:  "multi-line data CR",
			build: newEvent("", "", "a\rb"),
			want:  "data: a\ndata: b\n\n",
		},
		{
			name:  "mixed line breaks and empty lines",
			build: newEvent("", "", "a\r\r\nb\n\rc"),
			want:  "data: a\ndata:\ndata: b\ndata:\ndata: c\n\n",
		},
		{
			name:  "lone trailing newline",
			build: newEvent("", "", "a\n"),
			want:  "data: a\ndata:\n\n",
		},
		{
			name:  "only a newline",
			build: newEvent("", "", "\n"),
			want:  "data:\ndata:\n\n",
		},
		{
			name:  "empty data",
			build: newEvent("put", "", ""),
			want:  "event: put\ndata:\n\n",
		},
		{
			name:  "nil data",
			build: func() (sse.Event, error) { return sse.New("", "", nil) },
			want:  "data:\n\n",
		},
		{
			name:  "leading space kept",
			build: newEvent(" n", " i", " d"),
			want:  "id:  i\nevent:  n\ndata:  d\n\n",
		},
		{
			name:  "colons and NUL in data",
			build: newEvent("", "", "a: b\x00"),
			want:  "data: a: b\x00\n\n",
		},
		{
			name:  "comment",
			build: func() (sse.Event, error) { return sse.Comment("keep-alive") },
			want:  ": keep-alive\n\n",
		},
		{
			name:  "empty comment",
			build: func() (sse.Event, error) { return sse.Comment("") },
			want:  ":\n\n",
		},
		{
			name:  "retry",
			build: func() (sse.Event, error) { return sse.Retry(2 * time.Second), nil },
			want:  "retry: 2000\n\n",
		},
		{
			name:  "retry truncated to milliseconds",
			build: func() (sse.Event, error) { return sse.Retry(1999 * time.Microsecond), nil },
			want:  "retry: 1\n\n",
		},
		{
			name:  "negative retry",
			build: func() (sse.Event, error) { return sse.Retry(-time.Second), nil },
			want:  "retry: 0\n\n",
		},
		{
			name:  "heartbeat",
			build: func() (sse.Event, error) { return sse.Heartbeat("keep-alive", "57") },
			want:  ": keep-alive\nid: 57\n\n",
		},
		{
			name:  "heartbeat without id",
			build: func() (sse.Event, error) { return sse.Heartbeat("keep-alive", "") },
			want:  ": keep-alive\n\n",
		},
		{
			name:  "zero event",
			build: func() (sse.Event, error) { return sse.Event{}, nil },
			want:  "\n",
		},
		{name: "name with LF", build: newEvent("a\nb", "", "x"), wantErr: sse.ErrInvalidField},
		{name: "name with CR", build: newEvent("a\r", "", "x"), wantErr: sse.ErrInvalidField},
		{name: "name with NUL", build: newEvent("a\x00", "", "x"), wantErr: sse.ErrInvalidField},
		{name: "name not UTF-8", build: newEvent("a\xff", "", "x"), wantErr: sse.ErrInvalidField},
		{name: "id with LF", build: newEvent("", "1\n", "x"), wantErr: sse.ErrInvalidField},
		{name: "id with CR", build: newEvent("", "\r1", "x"), wantErr: sse.ErrInvalidField},
		{name: "id with NUL", build: newEvent("", "1\x002", "x"), wantErr: sse.ErrInvalidField},
		{name: "id not UTF-8", build: newEvent("", "\xc3", "x"), wantErr: sse.ErrInvalidField},
		{
			name:    "comment with LF",
			build:   func() (sse.Event, error) { return sse.Comment("a\nb") },
			wantErr: sse.ErrInvalidField,
		},
		{
			name:    "comment with CR",
			build:   func() (sse.Event, error) { return sse.Comment("a\r") },
			wantErr: sse.ErrInvalidField,
		},
		{
			name:    "heartbeat with bad comment",
			build:   func() (sse.Event, error) { return sse.Heartbeat("\n", "1") },
			wantErr: sse.ErrInvalidField,
		},
		{
			name:    "heartbeat with bad id",
			build:   func() (sse.Event, error) { return sse.Heartbeat("keep-alive", "1\r\n") },
			wantErr: sse.ErrInvalidField,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := tt.build()
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("build: error %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if diff := cmp.Diff(tt.want, string(e.AppendTo(nil))); diff != "" {
				t.Errorf("AppendTo (-want +got):\n%s", diff)
			}
			var buf bytes.Buffer
			n, err := e.WriteTo(&buf)
			if err != nil {
				t.Fatalf("WriteTo: %v", err)
			}
			if diff := cmp.Diff(tt.want, buf.String()); diff != "" {
				t.Errorf("WriteTo (-want +got):\n%s", diff)
			}
			if n != int64(len(tt.want)) {
				t.Errorf("WriteTo returned %d, want %d", n, len(tt.want))
			}
		})
	}
}

func TestAppendToAppends(t *testing.T) {
	e, err := sse.New("put", "1", []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	got := string(e.AppendTo([]byte("prefix\n")))
	if diff := cmp.Diff("prefix\nid: 1\nevent: put\ndata: x\n\n", got); diff != "" {
		t.Errorf("AppendTo (-want +got):\n%s", diff)
	}
}

func TestNewCopiesData(t *testing.T) {
	data := []byte("abc")
	e, err := sse.New("", "", data)
	if err != nil {
		t.Fatal(err)
	}
	copy(data, "xyz")
	if diff := cmp.Diff("data: abc\n\n", string(e.AppendTo(nil))); diff != "" {
		t.Errorf("AppendTo (-want +got):\n%s", diff)
	}
}

func TestAppendToAllocs(t *testing.T) {
	e := typicalEvent(t)
	buf := make([]byte, 0, 1024)
	allocs := testing.AllocsPerRun(100, func() {
		buf = e.AppendTo(buf[:0])
	})
	if allocs != 0 {
		t.Errorf("AppendTo into a buffer with room: %v allocs, want 0", allocs)
	}
}

// failWriter fails every write.
type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, io.ErrClosedPipe }

func TestWriteToError(t *testing.T) {
	e, err := sse.Comment("x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.WriteTo(failWriter{}); !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("WriteTo: error %v, want %v", err, io.ErrClosedPipe)
	}
}

// typicalEvent returns an event like the server's put events.
func typicalEvent(tb testing.TB) sse.Event {
	tb.Helper()
	data := []byte(`{"key":"config/feature-flags/a","value":"on","revision":12345,"prev_revision":12001}`)
	data = append(data, strings.Repeat(" ", 100-len(data))...)
	e, err := sse.New("put", "12345", data)
	if err != nil {
		tb.Fatal(err)
	}
	return e
}

func BenchmarkAppendTo(b *testing.B) {
	e := typicalEvent(b)
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = e.AppendTo(buf[:0])
	}
	b.SetBytes(int64(len(buf)))
}

func ExampleNew() {
	e, err := sse.New("put", "41", []byte(`{"key":"config/a","value":"off","revision":41}`))
	if err != nil {
		panic(err)
	}
	if _, err := e.WriteTo(os.Stdout); err != nil {
		panic(err)
	}
	// Output:
	// id: 41
	// event: put
	// data: {"key":"config/a","value":"off","revision":41}
}

func ExampleHeartbeat() {
	e, err := sse.Heartbeat("keep-alive", "57")
	if err != nil {
		panic(err)
	}
	os.Stdout.Write(e.AppendTo(nil))
	// Output:
	// : keep-alive
	// id: 57
}

// normalize returns data as a client reads it back: every CRLF and CR
// becomes LF.
func normalize(data string) string {
	data = strings.ReplaceAll(data, "\r\n", "\n")
	return strings.ReplaceAll(data, "\r", "\n")
}

func FuzzRoundTrip(f *testing.F) {
	f.Add("put", "41", `{"key":"a"}`, uint8(0))
	f.Add("", "", "", uint8(1))
	f.Add("delete", "", "a\r\nb\rc\n", uint8(2))
	f.Add(" x", " 1", " \r\r\n\n", uint8(3))
	f.Add("message", "id", "\xef\xbb\xbfdata: x\n\n", uint8(0))
	f.Fuzz(func(t *testing.T, name, id, data string, chunk uint8) {
		e, err := sse.New(name, id, []byte(data))
		if err != nil {
			if !errors.Is(err, sse.ErrInvalidField) {
				t.Fatalf("New: error %v does not wrap ErrInvalidField", err)
			}
			return
		}
		hb, err := sse.Heartbeat("keep-alive", "hb")
		if err != nil {
			t.Fatal(err)
		}
		var stream []byte
		stream = sse.Retry(3 * time.Second).AppendTo(stream)
		stream = e.AppendTo(stream)
		stream = hb.AppendTo(stream)

		r := sse.NewReader(&chunkReader{r: bytes.NewReader(stream), n: int(chunk) + 1})
		got, err := readAll(r)
		if err != io.EOF {
			t.Fatalf("Next: error %v, want io.EOF", err)
		}
		want := []sse.Message{{ID: id, Event: name, Data: normalize(data), Retry: 3 * time.Second}}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("stream %q: messages (-want +got):\n%s", stream, diff)
		}
		if got := r.LastEventID(); got != "hb" {
			t.Errorf("LastEventID() = %q, want %q", got, "hb")
		}
	})
}
