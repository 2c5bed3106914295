// Package ringflags reads what the ring's test programs (ringnode, ringhost)
// take the same way: the ring key from a file and the level of their log.
package ringflags

import (
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"strings"
)

// ReadKey reads a ring key written in hex, as the benches write it.
func ReadKey(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	return key, nil
}

// Logger logs to stderr, in text, from level on (debug, info, warn or error).
func Logger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level: %w", err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}
