package agent

import (
	"log/slog"
	"os"
	"runtime/debug"

	"github.com/nodeagent/nodeagent/internal/workingset"
)

// daemonGCPercent is the daemon's GOGC: a long-lived process that idles between
// reconciles and whose live heap is a few MiB trades a little CPU per
// reconcile for a heap that grows to 1.5× the live one instead of 2×. A GOGC
// in the environment (nodeagent.service's drop-ins) wins.
const daemonGCPercent = 50

// leanDaemonHeap applies daemonGCPercent unless GOGC is set.
func leanDaemonHeap() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(daemonGCPercent)
	}
}

// oneShotGCPercent is `nodeagent bootstrap`'s GOGC. The command lives for
// less than a second when the node is converged (a few seconds on a first
// boot) and its live heap is a few MiB: at the default 100 it collects several
// times for nothing, a tenth of a no-op run's CPU. At 400 its heap may grow to
// five times the live one before a collection, a few MiB more at its peak, for
// a process that then exits. A GOGC in the environment wins.
const oneShotGCPercent = 400

// leanOneShotCPU applies oneShotGCPercent unless GOGC is set.
func leanOneShotCPU() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(oneShotGCPercent)
	}
}

// releaseMemory hands the memory a reconcile used and freed (hashing, parsing,
// API answers) back to the OS at once, rather than when the runtime's
// background scavenger gets to it: the daemon then idles at its live heap.
// Once a reconcile (a minute by default), it costs one collection of a small heap.
func releaseMemory() { debug.FreeOSMemory() }

// trimStartupPages drops the pages of the binary that the daemon's start
// mapped (every package's init, the config's parsing, the phases' set-up) and
// has the kernel map its code page by page from then on (internal/workingset):
// the daemon then idles with the part of its binary that its loops run. A
// failure costs memory, not function: it is logged and the daemon goes on.
func trimStartupPages(log *slog.Logger) {
	res, err := workingset.Trim()
	if err != nil {
		log.Warn("could not trim the start-up's pages of the binary; the daemon keeps them mapped", "err", err)
		return
	}
	log.Debug("trimmed the start-up's pages of the binary",
		"mappings", len(res.Mappings), "resident_before_kib", res.ResidentBefore>>10, "resident_after_kib", res.ResidentAfter>>10)
}
