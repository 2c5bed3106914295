// Command images builds the container image archives of the end-to-end tests, so
// that nodes run a real control plane with no registry: one deterministic OCI image
// layout tarball per image (pause, the hello test pod, etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler, kube-proxy with the host's iptables),
// which `ctr -n k8s.io images import FILE` loads, and images.json listing each
// archive's reference, file, SHA-256 and size for serving them as verified assets.
// A <file>.stamp fingerprints each archive's inputs, so a second run only checks.
//
//	go run ./hack/images -h
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/nodeagent/nodeagent/internal/imagearchive"
)

const cache = "/var/cache/nodeagent-e2e"

const usage = `Usage: go run ./hack/images [flags]

Builds the container image archives of the end-to-end tests: one OCI image layout
tarball per image, loadable with ` + "`ctr -n k8s.io images import FILE`" + ` (no registry).

  pause                    registry.k8s.io/pause:3.10   /pause (built from hack/images/pause)
  hello                    nodeagent.test/hello:1       /usr/local/bin/hello: answers its pod IP on :8080
  etcd                     registry.k8s.io/etcd:TAG     /usr/local/bin/etcd and etcdutl (from -etcd, -etcdutl)
  kube-apiserver,
  kube-controller-manager,
  kube-scheduler           registry.k8s.io/NAME:VERSION /usr/local/bin/NAME (from -k8s-dir)
  kube-proxy               the same, plus the host's iptables (nft), ip6tables and conntrack
                           with their libraries (apt-get install -y iptables conntrack)
  coredns                  registry.k8s.io/coredns/coredns:TAG  /coredns (from -coredns)
  dnsprobe                 nodeagent.test/dnsprobe:1    /usr/local/bin/dnsprobe: resolves names as a pod does

Writes into -out: NAME-TAG.tar, NAME-TAG.tar.stamp (fingerprint of the inputs: an
unchanged image is not rebuilt) and images.json, a list of {name, file, sha256, size}
with file relative to images.json. Binaries must be static linux/amd64.

Flags:
`

type options struct {
	out, k8sDir, k8sVersion, etcd, etcdutl, etcdTag, registry, pauseTag, helloRef string
	coredns, corednsTag, dnsprobeRef                                              string
	only                                                                          []string
	log                                                                           *slog.Logger
}

func main() {
	var o options
	var only string
	flag.StringVar(&o.out, "out", cache+"/images", "directory for the archives, their stamps and images.json")
	flag.StringVar(&o.k8sDir, "k8s-dir", cache+"/k8s-v1.34.4", "directory holding static kube-apiserver, kube-controller-manager, kube-scheduler and kube-proxy")
	flag.StringVar(&o.k8sVersion, "k8s-version", "v1.34.4", "tag of the Kubernetes images")
	flag.StringVar(&o.etcd, "etcd", cache+"/etcd-v3.5.35", "static etcd binary")
	flag.StringVar(&o.etcdutl, "etcdutl", cache+"/etcdutl-v3.5.35", "static etcdutl binary of the same etcd version (the agent runs it for snapshot checks and restores)")
	flag.StringVar(&o.etcdTag, "etcd-tag", "3.5.35-0", "tag of the etcd image")
	flag.StringVar(&o.registry, "registry", "registry.k8s.io", "registry part of the Kubernetes, etcd and pause references")
	flag.StringVar(&o.pauseTag, "pause-tag", "3.10", "tag of the pause image")
	flag.StringVar(&o.helloRef, "hello", "nodeagent.test/hello:1", "reference of the test pod image")
	flag.StringVar(&o.coredns, "coredns", cache+"/coredns-v1.15.0", "static coredns binary (hack/build-coredns.sh)")
	flag.StringVar(&o.corednsTag, "coredns-tag", "v1.15.0", "tag of the CoreDNS image")
	flag.StringVar(&o.dnsprobeRef, "dnsprobe", "nodeagent.test/dnsprobe:1", "reference of the DNS probe pod image")
	flag.StringVar(&only, "only", "", "comma-separated images to build (default all): "+strings.Join(imageNames, ","))
	flag.Usage = func() {
		fmt.Fprint(flag.CommandLine.Output(), usage)
		flag.PrintDefaults()
	}
	flag.Parse()
	if only != "" {
		o.only = strings.Split(only, ",")
	}
	o.log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

// imageNames are the -only names, in build order.
var imageNames = []string{"pause", "hello", "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "coredns", "dnsprobe"}

func run(ctx context.Context, o options, stdout io.Writer) error {
	want := imageNames
	if o.only != nil {
		for _, n := range o.only {
			if !slices.Contains(imageNames, n) {
				return fmt.Errorf("-only: unknown image %q (known: %s)", n, strings.Join(imageNames, ", "))
			}
		}
		want = o.only
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", o.out, err)
	}
	var built []entry
	var failed []string
	for _, name := range imageNames {
		if !slices.Contains(want, name) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		e, err := buildOne(ctx, o, name)
		if err != nil {
			o.log.Error("image not built", "image", name, "err", err)
			failed = append(failed, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		built = append(built, e)
	}
	index, err := updateIndex(o.out, built)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "IMAGE\tFILE\tSIZE\tSHA256\tSTATUS\n")
	for _, e := range built {
		fmt.Fprintf(tw, "%s\t%s\t%.1f MiB\t%s\t%s\n", e.Name, e.File, float64(e.Size)/(1<<20), e.SHA256[:16], e.status)
	}
	tw.Flush()
	fmt.Fprintf(stdout, "archives in %s; index %s\n", o.out, index)
	if len(failed) > 0 {
		return fmt.Errorf("%d image(s) not built:\n  %s", len(failed), strings.Join(failed, "\n  "))
	}
	return nil
}

// buildOne assembles one image from its inputs and writes its archive unless
// the stamp shows that the same inputs made the archive already there.
func buildOne(ctx context.Context, o options, name string) (entry, error) {
	ref, img, err := assemble(ctx, o, name)
	if err != nil {
		return entry{}, err
	}
	file, err := imagearchive.FileName(ref)
	if err != nil {
		return entry{}, err
	}
	return writeIfChanged(o.log, o.out, file, img)
}

// assemble returns the reference and the image of one -only name.
func assemble(ctx context.Context, o options, name string) (string, imagearchive.Image, error) {
	switch name {
	case "pause":
		ref := o.registry + "/pause:" + o.pauseTag
		bin, err := goBuild(ctx, o, "pause")
		if err != nil {
			return "", imagearchive.Image{}, err
		}
		img, err := pauseImage(ref, bin)
		return ref, img, err
	case "hello":
		bin, err := goBuild(ctx, o, "hello")
		if err != nil {
			return "", imagearchive.Image{}, err
		}
		img, err := helloImage(o.helloRef, bin)
		return o.helloRef, img, err
	case "dnsprobe":
		bin, err := goBuild(ctx, o, "dnsprobe")
		if err != nil {
			return "", imagearchive.Image{}, err
		}
		img, err := binaryImage(o.dnsprobeRef, bin, "/usr/local/bin", "dnsprobe")
		return o.dnsprobeRef, img, err
	case "coredns":
		ref := o.registry + "/coredns/coredns:" + o.corednsTag
		img, err := binaryImage(ref, o.coredns, "", "coredns")
		return ref, img, hint(err, "hack/build-coredns.sh builds it; or pass -coredns FILE")
	case "etcd":
		ref := o.registry + "/etcd:" + o.etcdTag
		img, err := etcdImage(ref, o.etcd, o.etcdutl)
		return ref, img, hint(err, "hack/build-etcd.sh builds etcd, ETCD_PROGRAM=etcdutl hack/build-etcd.sh etcdutl; or pass -etcd FILE -etcdutl FILE")
	}
	ref := o.registry + "/" + name + ":" + o.k8sVersion
	bin := filepath.Join(o.k8sDir, name)
	var img imagearchive.Image
	var err error
	if name == "kube-proxy" {
		img, err = kubeProxyImage(ref, bin)
	} else {
		img, err = componentImage(ref, bin, name)
	}
	return ref, img, hint(err, "hack/build-k8s.sh builds it; or pass -k8s-dir DIR")
}

// hint adds how to get a missing input to its error.
func hint(err error, how string) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w (%s)", err, how)
	}
	return err
}

// goBuild builds one of this tool's own programs (hack/images/<name>) static and
// reproducible (-trimpath, no build ID), so that an unchanged source gives an
// unchanged binary and the archive's stamp still matches.
func goBuild(ctx context.Context, o options, name string) (string, error) {
	bin := filepath.Join(o.out, ".bin", name)
	pkg := "github.com/nodeagent/nodeagent/hack/images/" + name
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", bin, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s (run this from the nodeagent module): %w\n%s", pkg, err, out)
	}
	return bin, nil
}
