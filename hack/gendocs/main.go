// Command gendocs writes the command line reference, one markdown file per
// command, into docs/cli/ (or -out DIR) from nodeagent's command tree.
//
//	go run ./hack/gendocs
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/nodeagent/nodeagent/cmd/nodeagent/cli/clidoc"
)

func main() {
	out := flag.String("out", "docs/cli", "directory to write the reference into")
	flag.Parse()
	if err := clidoc.WriteDocs(*out); err != nil {
		fmt.Fprintln(os.Stderr, "gendocs:", err)
		os.Exit(1)
	}
}
