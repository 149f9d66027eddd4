// Package sse encodes and parses the Server-Sent Events wire format
// (text/event-stream), as defined by the "Server-sent events" section of the
// HTML standard.
//
// The server builds an [Event] once per change, encodes it once with
// [Event.AppendTo] and writes the same bytes to every subscriber. Clients
// (the command-line client, the load generator, tests) read a stream with a
// [Reader], which applies the standard's event stream interpretation rules.
package sse

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// ErrInvalidField is wrapped by the errors of [New], [Comment] and
// [Heartbeat] when a name, id or comment could not be sent as given: it
// holds a CR, LF or NUL, or is not valid UTF-8.
var ErrInvalidField = errors.New("sse: invalid field")

// An Event is one block of an event stream: optional comment, retry, id and
// event type lines, optional data lines, then a blank line.
//
// Its fields are unexported so that only the constructors, which validate,
// can set them: every Event encodes to a well-formed block. An Event is an
// immutable value, safe to copy and to use from many goroutines at once.
// The zero Event encodes as a lone blank line, which dispatches nothing.
type Event struct {
	comment string
	id      string
	name    string
	data    string // CR and CRLF already turned into LF
	retry   time.Duration

	hasComment bool
	hasRetry   bool
	hasData    bool
}

// New returns an event that dispatches a message of type name (the "event:"
// field), with the given id and data. An empty name or id leaves the field
// out: a client then uses the type "message" and keeps its last event id.
//
// New rejects, with an error wrapping [ErrInvalidField], a name or id that
// contains CR, LF or NUL or is not valid UTF-8: clients would split the line,
// ignore the id, or read back a different string.
//
// Data may hold any bytes; New copies it. Each of CRLF, CR and LF in data
// ends a line, and each line is sent as its own "data:" field, so a client
// reads the data back with every line break turned into LF. Data is always
// sent, even when empty (nil and empty are the same): a client then
// dispatches a message whose data is the empty string. Browsers decode the
// stream as UTF-8, replacing invalid sequences with U+FFFD; [Reader] does not.
func New(name, id string, data []byte) (Event, error) {
	if err := validate("event name", name); err != nil {
		return Event{}, err
	}
	if err := validate("id", id); err != nil {
		return Event{}, err
	}
	s := string(data)
	if strings.IndexByte(s, '\r') >= 0 {
		s = strings.ReplaceAll(s, "\r\n", "\n")
		s = strings.ReplaceAll(s, "\r", "\n")
	}
	return Event{name: name, id: id, data: s, hasData: true}, nil
}

// Comment returns an event made of one comment line, ": text", which clients
// ignore; an empty text gives a lone ":". It dispatches nothing and keeps the
// connection busy. Comment rejects, with an error wrapping
// [ErrInvalidField], a text that contains CR, LF or NUL or is not valid UTF-8.
func Comment(text string) (Event, error) {
	if err := validate("comment", text); err != nil {
		return Event{}, err
	}
	return Event{comment: text, hasComment: true}, nil
}

// Heartbeat returns an event with a comment line (as [Comment]) followed by
// an "id:" line (left out when id is empty), and no data. It dispatches no
// message, but a client's last event id moves to id: this is how a quiet
// stream tells its clients where to resume. It rejects what [Comment] and
// [New] reject.
func Heartbeat(comment, id string) (Event, error) {
	e, err := Comment(comment)
	if err != nil {
		return Event{}, err
	}
	if err := validate("id", id); err != nil {
		return Event{}, err
	}
	e.id = id
	return e, nil
}

// Retry returns an event made of one "retry:" line, which sets the client's
// reconnection time to d, truncated to whole milliseconds (a negative d is
// sent as 0). It dispatches nothing.
func Retry(d time.Duration) Event {
	return Event{retry: max(d, 0), hasRetry: true}
}

// validate returns an error wrapping ErrInvalidField when s cannot be sent
// as the value of the named field.
func validate(field, s string) error {
	if i := strings.IndexAny(s, "\r\n\x00"); i >= 0 {
		return fmt.Errorf("%w: %s holds %q at byte %d", ErrInvalidField, field, s[i], i)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalidField, field)
	}
	return nil
}

// AppendTo appends the encoded event to b and returns the extended buffer.
// Lines come in this order: comment, retry, id, event, data, then the blank
// line that ends the event; they end in LF. AppendTo does not allocate when b
// has room for the encoding.
func (e Event) AppendTo(b []byte) []byte {
	if e.hasComment {
		b = append(b, ':')
		if e.comment != "" {
			b = append(b, ' ')
			b = append(b, e.comment...)
		}
		b = append(b, '\n')
	}
	if e.hasRetry {
		b = append(b, "retry: "...)
		b = strconv.AppendInt(b, e.retry.Milliseconds(), 10)
		b = append(b, '\n')
	}
	if e.id != "" {
		b = append(b, "id: "...)
		b = append(b, e.id...)
		b = append(b, '\n')
	}
	if e.name != "" {
		b = append(b, "event: "...)
		b = append(b, e.name...)
		b = append(b, '\n')
	}
	if e.hasData {
		for s := e.data; ; {
			line, rest, more := strings.Cut(s, "\n")
			if line == "" {
				b = append(b, "data:\n"...)
			} else {
				b = append(b, "data: "...)
				b = append(b, line...)
				b = append(b, '\n')
			}
			if !more {
				break
			}
			s = rest
		}
	}
	return append(b, '\n')
}

// WriteTo writes the encoded event to w in a single call to w.Write. It
// allocates one buffer per call; to send one event to many writers, encode it
// once with [Event.AppendTo] and write those bytes instead.
func (e Event) WriteTo(w io.Writer) (int64, error) {
	n, err := w.Write(e.AppendTo(make([]byte, 0, e.size())))
	return int64(n), err
}

// size returns an upper bound on the length of the encoded event.
func (e Event) size() int {
	n := 1 // the blank line
	if e.hasComment {
		n += len(": \n") + len(e.comment)
	}
	if e.hasRetry {
		n += len("retry: \n") + 20
	}
	if e.id != "" {
		n += len("id: \n") + len(e.id)
	}
	if e.name != "" {
		n += len("event: \n") + len(e.name)
	}
	if e.hasData {
		n += (strings.Count(e.data, "\n")+1)*len("data: \n") + len(e.data)
	}
	return n
}
