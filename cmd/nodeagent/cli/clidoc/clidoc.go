// Package clidoc renders nodeagent's command line reference (docs/cli). It is
// apart from package cli so that the agent's binary does not carry cobra's
// document generators (go-md2man, blackfriday) it never runs.
package clidoc

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"

	"github.com/nodeagent/nodeagent/cmd/nodeagent/cli"
)

// Docs renders the command line reference: one markdown file per command, by
// file name (nodeagent_status.md, ...). It is deterministic: no generation date.
func Docs() (map[string][]byte, error) {
	root := cli.New(strings.NewReader(""), io.Discard, io.Discard)
	files := map[string][]byte{}
	var err error
	walk(root, func(c *cobra.Command) {
		if err != nil || !c.IsAvailableCommand() && c != root {
			return
		}
		c.DisableAutoGenTag = true
		var b bytes.Buffer
		if err = doc.GenMarkdown(c, &b); err != nil {
			return
		}
		files[strings.ReplaceAll(c.CommandPath(), " ", "_")+".md"] = b.Bytes()
	})
	return files, err
}

// WriteDocs writes the reference into dir, replacing the markdown files there.
func WriteDocs(dir string) error {
	files, err := Docs()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	old, _ := filepath.Glob(filepath.Join(dir, "*.md"))
	for _, f := range old {
		if err := os.Remove(f); err != nil {
			return err
		}
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return fmt.Errorf("writing the reference: %w", err)
		}
	}
	return nil
}

func walk(c *cobra.Command, fn func(*cobra.Command)) {
	fn(c)
	for _, sub := range c.Commands() {
		walk(sub, fn)
	}
}
