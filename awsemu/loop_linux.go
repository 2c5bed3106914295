//go:build linux

package awsemu

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// attachLoop binds a free loop device to file and returns its path (/dev/loopN).
// Other processes may grab the same free device at the same moment, so a busy
// device just means trying the next free one.
func attachLoop(file string) (string, error) {
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("loop device for %s: %w", file, err)
	}
	defer ctl.Close()
	backing, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("loop device for %s: %w", file, err)
	}
	defer backing.Close()

	var lastErr error
	for range 50 {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", fmt.Errorf("loop device for %s: LOOP_CTL_GET_FREE: %w", file, err)
		}
		dev := "/dev/loop" + strconv.Itoa(n)
		if err := ensureLoopNode(dev, n); err != nil {
			return "", fmt.Errorf("loop device for %s: %w", file, err)
		}
		err = configureLoop(dev, backing, file)
		if errors.Is(err, unix.EBUSY) {
			lastErr = err
			continue
		}
		if err != nil {
			return "", fmt.Errorf("loop device for %s: %s: %w", file, dev, err)
		}
		return dev, nil
	}
	return "", fmt.Errorf("loop device for %s: every free device was taken first: %w", file, lastErr)
}

func configureLoop(dev string, backing *os.File, name string) error {
	ld, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer ld.Close()
	var info unix.LoopInfo64
	copy(info.File_name[:len(info.File_name)-1], name)
	err = unix.IoctlLoopConfigure(int(ld.Fd()), &unix.LoopConfig{Fd: uint32(backing.Fd()), Info: info})
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOTTY) {
		return err
	}
	// Kernels before 5.8 lack LOOP_CONFIGURE.
	if err := unix.IoctlSetInt(int(ld.Fd()), unix.LOOP_SET_FD, int(backing.Fd())); err != nil {
		return err
	}
	if err := unix.IoctlLoopSetStatus64(int(ld.Fd()), &info); err != nil {
		_ = unix.IoctlSetInt(int(ld.Fd()), unix.LOOP_CLR_FD, 0)
		return fmt.Errorf("LOOP_SET_STATUS64: %w", err)
	}
	return nil
}

// ensureLoopNode makes /dev/loopN where no udev does (containers), using the
// device number the kernel publishes in sysfs.
func ensureLoopNode(dev string, n int) error {
	if _, err := os.Stat(dev); err == nil {
		return nil
	}
	b, err := os.ReadFile("/sys/block/loop" + strconv.Itoa(n) + "/dev")
	if err != nil {
		return fmt.Errorf("no %s and no sysfs entry: %w", dev, err)
	}
	majS, minS, ok := strings.Cut(strings.TrimSpace(string(b)), ":")
	maj, err1 := strconv.Atoi(majS)
	min, err2 := strconv.Atoi(minS)
	if !ok || err1 != nil || err2 != nil {
		return fmt.Errorf("unexpected device number %q for %s", b, dev)
	}
	if err := unix.Mknod(dev, unix.S_IFBLK|0o660, int(unix.Mkdev(uint32(maj), uint32(min)))); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("mknod %s: %w", dev, err)
	}
	return nil
}

// detachLoop releases dev if it still backs file; a device since freed or
// reused by someone else is left alone. When the device is still open (e.g.
// mounted) the kernel detaches it on last close.
func detachLoop(dev, file string) error {
	ld, err := os.OpenFile(dev, os.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("detach %s: %w", dev, err)
	}
	defer ld.Close()
	info, err := unix.IoctlLoopGetStatus64(int(ld.Fd()))
	if errors.Is(err, unix.ENXIO) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("detach %s: LOOP_GET_STATUS64: %w", dev, err)
	}
	if file != "" {
		fi, err := os.Stat(file)
		if err != nil {
			return fmt.Errorf("detach %s: %w", dev, err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if info.Inode != st.Ino || info.Device != uint64(st.Dev) {
			return nil
		}
	}
	if err := unix.IoctlSetInt(int(ld.Fd()), unix.LOOP_CLR_FD, 0); err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("detach %s: LOOP_CLR_FD: %w", dev, err)
	}
	return nil
}
