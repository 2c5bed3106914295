// Command awsemu serves the wire-level AWS emulator: EC2, S3 and Auto Scaling on
// one endpoint and one IMDSv2 endpoint per instance, for the end-to-end tests and
// `make demo`. Point the SDK at it with AWS_ENDPOINT_URL and
// AWS_EC2_METADATA_SERVICE_ENDPOINT.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nodeagent/nodeagent/awsemu"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "awsemu:", err)
		os.Exit(1)
	}
}

type server struct {
	name string
	ln   net.Listener
	srv  *http.Server
}

func run(args []string) error {
	fs := flag.NewFlagSet("awsemu", flag.ContinueOnError)
	worldPath := fs.String("world", "", "world file (YAML or JSON); empty starts an empty account")
	listen := fs.String("listen", "127.0.0.1:4566", "address of the EC2/S3/Auto Scaling endpoint")
	imdsFlag := fs.String("imds", "", "comma-separated instance=address pairs, one IMDS endpoint each (i-abc=127.0.0.1:8101)")
	volumeDir := fs.String("volume-dir", "", "directory of volume backing files (kept across runs); empty uses a temporary one")
	admin := fs.String("admin", "", "address of the control API (state, faults, instance states); loopback only; empty disables it")
	seed := fs.Int64("seed", 1, "seed of the fault-injection RNG")
	logFormat := fs.String("log-format", "text", "text or json")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	hopts := &slog.HandlerOptions{Level: level}
	var log *slog.Logger
	switch *logFormat {
	case "text":
		log = slog.New(slog.NewTextHandler(os.Stderr, hopts))
	case "json":
		log = slog.New(slog.NewJSONHandler(os.Stderr, hopts))
	default:
		return fmt.Errorf("--log-format %q: want text or json", *logFormat)
	}

	imds, err := parseIMDS(*imdsFlag)
	if err != nil {
		return err
	}
	w := &awsemu.World{}
	if *worldPath != "" {
		if w, err = awsemu.LoadWorld(*worldPath); err != nil {
			return err
		}
	}
	emu, err := awsemu.New(w, awsemu.Options{VolumeDir: *volumeDir, Log: log, Seed: *seed})
	if err != nil {
		return err
	}
	defer func() {
		if err := emu.Close(); err != nil {
			log.Error("close emulator", "err", err)
		}
	}()

	servers := []server{{name: "aws", srv: &http.Server{Handler: emu.Handler(), ReadHeaderTimeout: 10 * time.Second}}}
	addrs := []string{*listen}
	for _, p := range imds {
		servers = append(servers, server{name: "imds " + p[0], srv: &http.Server{Handler: emu.IMDSHandler(p[0]), ReadHeaderTimeout: 10 * time.Second}})
		addrs = append(addrs, p[1])
	}
	if *admin != "" {
		servers = append(servers, server{name: "admin", srv: &http.Server{Handler: emu.AdminHandler(), ReadHeaderTimeout: 10 * time.Second}})
		addrs = append(addrs, *admin)
	}
	for i := range servers {
		ln, err := net.Listen("tcp", addrs[i])
		if err != nil {
			for _, s := range servers[:i] {
				s.ln.Close()
			}
			return fmt.Errorf("listen %s (%s): %w", addrs[i], servers[i].name, err)
		}
		servers[i].ln = ln
	}
	errc := make(chan error, len(servers))
	for _, s := range servers {
		log.Info("serving", "endpoint", s.name, "addr", s.ln.Addr().String())
		go func() {
			if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("%s: %w", s.name, err)
			}
		}()
	}
	fmt.Println("awsemu ready")

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case runErr = <-errc:
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range servers {
		if err := s.srv.Shutdown(shutdownCtx); err != nil {
			log.Warn("shutdown", "endpoint", s.name, "err", err)
		}
	}
	return runErr
}

// parseIMDS reads "i-abc=127.0.0.1:8101,i-def=127.0.0.1:8102".
func parseIMDS(s string) ([][2]string, error) {
	var out [][2]string
	seen := map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		id, addr, ok := strings.Cut(part, "=")
		if !ok || id == "" || addr == "" {
			return nil, fmt.Errorf("--imds %q: want instance-id=host:port", part)
		}
		if seen[id] {
			return nil, fmt.Errorf("--imds: %s given twice", id)
		}
		seen[id] = true
		out = append(out, [2]string{id, addr})
	}
	return out, nil
}
