package host

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/nodeagent/nodeagent/bootstrap"
)

// runtimeDiff is one way the running kernel differs from the desired state.
type runtimeDiff struct {
	refusal
	change bootstrap.Change
	apply  func(ctx context.Context) error
	// warn turns the kernel's error into the sentence shown in status.
	warn func(err error) string
}

// stage computes one kind of runtime difference. Stages run in order and each is
// computed afresh in Act, after the previous one was applied.
type stage func(d desired) ([]runtimeDiff, error)

func (p *PrepPhase) stages() []stage {
	return []stage{p.moduleDiffs, p.sysctlDiffs, p.swapDiffs, p.hostnameDiffs}
}

func (p *PrepPhase) moduleDiffs(d desired) ([]runtimeDiff, error) {
	have, err := readModules(p.o.Root)
	if err != nil {
		return nil, err
	}
	var out []runtimeDiff
	for _, m := range d.modules {
		if have.has(m) {
			continue
		}
		out = append(out, runtimeDiff{
			refusal: refusal{Kind: "module", Target: m},
			change:  bootstrap.Change{Kind: "module", Target: m, Action: "load"},
			apply: func(ctx context.Context) error {
				if err := p.kernel.LoadModule(ctx, m); err != nil {
					return err
				}
				// modprobe can succeed without loading anything (an "install
				// ... /bin/true" rule in modprobe.d); only the kernel's list counts.
				now, err := readModules(p.o.Root)
				if err != nil {
					return err
				}
				if !now.has(m) {
					return errors.New("modprobe succeeded but the module is not loaded (an install rule in modprobe.d?)")
				}
				return nil
			},
			warn: func(err error) string { return fmt.Sprintf("kernel refused module %s: %v", m, err) },
		})
	}
	return out, nil
}

func (p *PrepPhase) sysctlDiffs(d desired) ([]runtimeDiff, error) {
	var out []runtimeDiff
	for _, k := range slices.Sorted(maps.Keys(d.sysctls)) {
		want := normalizeSysctl(d.sysctls[k])
		have, ok, err := readSysctl(p.o.Root, k)
		if err != nil {
			return nil, err
		}
		if ok && have == want {
			continue
		}
		if !ok {
			have = "absent"
		}
		out = append(out, runtimeDiff{
			refusal: refusal{Kind: "sysctl", Target: k, Want: want},
			change:  bootstrap.Change{Kind: "sysctl", Target: k, Action: "apply", Detail: have + " -> " + want},
			apply:   func(context.Context) error { return writeSysctl(p.o.Root, k, want) },
			// writeSysctl's errors already name the key and the /proc/sys path.
			warn: func(err error) string { return err.Error() },
		})
	}
	return out, nil
}

func (p *PrepPhase) swapDiffs(desired) ([]runtimeDiff, error) {
	swaps, err := activeSwaps(p.o.Root)
	if err != nil {
		return nil, err
	}
	var out []runtimeDiff
	for _, s := range swaps {
		out = append(out, runtimeDiff{
			refusal: refusal{Kind: "swap", Target: s},
			change:  bootstrap.Change{Kind: "swap", Target: s, Action: "disable", Detail: "swapoff"},
			apply:   func(context.Context) error { return p.kernel.Swapoff(s) },
			warn:    func(err error) string { return fmt.Sprintf("kernel refused swapoff %s: %v", s, err) },
		})
	}
	return out, nil
}

func (p *PrepPhase) hostnameDiffs(d desired) ([]runtimeDiff, error) {
	if d.hostname == "" || !p.setHostname {
		return nil, nil
	}
	have, err := p.kernel.Hostname()
	if err != nil {
		return nil, fmt.Errorf("read host name: %w", err)
	}
	if have == d.hostname {
		return nil, nil
	}
	return []runtimeDiff{{
		refusal: refusal{Kind: "hostname", Target: "kernel", Want: d.hostname},
		change:  bootstrap.Change{Kind: "hostname", Target: d.hostname, Action: "apply", Detail: "was " + have},
		apply:   func(context.Context) error { return p.kernel.Sethostname(d.hostname) },
		warn:    func(err error) string { return fmt.Sprintf("kernel refused host name %s: %v", d.hostname, err) },
	}}, nil
}
