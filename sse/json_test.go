package sse_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"strconv"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"

	"kvsse/kv"
	"kvsse/sse"
	"kvsse/sse/server/servertest"
)

// bytesOf is the bytes of a JSON string value (nil when there is none),
// decoding it when encoding says base64.
func bytesOf(t *testing.T, s *string, encoding string) []byte {
	t.Helper()
	if s == nil {
		return nil
	}
	if encoding != "base64" {
		return []byte(*s)
	}
	b, err := base64.StdEncoding.DecodeString(*s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestAppendChange(t *testing.T) {
	tests := []struct {
		name string
		c    kv.Change
		prev bool
		want string
	}{
		{"put", kv.Change{Op: kv.OpPut, Key: "config/a", Value: []byte("on"), Revision: 12}, false,
			`{"key":"config/a","value":"on","revision":12}`},
		{"replace", kv.Change{Op: kv.OpPut, Key: "a", Value: []byte("off"), Revision: 41, PrevRevision: 12, PrevValue: []byte("on")}, false,
			`{"key":"a","value":"off","revision":41,"prev_revision":12}`},
		{"delete", kv.Change{Op: kv.OpDelete, Key: "config/b", Revision: 42, PrevRevision: 7}, false,
			`{"key":"config/b","revision":42,"prev_revision":7,"reason":"deleted"}`},
		{"expire", kv.Change{Op: kv.OpExpire, Key: "k", Revision: 43, PrevRevision: 8}, false,
			`{"key":"k","revision":43,"prev_revision":8,"reason":"expired"}`},
		{"binary", kv.Change{Op: kv.OpPut, Key: "b", Value: []byte{0xff, 0, 1}, Revision: 1}, false,
			`{"key":"b","value":"/wAB","encoding":"base64","revision":1}`},
		{"escapes", kv.Change{Op: kv.OpPut, Key: "k", Value: []byte("a\"\\\n\r\t\x00\u2028<"), Revision: 2}, false,
			`{"key":"k","value":"a\"\\\n\r\t\u0000\u2028<","revision":2}`},
		{"prev create", kv.Change{Op: kv.OpPut, Key: "a", Value: []byte("on"), Revision: 12}, true,
			`{"key":"a","value":"on","revision":12}`},
		{"prev replace", kv.Change{Op: kv.OpPut, Key: "a", Value: []byte("off"), Expires: 1e18, Revision: 41, PrevRevision: 12, PrevValue: []byte("on"), PrevContentType: "text/plain"}, true,
			`{"key":"a","value":"off","revision":41,"prev_revision":12,"prev_value":"on","prev_content_type":"text/plain","expires":"2001-09-09T01:46:40Z"}`},
		{"prev binary", kv.Change{Op: kv.OpDelete, Key: "b", Revision: 42, PrevRevision: 7, PrevValue: []byte{0xff, 0, 1}, PrevContentType: "application/octet-stream"}, true,
			`{"key":"b","revision":42,"prev_revision":7,"prev_value":"/wAB","prev_encoding":"base64","prev_content_type":"application/octet-stream","reason":"deleted"}`},
		{"prev empty", kv.Change{Op: kv.OpExpire, Key: "k", Revision: 43, PrevRevision: 8, PrevValue: []byte{}}, true,
			`{"key":"k","revision":43,"prev_revision":8,"prev_value":"","prev_content_type":"","reason":"expired"}`},
		{"prev not known", kv.Change{Op: kv.OpDelete, Key: "k", Revision: 44, PrevRevision: 8}, true,
			`{"key":"k","revision":44,"prev_revision":8,"reason":"deleted"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := string(sse.AppendChange(nil, &tt.c, false, tt.prev))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("AppendChange (-want +got):\n%s", diff)
			}
			if !json.Valid([]byte(got)) {
				t.Errorf("not valid JSON: %s", got)
			}
		})
	}
}

// FuzzChangeEvent holds AppendChangeEvent, which writes its fields without
// New, to what a standard parser and a JSON decoder make of it: one
// message, with the revision as id (none when the change is not the last
// of its revision), the event name, and data that decodes, as the
// server's tests decode a change (servertest.Decode: no unknown field),
// to the same key and value bytes.
func FuzzChangeEvent(f *testing.F) {
	f.Add("config/a", []byte("on"), int64(1), false, true, []byte(nil), "")
	f.Add("k", []byte("line\r\nbreak\rcr\u2028"), int64(99), true, true, []byte("old\r\n"), "text/plain")
	f.Add("bin", []byte{0xff, 0xfe, '\n'}, int64(7), false, false, []byte{0x80, '\r'}, "a\nb")
	f.Fuzz(func(t *testing.T, key string, value []byte, rev int64, del, last bool, prev []byte, prevType string) {
		if !utf8.ValidString(key) || !utf8.ValidString(prevType) || rev <= 1 {
			t.Skip()
		}
		c := kv.Change{Op: kv.OpPut, Key: key, Value: value, Revision: rev}
		if del {
			c = kv.Change{Op: kv.OpDelete, Key: key, Revision: rev}
		}
		if prev != nil {
			c.PrevRevision, c.PrevValue, c.PrevContentType = rev-1, prev, prevType
		}
		wire := sse.AppendChangeEvent(nil, &c, last, true)
		if n := bytes.Count(wire, []byte("\n\n")); n != 1 || !bytes.HasSuffix(wire, []byte("\n\n")) {
			t.Fatalf("event is not one block: %q", wire)
		}
		if bytes.IndexByte(wire, '\r') >= 0 || bytes.IndexByte(wire, 0) >= 0 {
			t.Fatalf("raw CR or NUL on the wire: %q", wire)
		}
		r := sse.NewReader(bytes.NewReader(wire))
		m, err := r.Next()
		if err != nil {
			t.Fatalf("parse %q: %v", wire, err)
		}
		wantID := strconv.FormatInt(rev, 10)
		if !last {
			wantID = ""
		}
		if m.ID != wantID || m.Event != c.Event() {
			t.Fatalf("id %q event %q, want %q %s", m.ID, m.Event, wantID, c.Event())
		}
		d := servertest.EventOf(t, m).Data
		got := bytesOf(t, d.Value, d.Encoding)
		if d.Key != key || d.Revision != rev || (!del && !bytes.Equal(got, value)) {
			t.Fatalf("decoded %+v from %q, want key %q value %q", d, wire, key, value)
		}
		if (d.PrevValue != nil) != (prev != nil) {
			t.Fatalf("prev_value %v from %q, want it when the previous value is %q", d.PrevValue, wire, prev)
		}
		if prev != nil && (!bytes.Equal(bytesOf(t, d.PrevValue, d.PrevEncoding), prev) || *d.PrevContentType != prevType) {
			t.Fatalf("decoded %+v from %q, want previous value %q of type %q", d, wire, prev, prevType)
		}
	})
}

func BenchmarkAppendChangeEvent(b *testing.B) {
	c := kv.Change{Op: kv.OpPut, Key: "config/app/feature-x", Value: bytes.Repeat([]byte("v"), 64), Revision: 123456, PrevRevision: 123000}
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		buf = sse.AppendChangeEvent(buf[:0], &c, true, false)
	}
}
