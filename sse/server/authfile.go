package server

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"unicode/utf8"

	"kvsse/kv"
)

// grant is one token of the auth file: its name, the SHA-256 of the token
// and the keys it may read and write. A grant is never changed after
// parseAuthFile made it.
type grant struct {
	name   string
	digest [sha256.Size]byte
	read   []kv.Pattern
	write  []kv.Pattern
}

func matchesAny(ps []kv.Pattern, key string) bool {
	return slices.ContainsFunc(ps, func(p kv.Pattern) bool { return p.Match(key) })
}

func (g *grant) mayRead(key string) bool  { return matchesAny(g.read, key) }
func (g *grant) mayWrite(key string) bool { return matchesAny(g.write, key) }

// mayWritePrefix reports whether g may write every key that starts with
// prefix: one of its write patterns is "**", or "Q/**" with Q a literal
// (no "*") and prefix starting with "Q/".
func (g *grant) mayWritePrefix(prefix string) bool {
	for _, p := range g.write {
		q, ok := strings.CutSuffix(p.String(), "**")
		if ok && !strings.Contains(q, "*") && strings.HasPrefix(prefix, q) {
			return true
		}
	}
	return false
}

// mayWatch reports whether every key q matches lies inside g's read
// patterns: some read pattern contains q.
func (g *grant) mayWatch(q kv.Pattern) bool {
	return slices.ContainsFunc(g.read, func(p kv.Pattern) bool { return p.Contains(q) })
}

var everyKey, _ = kv.ParsePattern("**")

// readsAll reports whether g may read every key.
func (g *grant) readsAll() bool { return g.mayWatch(everyKey) }

// tokenSet is the content of one auth file. It is never changed once
// made, so it is safe for concurrent use.
type tokenSet struct {
	grants []grant
	byName map[string]*grant
}

// lookup returns the grant of token, or nil. It hashes token and compares
// the digest with every grant's in constant time, with no early exit, so
// that its timing tells neither which token matched nor how long any is.
func (s *tokenSet) lookup(token string) *grant {
	if token == "" {
		return nil
	}
	sum := sha256.Sum256([]byte(token))
	found := -1
	for i := range s.grants {
		eq := subtle.ConstantTimeCompare(sum[:], s.grants[i].digest[:])
		found = subtle.ConstantTimeSelect(eq, i, found)
	}
	if found < 0 {
		return nil
	}
	return &s.grants[found]
}

// tokenJSON is one entry of the auth file.
type tokenJSON struct {
	Name   string   `json:"name"`
	Token  string   `json:"token"`
	SHA256 string   `json:"sha256"`
	Read   []string `json:"read"`
	Write  []string `json:"write"`
}

// decodeStrict decodes exactly one JSON value from data into v, refusing
// unknown fields (a misspelt "reads" must not silently grant nothing).
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the JSON object")
	}
	return nil
}

// parseAuthFile parses and checks the JSON of an auth file:
//
//	{"tokens": [{"name": "deployer", "token": "...", "read": ["**"], "write": ["config/**"]}]}
//
// Each entry needs a unique, non-empty name without control characters,
// and exactly one of "token" (the token in clear: printable, no spaces) and
// "sha256" (64 hex digits); "read" and "write" are lists of patterns (see
// kv.ParsePattern). No two entries may hold the same token. Errors name
// the entry, as tokens[i] "name".
func parseAuthFile(data []byte) (*tokenSet, error) {
	var file struct {
		Tokens []json.RawMessage `json:"tokens"`
	}
	if err := decodeStrict(data, &file); err != nil {
		return nil, fmt.Errorf("not valid JSON of the form {\"tokens\":[...]}: %w", err)
	}
	if file.Tokens == nil {
		return nil, errors.New(`no "tokens" list`)
	}
	s := &tokenSet{grants: make([]grant, len(file.Tokens)), byName: map[string]*grant{}}
	byDigest := map[[sha256.Size]byte]string{}
	for i, raw := range file.Tokens {
		var t tokenJSON
		err := decodeStrict(raw, &t)
		where := fmt.Sprintf("tokens[%d]", i)
		if t.Name != "" {
			where += fmt.Sprintf(" %q", t.Name)
		}
		if err == nil {
			s.grants[i], err = t.grant()
		}
		if err == nil && s.byName[t.Name] != nil {
			err = errors.New("the name is used twice")
		}
		if other, dup := byDigest[s.grants[i].digest]; err == nil && dup {
			err = fmt.Errorf("the same token as %q", other)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		s.byName[t.Name] = &s.grants[i]
		byDigest[s.grants[i].digest] = t.Name
	}
	return s, nil
}

// grant checks one entry of the auth file and makes its grant.
func (t *tokenJSON) grant() (grant, error) {
	g := grant{name: t.Name}
	switch {
	case t.Name == "":
		return g, errors.New(`"name" is missing or empty`)
	case !utf8.ValidString(t.Name) || strings.ContainsFunc(t.Name, isControl):
		return g, errors.New(`"name" must be UTF-8 without control characters`)
	case (t.Token == "") == (t.SHA256 == ""):
		return g, errors.New(`give exactly one of "token" (the token in clear) and "sha256" (its SHA-256 in hex)`)
	case t.Token != "":
		for i := 0; i < len(t.Token); i++ {
			if c := t.Token[i]; c <= ' ' || c == 0x7f {
				return g, errors.New(`"token" must not hold spaces or control characters`)
			}
		}
		g.digest = sha256.Sum256([]byte(t.Token))
	default:
		b, err := hex.DecodeString(t.SHA256)
		if err != nil || len(b) != sha256.Size {
			return g, fmt.Errorf(`"sha256" must be 64 hex digits, got %d characters`, len(t.SHA256))
		}
		copy(g.digest[:], b)
	}
	var err error
	if g.read, err = parsePatterns("read", t.Read); err == nil {
		g.write, err = parsePatterns("write", t.Write)
	}
	return g, err
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

func parsePatterns(field string, raw []string) ([]kv.Pattern, error) {
	ps := make([]kv.Pattern, 0, len(raw))
	for i, s := range raw {
		p, err := kv.ParsePattern(s)
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %w", field, i, err)
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// readAuthFile reads and parses the auth file at path; its errors name
// the file.
func readAuthFile(path string) (*tokenSet, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		var s *tokenSet
		if s, err = parseAuthFile(data); err == nil {
			return s, nil
		}
	}
	return nil, fmt.Errorf("auth file %s: %w", path, err)
}
