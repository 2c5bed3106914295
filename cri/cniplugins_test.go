package cri

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// debianCNIDir is where Debian's containernetworking-plugins installs them.
const debianCNIDir = "/usr/lib/cni"

// TestKubenetConflistWorksWithTheCNIPlugins does, with the real plugins, what
// the CRI plugin does with the conflist containerd renders from our template:
// each plugin of the list is run for ADD in turn (bridge then portmap) with the
// previous result, for a pod namespace, from a namespace standing in for the
// node, so the host's own network is never touched. The pod must come out with
// an address of the node's pod CIDR behind cbr0, its gateway.
func TestKubenetConflistWorksWithTheCNIPlugins(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test creates network namespaces and needs root")
	}
	for _, p := range []string{"bridge", "host-local", "portmap"} {
		if _, err := os.Stat(filepath.Join(debianCNIDir, p)); err != nil {
			t.Fatalf("CNI plugin %s is needed: apt-get install -y containernetworking-plugins iptables (%v)", p, err)
		}
	}
	for _, tool := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed: apt-get install -y iproute2 iptables (%v)", tool, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	rendered := renderKubenet(t, templateData{PodCIDR: "100.96.9.0/24", PodCIDRRanges: []string{"100.96.9.0/24"}, Routes: []string{"0.0.0.0/0"}})
	var list struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(rendered, &list); err != nil {
		t.Fatal(err)
	}

	suffix := make([]byte, 4)
	rand.Read(suffix)
	node, pod := "na-node-"+hex.EncodeToString(suffix), "na-pod-"+hex.EncodeToString(suffix)
	for _, ns := range []string{node, pod} {
		if out, err := exec.CommandContext(ctx, "ip", "netns", "add", ns).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
		}
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", ns).Run() })
	}
	ipamData := t.TempDir() // host-local's leases, instead of /var/lib/cni

	run := func(command string, conf map[string]any) []byte {
		t.Helper()
		stdin, err := json.Marshal(conf)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.CommandContext(ctx, "ip", "netns", "exec", node, filepath.Join(debianCNIDir, conf["type"].(string)))
		cmd.Env = append(os.Environ(), "CNI_COMMAND="+command, "CNI_CONTAINERID=kubenet-test", "CNI_NETNS=/run/netns/"+pod,
			"CNI_IFNAME=eth0", "CNI_PATH="+debianCNIDir)
		cmd.Stdin = bytes.NewReader(stdin)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s %s: %v\nstdin: %s\nstdout: %s\nstderr: %s", conf["type"], command, err, stdin, out, stderr.String())
		}
		return out
	}
	// confFor is one plugin's configuration as CNI loaders hand it over: the
	// list's name and version, the previous result, and the runtime values the
	// plugin's capabilities ask for.
	confFor := func(p map[string]any, prev json.RawMessage) map[string]any {
		c := map[string]any{"cniVersion": list.CNIVersion, "name": list.Name}
		for k, v := range p {
			c[k] = v
		}
		if ipam, ok := c["ipam"].(map[string]any); ok {
			ipam["dataDir"] = ipamData
		}
		if caps, _ := p["capabilities"].(map[string]any); caps["portMappings"] == true {
			c["runtimeConfig"] = map[string]any{"portMappings": []map[string]any{{"hostPort": 30080, "containerPort": 80, "protocol": "tcp"}}}
		}
		if prev != nil {
			c["prevResult"] = prev
		}
		return c
	}

	var prev json.RawMessage
	for _, p := range list.Plugins {
		prev = run("ADD", confFor(p, prev))
	}
	var result struct {
		IPs []struct {
			Address string `json:"address"`
			Gateway string `json:"gateway"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(prev, &result); err != nil || len(result.IPs) != 1 {
		t.Fatalf("result %s (%v)", prev, err)
	}
	if ip := result.IPs[0]; !strings.HasPrefix(ip.Address, "100.96.9.") || !strings.HasSuffix(ip.Address, "/24") || ip.Gateway != "100.96.9.1" {
		t.Errorf("pod address %s gateway %s, want one of 100.96.9.0/24 behind 100.96.9.1", ip.Address, ip.Gateway)
	}
	show := func(ns string, args ...string) string {
		out, err := exec.CommandContext(ctx, "ip", append([]string{"-n", ns}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
		return string(out)
	}
	if out := show(pod, "-4", "addr", "show", "eth0"); !strings.Contains(out, "inet "+result.IPs[0].Address) {
		t.Errorf("pod eth0:\n%s", out)
	}
	if out := show(pod, "-4", "route"); !strings.Contains(out, "default via 100.96.9.1") {
		t.Errorf("pod routes:\n%s", out)
	}
	if out := show(node, "-4", "addr", "show", "cbr0"); !strings.Contains(out, "inet 100.96.9.1/24") {
		t.Errorf("node cbr0:\n%s", out)
	}
	if out := show(node, "link", "show", "cbr0"); !strings.Contains(out, "UP") {
		t.Errorf("cbr0 is not up:\n%s", out)
	}

	// DEL in reverse order, as the runtime does when the pod goes.
	for i := len(list.Plugins) - 1; i >= 0; i-- {
		run("DEL", confFor(list.Plugins[i], prev))
	}
}
