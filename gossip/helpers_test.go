package gossip

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"
)

// TestMain runs one netns agent instead of the tests when TestNetns re-executes
// the test binary inside a network namespace.
func TestMain(m *testing.M) {
	if os.Getenv(childMarker) != "" {
		if err := runNetnsChild(); err != nil {
			fmt.Fprintln(os.Stderr, "netns child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

var verbose = flag.Bool("gossip.log", false, "print the agents' logs")

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testLogger sends an agent's log to the test log when -gossip.log is set.
func testLogger(t testing.TB, node string) *slog.Logger {
	if !*verbose {
		return discardLogger()
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", node)
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }
