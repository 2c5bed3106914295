// Command nodeagent turns an EC2 instance into a Kubernetes node. This file only
// wires the process to the command tree in package cli; see DESIGN.md for the
// command contract and docs/cli/ for the reference.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/nodeagent/nodeagent/cmd/nodeagent/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Execute(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
