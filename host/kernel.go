package host

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// kernel is the running kernel's side of host preparation: the calls that have no
// file to write under Root. Sysctls are not here because /proc/sys is a file
// system and goes through Root like every other path.
type kernel interface {
	LoadModule(ctx context.Context, name string) error
	Swapoff(path string) error
	Hostname() (string, error)
	Sethostname(name string) error
}

// liveKernel is the kernel the agent runs on; used only when Root is "/".
type liveKernel struct{}

// LoadModule runs modprobe rather than finit_module(2) so that dependencies,
// aliases and /etc/modprobe.d options are honoured exactly as at boot.
func (liveKernel) LoadModule(ctx context.Context, name string) error {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "modprobe", "--", name)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if msg := strings.TrimSpace(out.String()); msg != "" {
			return errors.New(firstLine(msg))
		}
		return fmt.Errorf("modprobe: %w", err)
	}
	return nil
}

// Swapoff calls swapoff(2) directly: x/sys has no wrapper for it.
func (liveKernel) Swapoff(path string) error {
	p, err := unix.BytePtrFromString(path)
	if err != nil {
		return err
	}
	if _, _, errno := unix.Syscall(unix.SYS_SWAPOFF, uintptr(unsafe.Pointer(p)), 0, 0); errno != 0 {
		return errno
	}
	return nil
}

func (liveKernel) Hostname() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", err
	}
	return unix.ByteSliceToString(u.Nodename[:]), nil
}

func (liveKernel) Sethostname(name string) error { return unix.Sethostname([]byte(name)) }

// detachedKernel stands for the kernel when Root is a directory: that directory is
// not the running system, so its modules, swap and name are not the kernel's to
// change. Refusing (rather than doing nothing quietly) makes the phase say so.
type detachedKernel struct{ root string }

func (k detachedKernel) refuse() error {
	return fmt.Errorf("root %s is not the running system, its kernel is left alone", k.root)
}

func (k detachedKernel) LoadModule(context.Context, string) error { return k.refuse() }
func (k detachedKernel) Swapoff(string) error                     { return k.refuse() }
func (k detachedKernel) Hostname() (string, error)                { return "", k.refuse() }
func (k detachedKernel) Sethostname(string) error                 { return k.refuse() }

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
