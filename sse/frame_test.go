package sse_test

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"kvsse/sse"
)

// frame is a Frame copied out of the Reader's buffers.
type frame struct {
	Event, Data, ID string
	HasID, HasData  bool
}

// readFrames returns the frames of r up to its first error, read through
// chunks of every size so that lines are cut at every place.
func readFrames(t *testing.T, mk func(io.Reader) *sse.Reader, in string) ([]frame, error) {
	t.Helper()
	var want []frame
	var wantErr error
	for n := 1; n <= len(in)+1; n++ {
		r := mk(&chunkReader{r: strings.NewReader(in), n: n})
		var got []frame
		var err error
		for {
			var f sse.Frame
			if f, err = r.NextFrame(); err != nil {
				break
			}
			got = append(got, frame{string(f.Event), string(f.Data), string(f.ID), f.HasID, f.HasData})
		}
		if n == 1 {
			want, wantErr = got, err
			continue
		}
		if diff := cmp.Diff(want, got); diff != "" || !errors.Is(err, wantErr) && err.Error() != wantErr.Error() {
			t.Fatalf("chunks of %d: frames differ from chunks of 1 (-want +got):\n%s\nerr %v, want %v", n, diff, err, wantErr)
		}
	}
	return want, wantErr
}

func TestReaderFrames(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []frame
	}{
		{
			name: "stream",
			in: "retry: 2000\n\n" + // no data, no id: no frame
				"event: put\ndata: {\"key\":\"a\"}\n\n" + // a snapshot item: no id yet
				"id: 40\nevent: sync\ndata: {\"revision\":40}\n\n" +
				": keep-alive\nid: 57\n\n" + // a heartbeat: an id and no data
				"id: 58\r\nevent: delete\r\ndata: x\r\ndata: y\r\n\r\n" +
				"data: cut short", // no blank line: never ends
			want: []frame{
				{Event: "put", Data: `{"key":"a"}`, HasData: true},
				{Event: "sync", Data: `{"revision":40}`, ID: "40", HasID: true, HasData: true},
				{ID: "57", HasID: true},
				{Event: "delete", Data: "x\ny", ID: "58", HasID: true, HasData: true},
			},
		},
		{
			// The id buffer persists: the events of revision 41 before
			// its last show the previous id, without one of their own.
			name: "transaction",
			in: "id: 40\nevent: sync\ndata: s\n\n" +
				"event: put\ndata: a\n\n" +
				"event: delete\ndata: b\n\n" +
				"id: 41\nevent: put\ndata: c\n\n" +
				"id: 42\nevent: put\ndata: d\n\n",
			want: []frame{
				{Event: "sync", Data: "s", ID: "40", HasID: true, HasData: true},
				{Event: "put", Data: "a", ID: "40", HasData: true},
				{Event: "delete", Data: "b", ID: "40", HasData: true},
				{Event: "put", Data: "c", ID: "41", HasID: true, HasData: true},
				{Event: "put", Data: "d", ID: "42", HasID: true, HasData: true},
			},
		},
		{
			// An empty id sets the buffer to empty; one holding NUL is
			// ignored, so the event has no id of its own.
			name: "empty and NUL ids",
			in: "id: 7\ndata: a\n\n" +
				"id\ndata: b\n\n" +
				"id: 8\ndata: c\n\n" +
				"id: 9\x00\ndata: d\n\n" +
				"id: 10\nid: 1\x00\n\n", // the valid id counts
			want: []frame{
				{Data: "a", ID: "7", HasID: true, HasData: true},
				{Data: "b", ID: "", HasID: true, HasData: true},
				{Data: "c", ID: "8", HasID: true, HasData: true},
				{Data: "d", ID: "8", HasData: true},
				{ID: "10", HasID: true},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readFrames(t, sse.NewReader, tt.in)
			if err != io.EOF {
				t.Fatalf("err %v, want io.EOF", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("frames (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNDJSONReader(t *testing.T) {
	ndjson := func(r io.Reader) *sse.Reader { return sse.NewNDJSONReader(r, 64) }
	in := `{"event":"put","key":"a","revision":3}` + "\n\n" +
		`{"event":"heartbeat","revision":57}` + "\r\n" +
		`{"event":"sync","revision":58}` // no line ending: cut short
	got, err := readFrames(t, ndjson, in)
	if err != io.EOF {
		t.Fatalf("err %v, want io.EOF", err)
	}
	want := []frame{
		{Event: "put", Data: `{"event":"put","key":"a","revision":3}`, HasData: true},
		{Event: "heartbeat", Data: `{"event":"heartbeat","revision":57}`, HasData: true},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("frames (-want +got):\n%s", diff)
	}

	for _, bad := range []string{`{"key":"a"}` + "\n", "not json\n", `{"event":"open` + "\n"} {
		r := sse.NewNDJSONReader(strings.NewReader(bad), 0)
		if _, err := r.NextFrame(); err == nil || !strings.Contains(err.Error(), "not an NDJSON event") {
			t.Errorf("%q: err %v, want not an NDJSON event", bad, err)
		}
	}
	long := sse.NewNDJSONReader(strings.NewReader(`{"event":"put","value":"`+strings.Repeat("x", 100)+`"}`+"\n"), 64)
	if _, err := long.NextFrame(); !errors.Is(err, sse.ErrTooLong) {
		t.Errorf("a line over the limit: err %v, want ErrTooLong", err)
	}
}
