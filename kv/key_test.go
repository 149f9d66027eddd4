package kv_test

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"

	"kvsse/kv"
)

func TestValidateKey(t *testing.T) {
	tests := []struct {
		name string
		key  string
		want string // a part of the error text naming the rule; "" when valid
	}{
		{"one byte", "a", ""},
		{"segments", "config/app/flag", ""},
		{"1024 bytes", strings.Repeat("a", 1024), ""},
		{"1024 bytes in segments", strings.Repeat("abc/", 255) + "abcd", ""},
		{"unicode", "users/José/日本語", ""},
		{"dots inside segments", "a.b/.c/d./.../x..y", ""},
		{"space and punctuation", "a b/#?&%=+~@!", ""},
		{"C1 controls are not forbidden", "a\u0085b", ""},
		{"plus and colon", "user:1+2", ""},

		{"empty", "", "empty"},
		{"1025 bytes", strings.Repeat("a", 1025), "1025 bytes; a key is at most 1024 bytes"},
		{"long multibyte", strings.Repeat("é", 513), "1026 bytes"},
		{"invalid UTF-8", "a\xffb", "invalid UTF-8 at byte 1"},
		{"truncated UTF-8", "a/\xc3", "invalid UTF-8 at byte 2"},
		{"UTF-16 surrogate", "a\xed\xa0\x80", "invalid UTF-8"},
		{"overlong encoding", "\xc0\xaf", "invalid UTF-8"},
		{"leading slash", "/a", `empty segment (leading "/")`},
		{"trailing slash", "a/", `empty segment (trailing "/")`},
		{"double slash", "a//b", `empty segment (double "/")`},
		{"slash alone", "/", "empty segment"},
		{"dot", ".", `segment "." is not allowed`},
		{"dot dot", "..", `segment ".." is not allowed`},
		{"dot segment inside", "a/./b", `segment "."`},
		{"dot dot segment last", "a/..", `segment ".."`},
		{"NUL", "a\x00b", "control character U+0000 at byte 1"},
		{"newline", "a\nb", "control character U+000A"},
		{"carriage return", "a\r", "control character U+000D"},
		{"tab", "\tb", "control character U+0009 at byte 0"},
		{"unit separator", "a\x1f", "control character U+001F"},
		{"DEL", "a\x7f", "control character U+007F"},
		{"star", "user-*", `"*" at byte 5`},
		{"star segment", "a/*", "wildcards are allowed only in watch patterns"},
		{"double star", "**", `"*"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := kv.ValidateKey(tt.key)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("ValidateKey(%q) = %v, want nil", tt.key, err)
				}
				return
			}
			if !errors.Is(err, kv.ErrInvalidKey) {
				t.Fatalf("ValidateKey(%q) = %v, want an error wrapping ErrInvalidKey", tt.key, err)
			}
			if !strings.HasPrefix(err.Error(), "invalid key ") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ValidateKey(%q) = %q, want it to start with \"invalid key \" and name the rule %q", tt.key, err, tt.want)
			}
		})
	}
}

func TestValidateKeyLongKeyErrorIsShort(t *testing.T) {
	err := kv.ValidateKey(strings.Repeat("日", 1000))
	if err == nil || len(err.Error()) > 200 {
		t.Fatalf("ValidateKey(3000-byte key) = %q, want a short error", err)
	}
	if !strings.Contains(err.Error(), `..."`) && !strings.Contains(err.Error(), `"...`) {
		t.Errorf("error %q does not show the key was cut", err)
	}
	if !utf8.ValidString(err.Error()) {
		t.Errorf("error %q is not valid UTF-8", err)
	}
}

func TestParsePattern(t *testing.T) {
	tests := []struct {
		name    string
		pattern string
		literal bool
		prefix  string
		want    string // a part of the error text naming the rule; "" when valid
	}{
		{"literal", "config/app", true, "config/app", ""},
		{"every key", "**", false, "", ""},
		{"subtree", "config/**", false, "config/", ""},
		{"one segment", "*", false, "", ""},
		{"suffix star", "user-*", false, "user-", ""},
		{"several stars", "a*b*c", false, "a", ""},
		{"star then subtree", "*/x/**", false, "", ""},
		{"star in deep segment", "a/b*/c", false, "a/b", ""},
		{"unicode", "é*/日本", false, "é", ""},
		{"1024 bytes", strings.Repeat("*a", 512), false, "", ""},
		{"dots in globs", ".*/*./..*", false, ".", ""},

		{"empty", "", false, "", "empty"},
		{"1025 bytes", strings.Repeat("a", 1025), false, "", "1025 bytes; a pattern is at most 1024 bytes"},
		{"invalid UTF-8", "*\xff", false, "", "invalid UTF-8 at byte 1"},
		{"leading slash", "/**", false, "", `empty segment (leading "/")`},
		{"trailing slash", "a/*/", false, "", `empty segment (trailing "/")`},
		{"double slash", "a//**", false, "", `empty segment (double "/")`},
		{"dot", "a/./*", false, "", `segment "." is not allowed`},
		{"dot dot", "../**", false, "", `segment ".." is not allowed`},
		{"NUL", "a\x00*", false, "", "control character U+0000 at byte 1"},
		{"newline", "*\n", false, "", "control character U+000A"},
		{"DEL", "\x7f/**", false, "", "control character U+007F"},
		{"star star suffix", "a**", false, "", `"**" must be a whole segment`},
		{"star star prefix", "**a", false, "", `"**" must be a whole segment`},
		{"three stars", "***", false, "", `"**" must be a whole segment`},
		{"star star inside", "a/b**c", false, "", `"**" must be a whole segment`},
		{"star star first", "**/a", false, "", `"**" is allowed only as the last segment`},
		{"star star middle", "a/**/b", false, "", `"**" is allowed only as the last segment`},
		{"star star twice", "**/**", false, "", `"**" is allowed only as the last segment`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := kv.ParsePattern(tt.pattern)
			if tt.want != "" {
				if !errors.Is(err, kv.ErrInvalidPattern) {
					t.Fatalf("ParsePattern(%q) = %v, want an error wrapping ErrInvalidPattern", tt.pattern, err)
				}
				if !strings.HasPrefix(err.Error(), "invalid pattern ") || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("ParsePattern(%q) = %q, want it to start with \"invalid pattern \" and name the rule %q", tt.pattern, err, tt.want)
				}
				if p != (kv.Pattern{}) {
					t.Errorf("ParsePattern(%q) returned %#v with its error, want the zero Pattern", tt.pattern, p)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParsePattern(%q) = %v, want nil", tt.pattern, err)
			}
			if got := p.String(); got != tt.pattern {
				t.Errorf("String() = %q, want %q", got, tt.pattern)
			}
			if got := p.Literal(); got != tt.literal {
				t.Errorf("Literal() = %v, want %v", got, tt.literal)
			}
			if got := p.Prefix(); got != tt.prefix {
				t.Errorf("Prefix() = %q, want %q", got, tt.prefix)
			}
		})
	}
}

func TestPatternMatch(t *testing.T) {
	tests := []struct {
		pattern string
		key     string
		want    bool
	}{
		{"config/app", "config/app", true},
		{"config/app", "config/ap", false},
		{"config/app", "config/app/x", false},
		{"config/app", "config", false},

		{"user-*", "user-1", true},
		{"user-*", "user-", true},
		{"user-*", "user-1/x", false},
		{"user-*", "user", false},
		{"user-*", "x/user-1", false},

		{"*", "a", true},
		{"*", "config", true},
		{"*", "a/b", false},

		{"**", "a", true},
		{"**", "a/b/c", true},

		{"config/**", "config/a", true},
		{"config/**", "config/a/b", true},
		{"config/**", "config", false},
		{"config/**", "configx/a", false},
		{"config/**", "other/config/a", false},

		{"a*b*c", "abc", true},
		{"a*b*c", "aXbYc", true},
		{"a*b*c", "abbc", true},
		{"a*b*c", "abcbc", true},
		{"a*b*c", "ab", false},
		{"a*b*c", "acb", false},
		{"a*b*c", "a/b/c", false},
		{"a*b*c", "abc/x", false},

		{"*/x", "a/x", true},
		{"*/x", "a/y", false},
		{"*/x", "a/b/x", false},
		{"*/x/**", "a/x/b", true},
		{"*/x/**", "a/x", false},
		{"*-*/**", "a-b/c/d", true},
		{"*-*/**", "ab/c/d", false},
		{"a/*/c", "a/b/c", true},
		{"a/*/c", "a/c", false},
		{"a/*/c", "a/b/d", false},
		{"*é*", "café!", true},
		{"*é", "cafe", false},

		{"", "a", false}, // the zero Pattern
	}
	for _, tt := range tests {
		t.Run(tt.pattern+" "+tt.key, func(t *testing.T) {
			var p kv.Pattern
			if tt.pattern != "" {
				p = mustPattern(t, tt.pattern)
			}
			if got := p.Match(tt.key); got != tt.want {
				t.Errorf("ParsePattern(%q).Match(%q) = %v, want %v", tt.pattern, tt.key, got, tt.want)
			}
			if got := regexpMatch(tt.pattern, tt.key); got != tt.want && tt.pattern != "" {
				t.Fatalf("test reference: regexpMatch(%q, %q) = %v, want %v", tt.pattern, tt.key, got, tt.want)
			}
		})
	}
}

func TestPatternContains(t *testing.T) {
	tests := []struct {
		p, q string
		want bool
	}{
		{"a/**", "a/b/**", true},
		{"a/**", "a/*", true},
		{"a/**", "a/b", true},
		{"a/**", "a/**", true},
		{"a/**", "a", false},
		{"a/**", "*/b", false},
		{"a/**", "**", false},
		{"**", "**", true},
		{"**", "a/*/c/**", true},
		{"*/**", "**", false},
		{"*", "**", false},
		{"a/*", "**", false},
		{"*/**", "a/**", true},
		{"*/*/**", "a/**", false},
		{"*/**", "a/*/**", true},
		{"a/*/**", "a/b/c", true},
		{"a/*/**", "a/b", false},
		{"*", "user-*", true},
		{"*", "a", true},
		{"*", "a/b", false},
		{"user-*", "user-1*", true},
		{"user-*", "user-*", true},
		{"user-*", "user*", false},
		{"user-*", "*", false},
		{"a*", "ab*c", true},
		{"*c", "ab*c", true},
		{"a*c", "ab*c", true},
		{"a*b*c", "a*c", false},
		{"a*c", "a*b*c", true},
		{"*a*b*", "*ab*", true},
		{"*ab*", "*a*b*", false}, // "acb" is a witness; only "a" and "b" would not show it
		{"*a*a*", "*aa*", true},
		{"*aa*", "*a*a*", false},
		{"a", "a*", false},
		{"a", "a", true},
		{"a", "b", false},
		{"a/b", "a/b/c", false},
		{"a/b/c", "a/b", false},
		{"config/**", "config/app/**", true},
		{"config/app/**", "config/**", false},
		{"config/*", "config/**", false},
		{"config/*", "config/*", true},
		{"*/app", "config/app", true},
		{"", "", true},
		{"a", "", true},
		{"", "a", false},
	}
	for _, tt := range tests {
		t.Run(tt.p+" contains "+tt.q, func(t *testing.T) {
			var p, q kv.Pattern
			if tt.p != "" {
				p = mustPattern(t, tt.p)
			}
			if tt.q != "" {
				q = mustPattern(t, tt.q)
			}
			if got := p.Contains(q); got != tt.want {
				t.Errorf("%q.Contains(%q) = %v, want %v", tt.p, tt.q, got, tt.want)
			}
			if tt.p != "" && !p.Contains(p) {
				t.Errorf("%q does not contain itself", tt.p)
			}
		})
	}
}

// TestPatternContainsBruteForce checks Contains against the sets of keys
// the patterns match, which it enumerates. Patterns are made of "a", "b"
// and "*"; keys of "a", "b" and "c". Since "c" appears in no pattern, it
// stands for any character that only a "*" can match, and a witness that
// p does not contain q can always be made from q by replacing each "*"
// with "c" and any other segment q leaves free with "c". The keys include
// all such witnesses, so p contains q exactly when every key of q is a key
// of p.
func TestPatternContainsBruteForce(t *testing.T) {
	t.Run("segments", func(t *testing.T) {
		// One segment, up to 6 bytes: this is where glob containment is
		// hard ("a*b*c" in "a*c", "*ab*" not in "*a*b*").
		var pats []string
		for _, g := range segmentsOver("ab*", 6) {
			if !strings.Contains(g, "**") {
				pats = append(pats, g)
			}
		}
		checkContainsExact(t, pats, segmentsOver("abc", 6))
	})
	t.Run("paths", func(t *testing.T) {
		// One to three segments, each up to 2 bytes, "**" allowed last;
		// keys of one to four segments, each up to 2 bytes.
		globs := segmentsOver("ab*", 2)
		var pats []string
		var build func(prefix string, segs int)
		build = func(prefix string, segs int) {
			for _, g := range append(globs, "**") {
				if strings.Contains(g, "**") && g != "**" {
					continue
				}
				pats = append(pats, prefix+g)
				if g != "**" && segs < 2 {
					build(prefix+g+"/", segs+1)
				}
			}
		}
		build("", 0)
		keySegs := segmentsOver("abc", 2)
		var keys []string
		var keysOf func(prefix string, segs int)
		keysOf = func(prefix string, segs int) {
			for _, s := range keySegs {
				keys = append(keys, prefix+s)
				if segs < 3 {
					keysOf(prefix+s+"/", segs+1)
				}
			}
		}
		keysOf("", 0)
		checkContainsExact(t, pats, keys)
	})
}

// checkContainsExact checks that p.Contains(q) holds for two of texts
// exactly when every one of keys that q matches is matched by p.
func checkContainsExact(t *testing.T, texts, keys []string) {
	pats := make([]kv.Pattern, len(texts))
	for i, s := range texts {
		pats[i] = mustPattern(t, s)
	}
	words := (len(keys) + 63) / 64
	sets := make([][]uint64, len(pats))
	for i, p := range pats {
		sets[i] = make([]uint64, words)
		for j, k := range keys {
			if p.Match(k) {
				sets[i][j/64] |= 1 << (j % 64)
			}
		}
	}
	// outside returns the index of a key in a and not in b, or -1.
	outside := func(a, b []uint64) int {
		for w := range a {
			if d := a[w] &^ b[w]; d != 0 {
				for bit := range 64 {
					if d&(1<<bit) != 0 {
						return w*64 + bit
					}
				}
			}
		}
		return -1
	}
	var contained, failures int
	for i, p := range pats {
		for j, q := range pats {
			got := p.Contains(q)
			witness := outside(sets[j], sets[i])
			if got {
				contained++
			}
			switch {
			case got && witness >= 0:
				t.Errorf("UNSOUND: %q.Contains(%q) = true, but %q matches %q and not %q", texts[i], texts[j], texts[j], keys[witness], texts[i])
				failures++
			case !got && witness < 0:
				t.Errorf("inexact: %q.Contains(%q) = false, but every key of %q matches %q", texts[i], texts[j], texts[j], texts[i])
				failures++
			}
			if failures > 20 {
				t.Fatal("too many failures")
			}
		}
	}
	t.Logf("%d patterns, %d keys, %d of %d pairs contained", len(pats), len(keys), contained, len(pats)*len(pats))
}

// segmentsOver returns every non-empty string over the bytes of alphabet
// up to n bytes long.
func segmentsOver(alphabet string, n int) []string {
	out := []string{""}
	var all []string
	for range n {
		var next []string
		for _, s := range out {
			for _, c := range alphabet {
				next = append(next, s+string(c))
			}
		}
		all = append(all, next...)
		out = next
	}
	return all
}

func TestPatternGlobs(t *testing.T) {
	tests := []struct {
		pattern string
		want    []string
	}{
		{"config/app", nil},
		{"config/**", nil},
		{"**", nil},
		{"*/x/*/**", nil},
		{"user-*", []string{"user-*"}},
		{"a/*b/c*/*b/**", []string{"*b", "c*"}},
		{"*q*q*/x*/*q*q*", []string{"*q*q*", "x*"}},
		{"", nil}, // the zero Pattern
	}
	for _, tt := range tests {
		t.Run(tt.pattern, func(t *testing.T) {
			var p kv.Pattern
			if tt.pattern != "" {
				p = mustPattern(t, tt.pattern)
			}
			if diff := cmp.Diff(tt.want, p.Globs()); diff != "" {
				t.Errorf("ParsePattern(%q).Globs() (-want +got):\n%s", tt.pattern, diff)
			}
		})
	}
}

func TestAllocations(t *testing.T) {
	p := mustPattern(t, "config/*-prod/**")
	q := mustPattern(t, "config/app-*-prod/x/**")
	tests := []struct {
		name string
		f    func()
	}{
		{"ValidateKey", func() { _ = kv.ValidateKey("config/app-eu-prod/flags/dark-mode") }},
		{"ParsePattern", func() { _, _ = kv.ParsePattern("config/*-prod/**") }},
		{"Match", func() { _ = p.Match("config/app-eu-prod/flags/dark-mode") }},
		{"Contains", func() { _ = p.Contains(q) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if n := testing.AllocsPerRun(100, tt.f); n != 0 {
				t.Errorf("%s allocates %v times per call, want 0", tt.name, n)
			}
		})
	}
}

func FuzzValidateKey(f *testing.F) {
	for _, s := range []string{
		"a", "config/app", "a//b", "/a", "a/", ".", "..", "a/./b", "a\x00", "a\x7f",
		"*", "a/**", "\xff", "é/日本", "a\u0085", strings.Repeat("a", 1024), strings.Repeat("a", 1025),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		err := kv.ValidateKey(key)
		if want := naiveValid(key, false); (err == nil) != want {
			t.Fatalf("ValidateKey(%q) = %v, but the plain reference says valid=%v", key, err, want)
		}
		if err != nil {
			if !errors.Is(err, kv.ErrInvalidKey) {
				t.Fatalf("ValidateKey(%q) = %v, not wrapping ErrInvalidKey", key, err)
			}
			return
		}
		p, err := kv.ParsePattern(key)
		if err != nil {
			t.Fatalf("valid key %q is not a valid pattern: %v", key, err)
		}
		if !p.Literal() || p.String() != key || p.Prefix() != key {
			t.Fatalf("pattern of key %q: Literal()=%v String()=%q Prefix()=%q", key, p.Literal(), p.String(), p.Prefix())
		}
		if !p.Match(key) || !p.Contains(p) {
			t.Fatalf("pattern of key %q does not match or contain itself", key)
		}
		// Keys next to key in a few ways, all different from it.
		i := strings.LastIndexByte(key, '/')
		for _, other := range []string{key + "/x", key + "x", "x" + key, "x/" + key, key[:i+1] + "x", key[:len(key)-1], key[:max(i, 0)]} {
			if other != key && kv.ValidateKey(other) == nil && p.Match(other) {
				t.Fatalf("pattern of key %q matches %q too", key, other)
			}
		}
	})
}

func FuzzParsePattern(f *testing.F) {
	for _, s := range [][2]string{
		{"**", "a"}, {"config/**", "config/a/b"}, {"config/**", "config"}, {"user-*", "user-1"},
		{"a*b*c", "aXbYc"}, {"a*b*c", "acb"}, {"*/x/**", "a/x/b"}, {"a**", "a"}, {"**/a", "b/a"},
		{"a/**/b", "a/x/b"}, {"a//*", "a"}, {"./*", "a"}, {"*\x00", "a"}, {"*é*", "café"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, key string) {
		p, err := kv.ParsePattern(pattern)
		if want := naiveValid(pattern, true); (err == nil) != want {
			t.Fatalf("ParsePattern(%q) = %v, but the plain reference says valid=%v", pattern, err, want)
		}
		if err != nil {
			if !errors.Is(err, kv.ErrInvalidPattern) {
				t.Fatalf("ParsePattern(%q) = %v, not wrapping ErrInvalidPattern", pattern, err)
			}
			return
		}
		if p.String() != pattern || !p.Contains(p) {
			t.Fatalf("ParsePattern(%q): String()=%q, contains itself: %v", pattern, p.String(), p.Contains(p))
		}
		if p.Literal() != !strings.Contains(pattern, "*") {
			t.Fatalf("ParsePattern(%q).Literal() = %v", pattern, p.Literal())
		}
		if kv.ValidateKey(key) != nil {
			return
		}
		got := p.Match(key)
		if want := regexpMatch(pattern, key); got != want {
			t.Fatalf("ParsePattern(%q).Match(%q) = %v, the regexp reference says %v", pattern, key, got, want)
		}
		if got && !strings.HasPrefix(key, p.Prefix()) {
			t.Fatalf("ParsePattern(%q) matches %q, which does not start with Prefix() %q", pattern, key, p.Prefix())
		}
	})
}

// FuzzPatternContains checks that Contains is sound (no key of q outside p)
// and exact: when p does not contain q, one of the keys made from q by
// replacing each "*" and the "**" with a character p does not use is a
// witness.
func FuzzPatternContains(f *testing.F) {
	for _, s := range [][3]string{
		{"a/**", "a/b/**", "a/b/c"}, {"a/**", "a/*", "a/b"}, {"**", "*", "x"}, {"*ab*", "*a*b*", "acb"},
		{"a*c", "a*b*c", "abc"}, {"*/*/**", "a/**", "a/b"}, {"user-*", "user*", "user"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, ptext, qtext, key string) {
		p, err1 := kv.ParsePattern(ptext)
		q, err2 := kv.ParsePattern(qtext)
		if err1 != nil || err2 != nil {
			return
		}
		contains := p.Contains(q)
		if contains && kv.ValidateKey(key) == nil && q.Match(key) && !p.Match(key) {
			t.Fatalf("%q.Contains(%q), but %q matches %q and not %q", ptext, qtext, qtext, key, ptext)
		}
		if contains && q.Contains(p) && ptext != qtext {
			t.Fatalf("%q and %q contain each other", ptext, qtext)
		}
		fresh := ""
		for _, c := range []string{"~", "#", "é", "☃"} {
			if !strings.Contains(ptext, c) {
				fresh = c
				break
			}
		}
		if fresh == "" {
			return
		}
		for n := 1; n <= strings.Count(ptext, "/")+2; n++ {
			k := strings.ReplaceAll(qtext, "*", fresh)
			if q.String() == "**" || strings.HasSuffix(qtext, "/**") {
				k = strings.TrimSuffix(k, fresh+fresh) + strings.Repeat(fresh+"/", n-1) + fresh
			}
			if len(k) > 1024 {
				return
			}
			if err := kv.ValidateKey(k); err != nil {
				t.Fatalf("witness %q made from %q: %v", k, qtext, err)
			}
			if !q.Match(k) {
				t.Fatalf("%q does not match %q, made from it", qtext, k)
			}
			if !contains && !p.Match(k) {
				return
			}
			if contains && !p.Match(k) {
				t.Fatalf("%q.Contains(%q), but %q matches %q and not %q", ptext, qtext, qtext, k, ptext)
			}
		}
		if !contains {
			t.Fatalf("%q.Contains(%q) = false, but no witness found", ptext, qtext)
		}
	})
}

// naiveValid is the contract's rules for keys (or patterns, with glob set),
// written plainly.
func naiveValid(s string, glob bool) bool {
	if len(s) < 1 || len(s) > 1024 || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r <= 0x1f || r == 0x7f || (r == '*' && !glob) {
			return false
		}
	}
	segs := strings.Split(s, "/")
	for i, seg := range segs {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
		if strings.Contains(seg, "**") && (seg != "**" || i != len(segs)-1) {
			return false
		}
	}
	return true
}

// regexpMatch reports whether pattern matches key by way of a regular
// expression built from the pattern's text.
func regexpMatch(pattern, key string) bool {
	segs := strings.Split(pattern, "/")
	for i, seg := range segs {
		if seg == "**" {
			segs[i] = `[^/]+(/[^/]+)*`
			continue
		}
		parts := strings.Split(seg, "*")
		for j := range parts {
			parts[j] = regexp.QuoteMeta(parts[j])
		}
		segs[i] = strings.Join(parts, `[^/]*`)
	}
	return regexp.MustCompile(`^(?s)` + strings.Join(segs, "/") + `$`).MatchString(key)
}

func mustPattern(tb testing.TB, s string) kv.Pattern {
	tb.Helper()
	p, err := kv.ParsePattern(s)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

func BenchmarkValidateKey(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if err := kv.ValidateKey("config/app-eu-prod/flags/dark-mode"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPatternMatch(b *testing.B) {
	for _, pattern := range []string{"config/app-eu-prod/flags/dark-mode", "config/**", "config/*-prod/**", "*/*/*/*"} {
		b.Run(pattern, func(b *testing.B) {
			p := mustPattern(b, pattern)
			b.ReportAllocs()
			for b.Loop() {
				if !p.Match("config/app-eu-prod/flags/dark-mode") {
					b.Fatal("no match")
				}
			}
		})
	}
}

// BenchmarkPatternMatchWorstCase matches a 1024-byte glob that almost
// matches against a 1024-byte key.
func BenchmarkPatternMatchWorstCase(b *testing.B) {
	p := mustPattern(b, "*"+strings.Repeat("a", 511)+"b*")
	key := strings.Repeat("a", 1024)
	b.ReportAllocs()
	for b.Loop() {
		if p.Match(key) {
			b.Fatal("match")
		}
	}
}

func ExampleValidateKey() {
	for _, key := range []string{"config/app", "config//app", "config/../app", "config/*"} {
		fmt.Println(kv.ValidateKey(key))
	}
	// Output:
	// <nil>
	// invalid key "config//app": empty segment (double "/")
	// invalid key "config/../app": segment ".." is not allowed
	// invalid key "config/*": "*" at byte 7; wildcards are allowed only in watch patterns
}

func ExampleParsePattern() {
	p, err := kv.ParsePattern("config/**")
	if err != nil {
		panic(err)
	}
	fmt.Println(p.Match("config/a"), p.Match("config/a/b"), p.Match("config"))

	q, _ := kv.ParsePattern("config/app-*")
	fmt.Println(p.Contains(q), q.Contains(p))

	_, err = kv.ParsePattern("config/**/x")
	fmt.Println(err)
	// Output:
	// true true false
	// true false
	// invalid pattern "config/**/x": "**" is allowed only as the last segment
}
