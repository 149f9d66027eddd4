package server

import (
	"go/ast"
	"go/parser"
	"go/token"
	"net/textproto"
	"path/filepath"
	"strconv"
	"testing"
)

// TestSetHeadersKeysCanonical checks every setHeaders call in the
// package: a key that is not canonical would sit beside the one
// Header.Set and Header.Get use, and be sent twice or not found.
func TestSetHeadersKeysCanonical(t *testing.T) {
	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	for _, name := range files {
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			if fn, ok := call.Fun.(*ast.Ident); !ok || fn.Name != "setHeaders" {
				return true
			}
			calls++
			for i := 1; i < len(call.Args); i += 2 {
				lit, ok := call.Args[i].(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					t.Errorf("%s: setHeaders key %d is not a string literal", fset.Position(call.Pos()), i/2)
					continue
				}
				key, _ := strconv.Unquote(lit.Value)
				if c := textproto.CanonicalMIMEHeaderKey(key); c != key {
					t.Errorf("%s: setHeaders key %q is not canonical: %q", fset.Position(lit.Pos()), key, c)
				}
			}
			return true
		})
	}
	if calls == 0 {
		t.Error("no setHeaders call found")
	}
}
