package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/internal/containerdtest"
	"github.com/nodeagent/nodeagent/internal/imagearchive"
)

func TestLddOutputGivesEveryLibraryAndTheLoader(t *testing.T) {
	out := "/usr/sbin/a:\n" +
		"\tlinux-vdso.so.1 (0x00007ffd0)\n" +
		"\tlibxtables.so.12 => /lib/x86_64-linux-gnu/libxtables.so.12 (0x00007f79)\n" +
		"\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f79)\n" +
		"\t/lib64/ld-linux-x86-64.so.2 (0x00007f79)\n" +
		"/usr/lib/x.so:\n" +
		"\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f79)\n" +
		"/usr/sbin/static:\n" +
		"\tstatically linked\n"
	libs, err := parseLdd(out, true)
	want := []string{"/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/libxtables.so.12", "/lib64/ld-linux-x86-64.so.2"}
	if err != nil || strings.Join(libs, " ") != strings.Join(want, " ") {
		t.Errorf("parseLdd = %v, %v; want %v", libs, err, want)
	}

	_, err = parseLdd("/usr/sbin/a:\n\tlibnftnl.so.11 => not found\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n", true)
	if err == nil || !strings.Contains(err.Error(), "/usr/sbin/a needs libnftnl.so.11") {
		t.Errorf("a missing library gave %v, want an error naming the binary and the library", err)
	}
}

func TestADynamicBinaryIsRefusedForAnImage(t *testing.T) {
	_, err := componentImage("registry.k8s.io/x:1", "/usr/sbin/xtables-nft-multi", "x")
	if err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Errorf("componentImage of a dynamic binary = %v, want it refused as dynamically linked", err)
	}
	_, err = componentImage("registry.k8s.io/x:1", "/nonexistent/kube-x", "x")
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/kube-x") {
		t.Errorf("componentImage of a missing binary = %v, want an error naming it", err)
	}
}

func TestASecondRunKeepsUnchangedArchivesAndRebuildsChangedOnes(t *testing.T) {
	out := t.TempDir()
	o := options{out: out, registry: "registry.k8s.io", pauseTag: "3.10", helloRef: "nodeagent.test/hello:1",
		only: []string{"pause", "hello"}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	var first strings.Builder
	if err := run(context.Background(), o, &first); err != nil {
		t.Fatalf("first run: %v", err)
	}
	index := filepath.Join(out, IndexFile)
	before, _ := os.ReadFile(index)
	if strings.Count(first.String(), " built") != 2 {
		t.Errorf("first run:\n%s\nwant both images built", first.String())
	}

	var second strings.Builder
	if err := run(context.Background(), o, &second); err != nil {
		t.Fatalf("second run: %v", err)
	}
	after, _ := os.ReadFile(index)
	if strings.Count(second.String(), " unchanged") != 2 || string(before) != string(after) {
		t.Errorf("second run:\n%s\nwant both unchanged and the same %s", second.String(), IndexFile)
	}

	// A damaged archive is noticed and rebuilt; the index lists only what exists.
	if err := os.WriteFile(filepath.Join(out, "pause-3.10.tar"), []byte("junk"), 0o644); err != nil {
		t.Fatal(err)
	}
	o.only = []string{"pause"}
	var third strings.Builder
	if err := run(context.Background(), o, &third); err != nil {
		t.Fatalf("third run: %v", err)
	}
	if !strings.Contains(third.String(), " built") {
		t.Errorf("after the archive was damaged:\n%s\nwant pause rebuilt", third.String())
	}
	if final, _ := os.ReadFile(index); string(final) != string(before) {
		t.Errorf("%s after rebuilding pause only:\n%s\nwant it as before:\n%s", IndexFile, final, before)
	}
}

// writeImage writes img to a temporary archive and imports it.
func writeImage(t *testing.T, ctrd *containerdtest.Daemon, img imagearchive.Image, err error) string {
	t.Helper()
	if err != nil {
		t.Fatalf("assemble image: %v", err)
	}
	file := filepath.Join(t.TempDir(), "image.tar")
	if _, err := imagearchive.WriteFile(file, img); err != nil {
		t.Fatalf("WriteFile: %v", err)
	}
	ctrd.Import(t, file)
	return img.Refs[0]
}

// runUntilSIGTERM starts a container, waits for it to run and for ready (given
// the output so far) to hold, sends it SIGTERM and returns the error of `ctr run`
// (nil: exit status 0).
func runUntilSIGTERM(t *testing.T, ctrd *containerdtest.Daemon, ctrArgs []string, ref, id string, ready func(output string) error, args ...string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := ctrd.RunCommand(ctx, ctrArgs, ref, id, args...)
	// ctr writes straight into the file, which the test reads while it runs.
	log, err := os.Create(filepath.Join(t.TempDir(), "ctr-run.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	output := func() string {
		b, _ := os.ReadFile(log.Name())
		return string(b)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatalf("ctr run %s: %v", ref, err)
	}
	if err := ctrd.WaitTask(id, "RUNNING", time.Minute); err != nil {
		cmd.Process.Kill()
		t.Fatalf("%v\nctr run said: %s", err, output())
	}
	deadline := time.Now().Add(30 * time.Second)
	for err := ready(output()); err != nil; err = ready(output()) {
		if time.Now().After(deadline) {
			ctrd.Ctr(context.Background(), "tasks", "kill", "-s", "SIGKILL", id)
			cmd.Wait()
			t.Fatalf("%s not ready within 30s: %v\n%s", ref, err, output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := ctrd.Ctr(context.Background(), "tasks", "kill", "-s", "SIGTERM", id); err != nil {
		t.Fatalf("ctr tasks kill: %v\n%s", err, out)
	}
	err = cmd.Wait()
	if err != nil {
		t.Logf("ctr run %s said: %s", ref, output())
	}
	return err
}

func TestTheImagesRunInContainerd(t *testing.T) {
	ctrd := containerdtest.Paths(t)
	ctrd.Start(t, ctrd.MinimalConfig())
	o := options{out: t.TempDir()}
	pause, err := goBuild(context.Background(), o, "pause")
	if err != nil {
		t.Fatal(err)
	}
	hello, err := goBuild(context.Background(), o, "hello")
	if err != nil {
		t.Fatal(err)
	}

	t.Run("pause blocks until SIGTERM and exits 0", func(t *testing.T) {
		img, err := pauseImage("registry.k8s.io/pause:3.10", pause)
		ref := writeImage(t, ctrd, img, err)
		// Its line on stderr says its handlers are in place: a SIGTERM before
		// that would test nothing.
		ready := func(output string) error {
			if !strings.Contains(output, "pause: waiting") {
				return fmt.Errorf("pause has not said it is waiting (output %q)", output)
			}
			return nil
		}
		if err := runUntilSIGTERM(t, ctrd, nil, ref, "pause", ready); err != nil {
			t.Errorf("pause ended with %v after SIGTERM, want exit status 0", err)
		}
	})

	t.Run("hello answers the address it was reached on", func(t *testing.T) {
		img, err := helloImage("nodeagent.test/hello:1", hello)
		ref := writeImage(t, ctrd, img, err)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		var answer string
		ready := func(string) error {
			resp, err := http.Get("http://" + addr + "/")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			answer = string(b)
			return err
		}
		err = runUntilSIGTERM(t, ctrd, []string{"--net-host"}, ref, "hello", ready, "/usr/local/bin/hello", "-listen", addr)
		if err != nil {
			t.Errorf("hello ended with %v after SIGTERM, want exit status 0", err)
		}
		if answer != "127.0.0.1\n" {
			t.Errorf("hello answered %q, want its address 127.0.0.1", answer)
		}
	})

	t.Run("kube-proxy's iptables, ip6tables and conntrack work in the image", func(t *testing.T) {
		// The hello binary stands in for kube-proxy: what is checked is the
		// netfilter tools the image carries beside it.
		img, err := kubeProxyImage("registry.k8s.io/kube-proxy:test", hello)
		if err == nil {
			img.Files = append(img.Files,
				imagearchive.Bytes("/rules.v4", []byte(kubeProxyLikeRules), 0o644),
				imagearchive.Bytes("/rules.v6", []byte(ip6Rules), 0o644))
		}
		ref := writeImage(t, ctrd, img, err)

		// The containers share one network namespace of the test's own, so what
		// one restores the next can save, and the host's rules are untouched.
		ns := fmt.Sprintf("imagestest-%d", os.Getpid())
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add: %v\n%s", err, out)
		}
		t.Cleanup(func() { exec.Command("ip", "netns", "delete", ns).Run() })
		ctrArgs := []string{"--privileged", "--with-ns", "network:/run/netns/" + ns}
		n := 0
		in := func(args ...string) string {
			t.Helper()
			n++
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			// Bare names: found through the image's PATH, as kube-proxy finds them.
			out, err := ctrd.Run(ctx, ctrArgs, ref, fmt.Sprintf("kube-proxy-%d", n), args...)
			if err != nil {
				t.Fatalf("%s in the kube-proxy image: %v\n%s", strings.Join(args, " "), err, out)
			}
			return out
		}
		for cmd, want := range map[string]string{
			"iptables":         "(nf_tables)",
			"ip6tables":        "(nf_tables)",
			"iptables-save":    "(nf_tables)",
			"iptables-restore": "(nf_tables)",
			"conntrack":        "conntrack v",
		} {
			if out := in(cmd, "--version"); !strings.Contains(out, want) {
				t.Errorf("%s --version printed %q, want %q in it", cmd, out, want)
			}
		}
		in("iptables-restore", "/rules.v4")
		in("ip6tables-restore", "/rules.v6")
		saved := in("iptables-save")
		for _, want := range []string{
			`-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "test/svc:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-TEST`,
			"-m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-TEST",
			"-j DNAT --to-destination 10.0.0.5:8080",
			"-j MARK --set-xmark 0x4000/0x4000",
			"-j MASQUERADE --random-fully",
			"-m conntrack --ctstate INVALID -j DROP",
		} {
			if !strings.Contains(saved, want) {
				t.Errorf("iptables-save after iptables-restore lacks %q:\n%s", want, saved)
			}
		}
		if saved6 := in("ip6tables-save"); !strings.Contains(saved6, "-A KUBE-FIREWALL -m comment --comment ip6 -j DROP") {
			t.Errorf("ip6tables-save after ip6tables-restore:\n%s", saved6)
		}
	})
}

// kubeProxyLikeRules use the matches and targets kube-proxy's iptables mode
// writes, each loaded from an xtables extension.
const kubeProxyLikeRules = `*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-TEST - [0:0]
:KUBE-SEP-TEST - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "test/svc:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-TEST
-A KUBE-SVC-TEST -m comment --comment "test/svc:http -> 10.0.0.5:8080" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-TEST
-A KUBE-SEP-TEST -s 10.0.0.5/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-TEST -p tcp -m tcp -j DNAT --to-destination 10.0.0.5:8080
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -j MASQUERADE --random-fully
COMMIT
*filter
:KUBE-FORWARD - [0:0]
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
COMMIT
`

const ip6Rules = `*filter
:KUBE-FIREWALL - [0:0]
-A KUBE-FIREWALL -m comment --comment ip6 -j DROP
COMMIT
`
