package kv

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// ErrInvalidKey is wrapped by every error that ValidateKey returns. The
// wrapping error's text names the broken rule in plain words, fit to show
// to the client that sent the key.
var ErrInvalidKey = errors.New("invalid key")

// ErrInvalidPattern is wrapped by every error that ParsePattern returns. The
// wrapping error's text names the broken rule in plain words.
var ErrInvalidPattern = errors.New("invalid pattern")

// maxKeyBytes is the longest key or pattern, in bytes.
const maxKeyBytes = 1024

// ValidateKey reports whether key is a valid key: nil, or an error wrapping
// ErrInvalidKey whose text names the rule it breaks, such as
//
//	invalid key "a//b": empty segment (double "/")
//
// A key is 1 to 1024 bytes of valid UTF-8, made of segments separated by
// "/". No segment may be empty (so no leading, trailing or double "/"), or
// be "." or "..", which HTTP clients and servers rewrite in paths. A key
// holds no control character (U+0000 to U+001F, U+007F), which would break
// logs and event streams, and no "*", which is kept for patterns.
//
// ValidateKey makes one pass over the bytes of key and does not allocate
// when key is valid; it is meant to run on every request.
func ValidateKey(key string) error {
	if problem, _, _ := checkSegments(key, false); problem != "" {
		return fmt.Errorf("%w %s: %s", ErrInvalidKey, quoteForError(key), problem)
	}
	return nil
}

// Pattern is a parsed watch pattern: a key whose segments may hold the
// wildcard "*", and whose last segment may be "**". Make one with
// ParsePattern.
//
// A "*" matches any run of characters, possibly empty, inside one segment:
// "user-*" matches "user-1" and "user-", not "user-1/x". A last segment "**"
// matches one or more further segments: "config/**" matches "config/a" and
// "config/a/b" but not "config", and "**" alone matches every key.
//
// Patterns are comparable with ==; two patterns are equal when their text
// is. The zero Pattern matches no key.
type Pattern struct {
	s     string // the pattern's text, valid
	stars bool   // some segment other than a last "**" holds a "*"
	tail  bool   // the last segment is "**"
}

// ParsePattern parses s as a watch pattern. It returns an error wrapping
// ErrInvalidPattern, whose text names the broken rule, unless s follows the
// rules of keys (see ValidateKey) with two exceptions: a segment may hold
// "*" (several, but never two in a row), and the last segment may be
// exactly "**". So "a**", "**/a" and "a/**/b" are rejected, as are the
// empty string and patterns longer than 1024 bytes.
//
// ParsePattern makes one pass over s and allocates only on error.
func ParsePattern(s string) (Pattern, error) {
	problem, stars, tail := checkSegments(s, true)
	if problem != "" {
		return Pattern{}, fmt.Errorf("%w %s: %s", ErrInvalidPattern, quoteForError(s), problem)
	}
	return Pattern{s: s, stars: stars, tail: tail}, nil
}

// String returns the text p was parsed from ("" for the zero Pattern).
func (p Pattern) String() string { return p.s }

// Literal reports whether p holds no wildcard, so that it matches exactly
// one key: its own text. The zero Pattern is not literal.
func (p Pattern) Literal() bool { return p.s != "" && !p.stars && !p.tail }

// Prefix returns the longest string that every key matched by p starts
// with: the text of p before its first "*" ("config/" for "config/**",
// "user-" for "user-*", the whole text for a literal pattern, "" for "**").
// A store can scan its sorted keys from Prefix to find p's keys.
func (p Pattern) Prefix() string {
	if i := strings.IndexByte(p.s, '*'); i >= 0 {
		return p.s[:i]
	}
	return p.s
}

// Match reports whether p matches key. The key is assumed valid (see
// ValidateKey); the answer for an invalid key is unspecified. Match does not
// allocate and costs about len(p) + len(key): a "*" never backtracks.
func (p Pattern) Match(key string) bool {
	switch {
	case p.s == "":
		return false
	case !p.stars && !p.tail:
		return key == p.s
	case !p.stars:
		prefix := p.s[:len(p.s)-len("**")] // "" or ends with "/"
		return len(key) > len(prefix) && strings.HasPrefix(key, prefix)
	}
	pat := p.s
	for {
		pseg, prest, pmore := strings.Cut(pat, "/")
		if p.tail && !pmore {
			return key != ""
		}
		kseg, krest, kmore := strings.Cut(key, "/")
		if !globMatch(pseg, kseg) {
			return false
		}
		if !pmore || !kmore {
			return pmore == kmore
		}
		pat, key = prest, krest
	}
}

// Contains reports whether every key that q matches is also matched by p.
// So a reader allowed the keys of p may watch q when p.Contains(q).
//
// Contains is exact, not just sound: it answers false only when some valid
// key matches q and not p. It works segment by segment. A segment g of p
// contains a segment h of q when g, as a glob, matches the text of h with
// each "*" of h taken as a character that only a "*" of g can match. A last
// "**" in p contains any one or more further segments of q, including a
// "**"; a "**" in q is contained only in a "**" of p at the same depth or
// shallower. Every pattern contains the zero Pattern; the zero Pattern
// contains only itself.
//
// Contains does not allocate and costs about len(p) + len(q).
func (p Pattern) Contains(q Pattern) bool {
	if q.s == "" {
		return true
	}
	if p.s == "" {
		return false
	}
	ps, qs := p.s, q.s
	for {
		pseg, prest, pmore := strings.Cut(ps, "/")
		if p.tail && !pmore {
			return true // qs is not empty: one or more segments remain
		}
		qseg, qrest, qmore := strings.Cut(qs, "/")
		if q.tail && !qmore {
			return false // q goes deeper than this segment of p can
		}
		if !globMatch(pseg, qseg) {
			return false
		}
		if !pmore || !qmore {
			return pmore == qmore
		}
		ps, qs = prest, qrest
	}
}

// globMatch reports whether the glob g, where "*" matches any run of bytes,
// matches s. When s holds "*" itself, only a "*" of g can match it: so
// globMatch(g, h) also reports whether every string glob h matches is
// matched by g. Matching bytes is the same as matching characters here,
// because g and s are valid UTF-8 and no UTF-8 sequence starts inside
// another.
//
// The text of g before its first "*" must start s, the text after its last
// "*" must end s, and the pieces between stars are found in order, each at
// its leftmost place (taking the leftmost place never loses a match). So
// the cost is about len(g) + len(s), with no backtracking.
func globMatch(g, s string) bool {
	if g == "*" {
		return true
	}
	first := strings.IndexByte(g, '*')
	if first < 0 {
		return g == s
	}
	return globMatchStars(g, first, strings.LastIndexByte(g, '*'), s)
}

// globMatchStars is globMatch for a glob g that holds "*", first and last
// being the indexes of its first and last "*". It stops at the first piece
// of g that s lacks.
func globMatchStars(g string, first, last int, s string) bool {
	if !strings.HasPrefix(s, g[:first]) {
		return false
	}
	s = s[first:]
	suffix := g[last+1:]
	if !strings.HasSuffix(s, suffix) {
		return false
	}
	s = s[:len(s)-len(suffix)]
	for middle := g[first+1 : max(last, first+1)]; middle != ""; {
		piece, rest, _ := strings.Cut(middle, "*")
		i := strings.Index(s, piece)
		if i < 0 {
			return false
		}
		s, middle = s[i+len(piece):], rest
	}
	return true
}

// glob is a pattern segment holding "*", compiled once to be matched
// against many key segments, as the watch index does.
type glob struct {
	text        string
	first, last int // indexes of the first and last "*" in text
	literal     int // bytes of text that are not "*": no shorter segment matches
}

// compileGlob compiles seg, a segment of a valid pattern that holds "*"
// (not a last "**"). It costs about len(seg) and does not allocate.
func compileGlob(seg string) glob {
	return glob{
		text:    seg,
		first:   strings.IndexByte(seg, '*'),
		last:    strings.LastIndexByte(seg, '*'),
		literal: len(seg) - strings.Count(seg, "*"),
	}
}

// match reports whether g matches the key segment s, as globMatch does. It
// does not allocate. It answers at once when s is shorter than the literal
// text of g; otherwise it costs about len(s) plus the part of g it reads
// before the first piece that s lacks.
func (g *glob) match(s string) bool {
	return len(s) >= g.literal && globMatchStars(g.text, g.first, g.last, s)
}

// Globs returns the distinct segments of p that hold "*" and some other
// text, such as "user-*" or "*-v2-*", in byte order: the segments that a
// watch index keeps as globs. Each costs the index memory, and a try when
// a key holds the bit of it the index files it under; a server may cap
// them per client. A lone "*" and a last "**" match every segment without
// a try and are not returned. Globs returns nil when there are none;
// otherwise it allocates the slice, whose strings share the text of p.
func (p Pattern) Globs() []string {
	if !p.stars {
		return nil
	}
	var globs []string
	for s := p.s; s != ""; {
		seg, rest, _ := strings.Cut(s, "/")
		if seg != "*" && seg != "**" && strings.IndexByte(seg, '*') >= 0 {
			globs = append(globs, seg)
		}
		s = rest
	}
	slices.Sort(globs)
	return slices.Compact(globs)
}

// checkSegments checks s, a key or (with glob set) a pattern, in one pass.
// It returns "" when s is valid and otherwise the broken rule in plain
// words; for a valid pattern, whether a segment other than a last "**"
// holds a "*", and whether the last segment is "**". It allocates only
// when s is invalid.
func checkSegments(s string, glob bool) (problem string, stars, tail bool) {
	what := "a key"
	if glob {
		what = "a pattern"
	}
	switch {
	case s == "":
		return "empty; " + what + " is 1 to 1024 bytes", false, false
	case len(s) > maxKeyBytes:
		return fmt.Sprintf("%d bytes; %s is at most %d bytes", len(s), what, maxKeyBytes), false, false
	}
	start := 0          // where the current segment starts
	segStars := 0       // "*" in the current segment
	doubleStar := false // the current segment holds "**"
	for i := 0; i <= len(s); {
		if i == len(s) || s[i] == '/' {
			seg := s[start:i]
			switch {
			case seg == "" && i == 0:
				return `empty segment (leading "/")`, false, false
			case seg == "" && i == len(s):
				return `empty segment (trailing "/")`, false, false
			case seg == "":
				return `empty segment (double "/")`, false, false
			case seg == "." || seg == "..":
				return fmt.Sprintf("segment %q is not allowed", seg), false, false
			case doubleStar && seg != "**":
				return `"**" must be a whole segment`, false, false
			case doubleStar && i < len(s):
				return `"**" is allowed only as the last segment`, false, false
			case doubleStar:
				tail = true
			case segStars > 0:
				stars = true
			}
			start, segStars, doubleStar = i+1, 0, false
			i++
			continue
		}
		c := s[i]
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				return fmt.Sprintf("invalid UTF-8 at byte %d", i), false, false
			}
			i += size
			continue
		}
		switch {
		case c < 0x20 || c == 0x7f:
			return fmt.Sprintf("control character %U at byte %d", c, i), false, false
		case c == '*' && !glob:
			return fmt.Sprintf(`"*" at byte %d; wildcards are allowed only in watch patterns`, i), false, false
		case c == '*':
			segStars++
			if i > start && s[i-1] == '*' {
				doubleStar = true
			}
		}
		i++
	}
	return "", stars, tail
}

// quoteForError quotes s for an error message, cut to its first 64 bytes
// or so: keys can be long, and errors are sent back to clients and logged.
func quoteForError(s string) string {
	const limit = 64
	if len(s) <= limit {
		return strconv.Quote(s)
	}
	n := limit
	for n > limit-utf8.UTFMax && !utf8.RuneStart(s[n]) {
		n--
	}
	return strconv.Quote(s[:n]) + "..."
}
