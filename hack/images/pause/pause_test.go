package main

import (
	"bufio"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// build compiles this program static, as hack/images does.
func build(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "pause")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// statusField reads one field of /proc/PID/status.
func statusField(pid int, field string) (string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", errors.New("no " + field + " in /proc/" + strconv.Itoa(pid) + "/status")
}

// start starts pause and waits for its line saying its handlers are in place:
// before that, a SIGTERM would kill it by the default action and prove nothing.
func start(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start pause: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stderr).ReadString('\n')
		ready <- line
		io.Copy(io.Discard, stderr)
	}()
	select {
	case line := <-ready:
		if !strings.HasPrefix(line, "pause: waiting") {
			t.Fatalf("pause's first line is %q, want it to say it waits for signals", line)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("pause did not say it was ready within 10s")
	}
}

// children lists the processes whose parent is pid, zombies included.
func children(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var kids []int
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, err := statusField(p, "PPid"); err == nil && ppid == strconv.Itoa(pid) {
			kids = append(kids, p)
		}
	}
	return kids
}

func waitExit(t *testing.T, cmd *exec.Cmd) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("pause did not exit within 10s of the signal")
		return nil
	}
}

func TestPauseBlocksUntilSIGTERMOrSIGINTAndThenExitsZero(t *testing.T) {
	bin := build(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		cmd := exec.Command(bin)
		start(t, cmd)
		// Blocking means asleep in the kernel, not spinning.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			state, err := statusField(cmd.Process.Pid, "State")
			if err == nil && strings.HasPrefix(state, "S") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("pause is %q (%v) 10s after start, want sleeping", state, err)
			}
		}
		cmd.Process.Signal(sig)
		if err := waitExit(t, cmd); err != nil {
			t.Errorf("after %v pause ended with %v, want exit status 0", sig, err)
		}
	}
}

func TestPauseAsPID1ReapsTheOrphansReparentedToIt(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatalf("this test starts pause in a new PID namespace: run it as root")
	}
	if _, err := exec.LookPath("nsenter"); err != nil {
		t.Fatalf("nsenter missing: apt-get install util-linux")
	}
	bin := build(t)
	cmd := exec.Command(bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	start(t, cmd)
	pid := cmd.Process.Pid
	if v, err := statusField(pid, "NSpid"); err != nil || !strings.HasSuffix(v, "\t1") {
		t.Fatalf("pause's NSpid is %q (%v), want it to be 1 in its namespace", v, err)
	}

	// A shell entering the namespace starts three short sleeps and exits: they
	// are orphaned and reparented to the namespace's PID 1, pause. (Their output
	// goes to /dev/null so that nsenter's pipe closes when the shell exits.)
	enter := exec.Command("nsenter", "--target", strconv.Itoa(pid), "--pid", "--",
		"/bin/sh", "-c", "for i in 1 2 3; do sleep 1 >/dev/null 2>&1 & done; exit 0")
	if out, err := enter.CombinedOutput(); err != nil {
		t.Fatalf("nsenter: %v\n%s", err, out)
	}
	if kids := children(pid); len(kids) != 3 {
		t.Fatalf("pause has children %v right after the shell exited, want the 3 orphaned sleeps", kids)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(children(pid)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("10s after the sleeps ended pause still has children %v: it does not reap", children(pid))
		}
		time.Sleep(20 * time.Millisecond)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	if err := waitExit(t, cmd); err != nil {
		t.Errorf("after SIGTERM pause (PID 1) ended with %v, want exit status 0", err)
	}
}
