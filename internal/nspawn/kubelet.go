package nspawn

// KubeletOverrides returns the KubeletConfiguration (kubelet.config.k8s.io/v1beta1)
// fields a kubelet needs to run inside a machine made by Boot, on top of what a
// real node uses. End-to-end tests pass them as NodeConfig spec.kubelet.config.
// Each entry says why a container differs from an instance; see README.md.
func KubeletOverrides() map[string]any {
	return map[string]any{
		// The machine shares the host's kernel, and with it the host's swap.
		"failSwapOn": false,
	}
}

// KubeletSysctls are the kernel settings kubelet checks at start and, unless
// protectKernelDefaults is set, writes when they differ; a failed write stops
// its container manager. In a machine they are shown with these values
// (Options.Sysctls) so that the host's kernel is left alone.
func KubeletSysctls() map[string]string {
	return map[string]string{
		"vm.overcommit_memory":      "1",
		"vm.panic_on_oom":           "0",
		"kernel.panic":              "10",
		"kernel.panic_on_oops":      "1",
		"kernel.keys.root_maxkeys":  "1000000",
		"kernel.keys.root_maxbytes": "25000000",
	}
}
