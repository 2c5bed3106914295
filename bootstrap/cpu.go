package bootstrap

import (
	"syscall"
	"time"
)

// processCPU is the user and system time of this process and of the children it
// waited for (ctr, mkfs, ...): a phase's CPU cost is the difference across it,
// logged with its duration ("phase done ... cpu=").
func processCPU() time.Duration {
	var total time.Duration
	for _, who := range []int{syscall.RUSAGE_SELF, syscall.RUSAGE_CHILDREN} {
		var ru syscall.Rusage
		if syscall.Getrusage(who, &ru) == nil {
			total += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
	}
	return total
}
