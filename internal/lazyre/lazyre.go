// Package lazyre compiles a package's regular expressions on first use rather
// than in the package's init: every command pays init for every package linked
// into the binary, and most commands never match most expressions.
package lazyre

import (
	"regexp"
	"sync"
)

// New returns a function that compiles expr (regexp.MustCompile: expr is a
// constant of the program, so a bad one is a bug) the first time it is called
// and returns the same *regexp.Regexp ever after. Safe for concurrent use.
func New(expr string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(expr) })
}
