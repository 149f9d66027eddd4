package sse

import (
	"encoding/base64"
	"strconv"
	"time"
	"unicode/utf8"

	"kvsse/kv"
)

// AppendEntry appends the JSON object of a key's current state, as
// listings and snapshots show it: key, value (with "encoding":"base64"
// when it is not valid UTF-8), revision, expires (RFC 3339, when the key
// has a time to live), and, with full set, content_type.
func AppendEntry(b []byte, e *kv.Entry, full bool) []byte {
	b = append(b, '{')
	return append(appendEntryFields(b, e, full), '}')
}

// appendEntryFields appends AppendEntry's fields without the braces.
func appendEntryFields(b []byte, e *kv.Entry, full bool) []byte {
	b = append(b, `"key":`...)
	b = AppendString(b, e.Key)
	b = appendValue(b, e.Value)
	b = append(b, `,"revision":`...)
	b = strconv.AppendInt(b, e.Revision, 10)
	if full {
		b = append(b, `,"content_type":`...)
		b = AppendString(b, e.ContentType)
	}
	return appendExpires(b, e.Expires)
}

// appendExpires appends `,"expires":` and the time, in RFC 3339 UTC, of
// an expiry in Unix nanoseconds; nothing for 0 (no time to live).
func appendExpires(b []byte, expires int64) []byte {
	if expires == 0 {
		return b
	}
	b = append(b, `,"expires":"`...)
	b = time.Unix(0, expires).UTC().AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

// AppendChange appends the JSON object of a change, the data of its
// event: key, value (puts), revision, prev_revision, expires (puts with a
// time to live) and reason (deletes). With event set, the object starts
// with "event" as in the NDJSON stream. With prev set (a watch's prev=1),
// a change whose key had a value before it also carries that value, as
// prev_value (with prev_encoding "base64" when it is not UTF-8) and
// prev_content_type, after prev_revision; a change whose previous value
// is not known (see kv.Change.PrevValue) carries only prev_revision.
func AppendChange(b []byte, c *kv.Change, event, prev bool) []byte {
	b, _, _ = appendChange(b, c, event, prev)
	return b
}

// appendChange is AppendChange, and says where in b the change's
// previous state stands (see appendPrev): b[prevAt:prevEnd], empty when
// it has none.
func appendChange(b []byte, c *kv.Change, event, prev bool) (_ []byte, prevAt, prevEnd int) {
	b = append(b, '{')
	if event {
		b = append(b, `"event":"`...)
		b = append(b, c.Event()...)
		b = append(b, `",`...)
	}
	b = append(b, `"key":`...)
	b = AppendString(b, c.Key)
	if c.Op == kv.OpPut {
		b = appendValue(b, c.Value)
	}
	b = append(b, `,"revision":`...)
	b = strconv.AppendInt(b, c.Revision, 10)
	prevAt = len(b)
	b = appendPrev(b, c, prev)
	prevEnd = len(b)
	if c.Op == kv.OpPut {
		b = appendExpires(b, c.Expires)
	}
	if r := c.Reason(); r != "" {
		b = append(b, `,"reason":"`...)
		b = append(b, r...)
		b = append(b, '"')
	}
	return append(b, '}'), prevAt, prevEnd
}

// appendPrev appends the fields of c's previous state: prev_revision
// and, with prev, prev_value and prev_content_type (see AppendChange).
func appendPrev(b []byte, c *kv.Change, prev bool) []byte {
	if c.PrevRevision == 0 {
		return b
	}
	b = append(b, `,"prev_revision":`...)
	b = strconv.AppendInt(b, c.PrevRevision, 10)
	if prev && c.PrevValue != nil {
		b = appendBytes(b, `,"prev_value":`, `,"prev_encoding":"base64"`, c.PrevValue)
		b = append(b, `,"prev_content_type":`...)
		b = AppendString(b, c.PrevContentType)
	}
	return b
}

// appendChangeLine appends a change's line of an NDJSON stream, without
// its newline: AppendChange's object with "event", and, when last is set,
// "last":true as its final field. last says that the change is the last
// of its revision that the stream sends (a single write's change always
// is); a line before the last of its revision has no "last" field. The
// field is always the object's final one, whatever fields come before
// it, so a reader may look for the suffix `,"last":true}`. prevAt and
// prevEnd are appendChange's.
func appendChangeLine(b []byte, c *kv.Change, last, prev bool) (_ []byte, prevAt, prevEnd int) {
	b, prevAt, prevEnd = appendChange(b, c, true, prev)
	if last {
		b = append(b[:len(b)-1], `,"last":true}`...)
	}
	return b, prevAt, prevEnd
}

// appendValue appends `,"value":` and the value as a JSON string when it
// is valid UTF-8, else in standard base64 with `,"encoding":"base64"`.
func appendValue(b, v []byte) []byte {
	return appendBytes(b, `,"value":`, `,"encoding":"base64"`, v)
}

// appendBytes appends field (`,"name":`) and v as a JSON string when it is
// valid UTF-8, else in standard base64 followed by encoding.
func appendBytes(b []byte, field, encoding string, v []byte) []byte {
	b = append(b, field...)
	if utf8.Valid(v) {
		return AppendString(b, string(v))
	}
	b = append(b, '"')
	b = base64.StdEncoding.AppendEncode(b, v)
	b = append(b, '"')
	return append(b, encoding...)
}

const hex = "0123456789abcdef"

// AppendString appends s, which must be valid UTF-8, as a JSON string.
// Control characters, and U+2028 and U+2029 (line breaks to JavaScript),
// are escaped, so the result is one line.
func AppendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != 0x7f {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			start = i + size
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
