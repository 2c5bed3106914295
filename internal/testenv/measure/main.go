// Command measure runs a program and writes, as JSON to the file named by its
// first argument, what that program alone cost: its wall time from fork to
// exit, its user and system CPU time and its peak resident set (wait4's
// rusage, which counts the program and the children it waited for). The
// program's exit status is measure's own.
//
// testenv.RunMeasured runs it inside a node, so that a figure is the agent's
// own and not the cost of entering the machine (nsenter forks twice and
// joins seven namespaces: ~13–19 ms wall and ~10 ms CPU here, as much as a
// tenth of a converged run). Usage: measure OUT.json PROGRAM [ARGS...]
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Report is what measure writes.
type Report struct {
	WallNanos   int64 `json:"wallNanos"`
	UserMicros  int64 `json:"userMicros"`
	SystemMicro int64 `json:"systemMicros"`
	MaxRSSKiB   int64 `json:"maxRSSKiB"`
	ExitCode    int   `json:"exitCode"`
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: measure OUT.json PROGRAM [ARGS...]")
		os.Exit(2)
	}
	out, argv := os.Args[1], os.Args[2:]
	bin, err := exec.LookPath(argv[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, "measure:", err)
		os.Exit(127)
	}
	start := time.Now()
	pid, err := syscall.ForkExec(bin, argv, &syscall.ProcAttr{Env: os.Environ(), Files: []uintptr{0, 1, 2}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "measure:", err)
		os.Exit(127)
	}
	var ws syscall.WaitStatus
	var ru syscall.Rusage
	for {
		_, err = syscall.Wait4(pid, &ws, 0, &ru)
		if err != syscall.EINTR {
			break
		}
	}
	wall := time.Since(start)
	if err != nil {
		fmt.Fprintln(os.Stderr, "measure: wait:", err)
		os.Exit(127)
	}
	r := Report{WallNanos: wall.Nanoseconds(), UserMicros: ru.Utime.Nano() / 1e3, SystemMicro: ru.Stime.Nano() / 1e3,
		MaxRSSKiB: ru.Maxrss, ExitCode: ws.ExitStatus()}
	if ws.Signaled() {
		r.ExitCode = 128 + int(ws.Signal())
	}
	b, err := json.Marshal(r)
	if err == nil {
		err = os.WriteFile(out, b, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "measure:", err)
		os.Exit(127)
	}
	os.Exit(r.ExitCode)
}
