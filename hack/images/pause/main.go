// Command pause is the pod sandbox process of the end-to-end images
// (registry.k8s.io/pause:3.10 as hack/images builds it): like Kubernetes' own
// pause it holds a pod's namespaces open by doing nothing. As PID 1 of a pod's PID
// namespace it reaps the zombies reparented to it on every SIGCHLD, and it exits 0
// on SIGINT or SIGTERM. Build it static: CGO_ENABLED=0.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "-v" || os.Args[1] == "--version") {
		fmt.Println("pause (nodeagent e2e)")
		return
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	reap() // children that died before the handler was installed
	// One line once the handlers are in place: a supervisor (or a test) knows that
	// from now on SIGTERM ends pause with 0 instead of killing it.
	fmt.Fprintln(os.Stderr, "pause: waiting for SIGINT or SIGTERM")
	for sig := range sigs {
		if sig == syscall.SIGCHLD {
			reap()
			continue
		}
		fmt.Fprintf(os.Stderr, "pause: shutting down, got %v\n", sig)
		os.Exit(0)
	}
}

// reap collects every child that has exited. Signals coalesce, so one SIGCHLD
// may stand for many children: loop until none is left to collect.
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil { // 0: children left, none exited; ECHILD: no children
			return
		}
	}
}
