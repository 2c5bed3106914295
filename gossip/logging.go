package gossip

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// logWriter turns memberlist's log lines ("[WARN] memberlist: text from=addr")
// into slog records, and notices the lines that mean a peer's key differs from
// ours: memberlist only logs those, so parsing its log is the one place to learn
// of them.
type logWriter struct {
	log      *slog.Logger
	onReject func(addr, reason string) // called for every rejected packet or stream

	// stopping turns memberlist's complaints about closed sockets during our own
	// shutdown into debug lines.
	stopping atomic.Bool

	mu     sync.Mutex
	quiet  map[string]time.Time // addr → when its key mismatch was last logged
	window time.Duration
}

func newLogWriter(log *slog.Logger, onReject func(addr, reason string)) *logWriter {
	return &logWriter{log: log, onReject: onReject, quiet: map[string]time.Time{}, window: time.Minute}
}

// keyMismatch holds memberlist's texts for traffic it could not authenticate.
var keyMismatch = []string{
	"no installed keys could decrypt the message",
	"encryption is configured but remote state is not encrypted",
	"remote state is encrypted and encryption is not configured",
	"message authentication failed",
}

func isKeyMismatch(s string) bool {
	s = strings.ToLower(s)
	for _, k := range keyMismatch {
		if strings.Contains(s, k) {
			return true
		}
	}
	return false
}

func (w *logWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimRight(p, "\n"), []byte("\n")) {
		w.line(string(line))
	}
	return len(p), nil
}

func (w *logWriter) line(s string) {
	level := slog.LevelInfo
	if i := strings.Index(s, "["); i >= 0 {
		if j := strings.Index(s[i:], "]"); j > 0 {
			switch s[i+1 : i+j] {
			case "DEBUG":
				level = slog.LevelDebug
			case "WARN":
				level = slog.LevelWarn
			case "ERR", "ERROR":
				level = slog.LevelError
			}
			s = strings.TrimSpace(s[i+j+1:])
		}
	}
	s = strings.TrimPrefix(s, "memberlist: ")
	var attrs []slog.Attr
	addr := ""
	if i := strings.LastIndex(s, " from="); i >= 0 {
		addr = s[i+len(" from="):]
		s = s[:i]
		attrs = append(attrs, slog.String("from", addr))
	}
	reason := ""
	switch {
	case isKeyMismatch(s):
		reason = "encryption key mismatch"
	case strings.Contains(s, "unacceptable label") && !strings.Contains(s, `label ""`):
		// An empty label is also what memberlist reports for a connection closed
		// before its first byte (a peer's dial that timed out after the kernel
		// accepted it), so only a named foreign label counts.
		reason = "cluster label mismatch (a node of another cluster)"
	}
	if reason != "" && addr != "" {
		// Lines without an address are our own failed joins, which joinSeeds
		// records with the seed's address.
		w.onReject(addr, reason)
		// A peer with the wrong key retries for ever; one line a minute per
		// address is enough to notice, the counter in Status has the rest.
		w.mu.Lock()
		last, seen := w.quiet[addr]
		now := time.Now()
		if seen && now.Sub(last) < w.window {
			w.mu.Unlock()
			return
		}
		w.quiet[addr] = now
		w.mu.Unlock()
		w.log.LogAttrs(context.Background(), slog.LevelWarn, "rejected gossip: "+reason,
			append(attrs, slog.String("detail", s))...)
		return
	}
	// joinSeeds logs one line per failed join attempt with every seed's error;
	// memberlist's per-seed line would repeat it.
	if strings.HasPrefix(s, "Failed to join") {
		level = slog.LevelDebug
	}
	if w.stopping.Load() && level > slog.LevelDebug {
		level = slog.LevelDebug
	}
	w.log.LogAttrs(context.Background(), level, s, attrs...)
}
