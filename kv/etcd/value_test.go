package etcd

import (
	"bytes"
	"testing"
)

func TestValueRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		value   []byte
		ctype   string
		expires int64
	}{
		{[]byte("on"), "text/plain", 0},
		{nil, "", 0},
		{[]byte{0, 'k', 'v', 1, 9}, "application/octet-stream", 1_800_000_000_000_000_000},
		{bytes.Repeat([]byte("x"), 1<<16), "application/json; charset=utf-8", -1},
	} {
		v, ct, exp := decodeValue(encodeValue(tc.value, tc.ctype, tc.expires))
		if !bytes.Equal(v, tc.value) || ct != tc.ctype || exp != tc.expires {
			t.Errorf("round trip of (%q, %q, %d) = (%q, %q, %d)", tc.value, tc.ctype, tc.expires, v, ct, exp)
		}
	}
}

// A value another etcd client wrote is read as raw bytes.
func TestValueForeign(t *testing.T) {
	for _, raw := range [][]byte{[]byte("plain"), {0, 'k', 'v'}, {0, 'k', 'v', 1}, {0, 'k', 'v', 1, 200}} {
		v, ct, exp := decodeValue(raw)
		if !bytes.Equal(v, raw) || ct != defaultType || exp != 0 {
			t.Errorf("decodeValue(%q) = (%q, %q, %d), want the raw bytes", raw, v, ct, exp)
		}
	}
}

func FuzzDecodeValue(f *testing.F) {
	f.Add([]byte("plain"))
	f.Add(encodeValue([]byte("v"), "text/plain", 42))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, ct, exp := decodeValue(b)
		if !bytes.HasSuffix(b, v) {
			t.Fatalf("decodeValue(%q): value %q is not the tail of the input", b, v)
		}
		if !bytes.HasPrefix(b, magic) && (!bytes.Equal(v, b) || ct != defaultType || exp != 0) {
			t.Fatalf("foreign value %q read as (%q, %q, %d)", b, v, ct, exp)
		}
		v2, ct2, exp2 := decodeValue(encodeValue(v, ct, exp))
		if !bytes.Equal(v2, v) || ct2 != ct || exp2 != exp {
			t.Fatalf("(%q, %q, %d) round-trips to (%q, %q, %d)", v, ct, exp, v2, ct2, exp2)
		}
	})
}
