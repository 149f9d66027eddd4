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

// A Frame is one event of a stream as the Reader ended it, whether or not
// it dispatches a message: its slices are views of the Reader's buffers,
// valid until the next call, so reading frames allocates nothing. It is
// for clients that read many events, such as a load generator.
type Frame struct {
	// Event is the event type (empty: "message"); in NDJSON, the value of
	// the object's leading "event" field.
	Event []byte
	// Data is the data, its lines joined by LF; in NDJSON, the whole line.
	Data []byte
	// ID is the stream's last event id once this event ended (SSE only):
	// the value of the latest "id:" field, which may be an earlier
	// event's, since the last event id persists from event to event.
	ID []byte
	// HasID reports that this event had an "id:" field of its own (one
	// holding NUL is ignored, as the standard says), which set ID (SSE
	// only). A kvsse stream sets an id only on the last event of a
	// revision: an event without one is followed by more of its revision.
	HasID bool
	// HasData is false for an event that had an id field but no data: it
	// dispatches no message but moves the last event id (a kvsse
	// heartbeat).
	HasData bool
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
	sc     *bufio.Scanner
	limit  int
	ndjson bool  // the stream is NDJSON: one event a line
	err    error // sticky: once set, Next returns it

	// State of the line splitter.
	started bool // a line was returned: a byte order mark is no longer skipped
	skipLF  bool // the last line ended in CR: an LF right after belongs to it
	scanned int  // bytes of the pending line already searched for CR and LF

	// Buffers of the standard's interpretation rules, reused across events.
	data  []byte // data buffer
	typ   []byte // event type buffer
	id    []byte // last event ID buffer
	idSet bool   // the event being read has an id field

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

// NewNDJSONReader returns a Reader of an NDJSON stream (kvsse's
// ?format=ndjson): each non-empty line is one event, whose type is the
// value of the line's leading "event" field, as kvsse writes it. It reads
// only frames (NextFrame). Lines longer than limit bytes fail with
// [ErrTooLong]; a limit <= 0 means [DefaultMaxSize].
func NewNDJSONReader(r io.Reader, limit int) *Reader {
	rd := NewReaderSize(r, limit)
	rd.ndjson = true
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
// It reads SSE only.
func (r *Reader) Next() (Message, error) {
	for {
		f, err := r.NextFrame()
		if err != nil {
			return Message{}, err
		}
		if string(f.ID) != r.lastID {
			r.lastID = string(f.ID)
		}
		if !f.HasData {
			continue
		}
		if string(f.Event) != r.lastType {
			r.lastType = string(f.Event)
		}
		return Message{ID: r.lastID, Event: r.lastType, Data: string(f.Data), Retry: r.retry}, nil
	}
}

// NextFrame returns the next event of the stream that carried data or an
// id, without allocating (see [Frame]). Its errors are those of Next.
func (r *Reader) NextFrame() (Frame, error) {
	if r.err != nil {
		return Frame{}, r.err
	}
	for r.sc.Scan() {
		f, ok, err := r.line(r.sc.Bytes())
		if err != nil {
			r.err = err
			return Frame{}, err
		}
		if ok {
			return f, nil
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
	return Frame{}, r.err
}

// ndjsonLine is the frame of one NDJSON line.
func ndjsonLine(line []byte) (Frame, bool, error) {
	if len(line) == 0 {
		return Frame{}, false, nil
	}
	const head = `{"event":"`
	rest, ok := bytes.CutPrefix(line, []byte(head))
	i := bytes.IndexByte(rest, '"')
	if !ok || i < 0 {
		return Frame{}, false, fmt.Errorf("sse: not an NDJSON event: %.100q", line)
	}
	return Frame{Event: rest[:i], Data: line, HasData: true}, true, nil
}

// line interprets one line and reports whether it ended an event that
// carried data or an id.
func (r *Reader) line(line []byte) (Frame, bool, error) {
	if r.ndjson {
		return ndjsonLine(line)
	}
	if len(line) == 0 {
		f, ok := r.dispatch()
		return f, ok, nil
	}
	if line[0] == ':' {
		return Frame{}, false, nil
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
			return Frame{}, false, ErrTooLong
		}
		r.data = append(r.data, value...)
		r.data = append(r.data, '\n')
	case "event":
		r.typ = append(r.typ[:0], value...)
	case "id":
		if bytes.IndexByte(value, 0) < 0 {
			r.id = append(r.id[:0], value...)
			r.idSet = true
		}
	case "retry":
		if d, ok := parseRetry(value); ok {
			r.retry = d
		}
	}
	return Frame{}, false, nil
}

// dispatch ends an event, as a blank line does, and reports whether it
// carried data or an id. The frame's slices stay valid until the next
// line is read: the buffers are emptied then.
func (r *Reader) dispatch() (Frame, bool) {
	f := Frame{Event: r.typ, ID: r.id, HasID: r.idSet, HasData: len(r.data) > 0}
	if f.HasData {
		f.Data = r.data[:len(r.data)-1] // every data line ends in LF
	}
	ok := f.HasData || f.HasID
	r.data, r.typ, r.idSet = r.data[:0], r.typ[:0], false
	return f, ok
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
