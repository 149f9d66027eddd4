package sse

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"time"
)

// DefaultMaxSize is the limit on the length of a line, and on the size of a
// message's data, used by [NewReader].
const DefaultMaxSize = 4 << 20

// ErrTooLong is returned by [Reader.Next] when a line, or the data of one
// message, is longer than the Reader's limit.
var ErrTooLong = errors.New("sse: line or data too long")

// A Message is an event dispatched by a [Reader].
type Message struct {
	// ID is the stream's last event id when the message was dispatched: the
	// value of the latest "id:" field, possibly from an earlier event.
	ID string
	// Event is the event type; "" means the default type, "message".
	Event string
	// Data is the data, its lines joined by LF.
	Data string
	// Retry is the stream's reconnection time when the message was
	// dispatched, 0 if no "retry:" field set one yet (or one set it to 0).
	// Like ID, it carries over from earlier events.
	Retry time.Duration
}

// A Reader parses an event stream and returns the messages it dispatches,
// following the HTML standard's event stream interpretation rules: lines end
// in CRLF, LF or CR; one leading UTF-8 byte order mark is skipped; comment
// lines and unknown fields are ignored; an "id:" field holding NUL is
// ignored; a "retry:" field is used only if it is all ASCII digits; an event
// without data dispatches nothing but still moves the last event id; an event
// cut short by the end of the stream is discarded.
//
// Unlike a browser, a Reader does not replace invalid UTF-8 with U+FFFD:
// bytes pass through unchanged.
//
// Memory is bounded by the limit given to [NewReaderSize]. A Reader is not
// safe for concurrent use. To stop a Next that is blocked reading, close the
// underlying reader (for an HTTP response, cancel the request's context).
type Reader struct {
	sc    *bufio.Scanner
	limit int
	err   error // sticky: once set, Next returns it

	// State of the line splitter.
	started bool // a line was returned: a byte order mark is no longer skipped
	skipLF  bool // the last line ended in CR: an LF right after belongs to it
	scanned int  // bytes of the pending line already searched for CR and LF

	// Buffers of the standard's interpretation rules, reused across events.
	data []byte // data buffer
	typ  []byte // event type buffer
	id   []byte // last event ID buffer

	lastID   string        // last event ID string, set at each blank line
	lastType string        // the previous message's type, to reuse its string
	retry    time.Duration // reconnection time
}

// NewReader returns a Reader that reads r with the limit [DefaultMaxSize].
func NewReader(r io.Reader) *Reader {
	return NewReaderSize(r, DefaultMaxSize)
}

// NewReaderSize returns a Reader that reads r and fails with [ErrTooLong]
// on a line longer than limit bytes (not counting its line ending), or on a
// message whose data is longer than limit bytes. If limit <= 0, it uses
// [DefaultMaxSize]. The Reader grows its buffers as lines and data need, up
// to a few times limit bytes in all.
func NewReaderSize(r io.Reader, limit int) *Reader {
	if limit <= 0 {
		limit = DefaultMaxSize
	}
	limit = min(limit, math.MaxInt-len(bom)-1)
	rd := &Reader{sc: bufio.NewScanner(r), limit: limit}
	rd.sc.Buffer(nil, limit+len(bom)+1) // room for a BOM and a line ending
	rd.sc.Split(rd.split)
	return rd
}

// LastEventID returns the stream's last event id: the value of the latest
// "id:" field in an event that has ended (with a blank line), whether or not
// that event dispatched a message. A client sends it back in the
// Last-Event-ID header when it reconnects.
func (r *Reader) LastEventID() string { return r.lastID }

// Retry returns the stream's reconnection time, as last set by a "retry:"
// field (even in an event that has not ended), or 0 if none did.
func (r *Reader) Retry() time.Duration { return r.retry }

// Next returns the next message dispatched by the stream. It returns io.EOF
// when the stream ends, discarding any event not ended by a blank line;
// [ErrTooLong] when a limit is exceeded; or the read error of the
// underlying reader, wrapped. After an error, Next returns the same error
// again. Apart from growing the Reader's buffers, Next allocates only the
// returned Data: the ID and Event strings are reused while they repeat.
func (r *Reader) Next() (Message, error) {
	if r.err != nil {
		return Message{}, r.err
	}
	for r.sc.Scan() {
		m, ok, err := r.line(r.sc.Bytes())
		if err != nil {
			r.err = err
			return Message{}, err
		}
		if ok {
			return m, nil
		}
	}
	switch err := r.sc.Err(); {
	case err == nil:
		r.err = io.EOF
	case errors.Is(err, ErrTooLong), errors.Is(err, bufio.ErrTooLong):
		r.err = ErrTooLong
	default:
		r.err = fmt.Errorf("sse: %w", err)
	}
	return Message{}, r.err
}

// line interprets one line and reports whether it dispatched a message.
func (r *Reader) line(line []byte) (Message, bool, error) {
	if len(line) == 0 {
		m, ok := r.dispatch()
		return m, ok, nil
	}
	if line[0] == ':' {
		return Message{}, false, nil
	}
	field, value := line, []byte(nil)
	if i := bytes.IndexByte(line, ':'); i >= 0 {
		field, value = line[:i], line[i+1:]
		if len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
	}
	switch string(field) {
	case "data":
		if len(r.data)+len(value) > r.limit {
			return Message{}, false, ErrTooLong
		}
		r.data = append(r.data, value...)
		r.data = append(r.data, '\n')
	case "event":
		r.typ = append(r.typ[:0], value...)
	case "id":
		if bytes.IndexByte(value, 0) < 0 {
			r.id = append(r.id[:0], value...)
		}
	case "retry":
		if d, ok := parseRetry(value); ok {
			r.retry = d
		}
	}
	return Message{}, false, nil
}

// dispatch ends an event, as a blank line does.
func (r *Reader) dispatch() (Message, bool) {
	if string(r.id) != r.lastID {
		r.lastID = string(r.id)
	}
	if len(r.data) == 0 {
		r.typ = r.typ[:0]
		return Message{}, false
	}
	if string(r.typ) != r.lastType {
		r.lastType = string(r.typ)
	}
	m := Message{
		ID:    r.lastID,
		Event: r.lastType,
		Data:  string(r.data[:len(r.data)-1]), // every data line ends in LF
		Retry: r.retry,
	}
	r.data = r.data[:0]
	r.typ = r.typ[:0]
	return m, true
}

// parseRetry returns the reconnection time that a retry field's value sets,
// if it is one or more ASCII digits and fits in a time.Duration.
func parseRetry(v []byte) (time.Duration, bool) {
	if len(v) == 0 {
		return 0, false
	}
	const limit = math.MaxInt64 / int64(time.Millisecond)
	var ms int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		ms = ms*10 + int64(c-'0')
		if ms > limit {
			return 0, false
		}
	}
	return time.Duration(ms) * time.Millisecond, true
}

var bom = []byte("\xEF\xBB\xBF")

// split is the bufio.SplitFunc of a Reader: it returns lines without their
// line ending (CRLF, LF or CR), skips a leading byte order mark, and fails
// with ErrTooLong on a line longer than the limit. A line not ended before EOF
// is dropped, since it cannot end an event.
//
// The Scanner stops at EOF unless split returns a token, so the byte order
// mark and the LF of a CRLF cut between reads are skipped along with the
// next line, and the state changes only when a line is returned.
func (r *Reader) split(data []byte, atEOF bool) (int, []byte, error) {
	skip := 0
	switch {
	case !r.started:
		if !atEOF && len(data) < len(bom) && bytes.HasPrefix(bom, data) {
			return 0, nil, nil
		}
		if bytes.HasPrefix(data, bom) {
			skip = len(bom)
		}
	case r.skipLF && len(data) > 0 && data[0] == '\n':
		skip = 1
	}
	from := max(skip, r.scanned)
	end := bytes.IndexByte(data[from:], '\n')
	seg := data[from:]
	if end >= 0 {
		seg = seg[:end]
	}
	if cr := bytes.IndexByte(seg, '\r'); cr >= 0 {
		end = cr
	}
	if end < 0 {
		r.scanned = len(data)
		switch {
		case len(data)-skip > r.limit:
			return 0, nil, ErrTooLong
		case atEOF:
			return len(data), nil, nil
		}
		return 0, nil, nil
	}
	end += from
	if end-skip > r.limit {
		return 0, nil, ErrTooLong
	}
	r.started = true
	r.skipLF = data[end] == '\r'
	r.scanned = 0
	return end + 1, data[skip:end], nil
}
