package main

import (
	"debug/elf"
	"fmt"
	"os"

	"github.com/nodeagent/nodeagent/internal/imagearchive"
)

// sbinPath is kube-proxy's PATH: iptables and conntrack live in /usr/sbin.
const sbinPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// base are the files every image holds: users and groups for tools that look
// root up by name, name-service order for Go's resolver, and a /tmp.
func base() []imagearchive.File {
	return []imagearchive.File{
		imagearchive.Bytes("/etc/passwd", []byte("root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"), 0o644),
		imagearchive.Bytes("/etc/group", []byte("root:x:0:\nnogroup:x:65534:\n"), 0o644),
		imagearchive.Bytes("/etc/nsswitch.conf", []byte("hosts: files dns\n"), 0o644),
		imagearchive.Dir("/tmp", 0o777|os.ModeSticky),
	}
}

// staticBinary checks that a file is an executable with no dynamic loader: an
// image holding only it would otherwise fail to start with a baffling
// "no such file or directory".
func staticBinary(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", path)
	}
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: not an ELF executable: %w", path, err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("%s is built for %v, images are linux/amd64", path, f.Machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked: build it with CGO_ENABLED=0", path)
		}
	}
	return nil
}

// binaryImage is an image running one static binary installed at dir/name,
// with Entrypoint set to it (a pod's command overrides it).
func binaryImage(ref, bin, dir, name string, extra ...imagearchive.File) (imagearchive.Image, error) {
	if err := staticBinary(bin); err != nil {
		return imagearchive.Image{}, fmt.Errorf("image %s: %w", ref, err)
	}
	at := dir + "/" + name
	return imagearchive.Image{
		Refs:   []string{ref},
		Files:  append(append(base(), imagearchive.HostFile(bin, at, 0o755)), extra...),
		Config: imagearchive.Config{Entrypoint: []string{at}},
		Gzip:   true,
	}, nil
}

// pauseImage is registry.k8s.io/pause: the pause binary at /pause.
func pauseImage(ref, bin string) (imagearchive.Image, error) {
	return binaryImage(ref, bin, "", "pause")
}

// helloImage is the test pod image: the hello server at /usr/local/bin/hello,
// answering on :8080.
func helloImage(ref, bin string) (imagearchive.Image, error) {
	return binaryImage(ref, bin, "/usr/local/bin", "hello")
}

// componentImage is a control-plane or etcd image: the binary at
// /usr/local/bin/<name>, so that a static pod's `command: [name, …]` resolves
// through PATH.
func componentImage(ref, bin, name string) (imagearchive.Image, error) {
	return binaryImage(ref, bin, "/usr/local/bin", name)
}

// etcdImage is etcd and, beside it as in etcd's release images, etcdutl of the
// same version: nodeagent runs the image's etcdutl to check snapshots and to
// restore them.
func etcdImage(ref, etcd, etcdutl string) (imagearchive.Image, error) {
	if err := staticBinary(etcdutl); err != nil {
		return imagearchive.Image{}, fmt.Errorf("image %s: %w", ref, err)
	}
	return binaryImage(ref, etcd, "/usr/local/bin", "etcd", imagearchive.HostFile(etcdutl, "/usr/local/bin/etcdutl", 0o755))
}

// kubeProxyImage is kube-proxy plus the netfilter tools it runs in iptables mode.
func kubeProxyImage(ref, bin string) (imagearchive.Image, error) {
	tools, err := netfilterTools()
	if err != nil {
		return imagearchive.Image{}, fmt.Errorf("image %s: %w", ref, err)
	}
	img, err := binaryImage(ref, bin, "/usr/local/bin", "kube-proxy", tools...)
	if err != nil {
		return img, err
	}
	img.Config.Env = []string{"PATH=" + sbinPath}
	if _, err := os.Stat("/etc/protocols"); err == nil {
		// Protocol names in rules (-p tcp) resolve here first; iptables has a
		// built-in fallback for the common ones.
		img.Files = append(img.Files, imagearchive.HostFile("/etc/protocols", "/etc/protocols", 0o644))
	}
	return img, nil
}
