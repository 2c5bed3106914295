// Command kubeletschema writes the JSON shape of k8s.io/kubelet's
// KubeletConfiguration (package kubelet/configschema) to kubelet/configschema.json.
// Run by `go generate ./kubelet` after a k8s.io/kubelet upgrade; the kubelet
// package's tests fail while the file is stale.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/nodeagent/nodeagent/kubelet/configschema/gen"
)

func main() {
	out := flag.String("o", "configschema.json", "file to write")
	flag.Parse()
	b, err := gen.Generate()
	if err == nil {
		err = os.WriteFile(*out, b, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubeletschema:", err)
		os.Exit(1)
	}
}
