package volumes

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Unmount unmounts an etcd volume's filesystem cleanly (its journal flushed,
// so the next attach needs no recovery), retrying while it is busy (a process
// still stopping) until ctx ends. A target that is not mounted is fine.
func Unmount(ctx context.Context, target string) error {
	unix.Sync()
	for {
		err := unix.Unmount(target, 0)
		switch {
		case err == nil, errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil
		case !errors.Is(err, unix.EBUSY):
			return fmt.Errorf("unmount %s: %w", target, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("unmount %s: still busy: %w", target, err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}
