package host

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"

	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// refusal is one runtime change the kernel refused during this boot.
type refusal struct {
	Kind   string `json:"kind"`
	Target string `json:"target"`
	Want   string `json:"want,omitempty"`
	// Warning is the sentence shown in status, with the kernel's own error text.
	Warning string `json:"warning"`
}

func (r refusal) key() string { return r.Kind + "\x00" + r.Target + "\x00" + r.Want }

// refusals is the record in RefusalsFile. It is tied to the boot it was made in:
// a reboot may bring a kernel that can do what this one could not, and /run does
// not survive it anyway; the boot id guards a Root where /run is not a tmpfs.
type refusals struct {
	BootID  string    `json:"bootID"`
	Refused []refusal `json:"refused"`
}

func bootID(root fsutil.Root) string {
	b, err := os.ReadFile(root.Path("/proc/sys/kernel/random/boot_id"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func loadRefusals(root fsutil.Root) (map[string]refusal, error) {
	out := map[string]refusal{}
	p := root.Path(RefusalsFile)
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	var r refusals
	if err := json.Unmarshal(b, &r); err != nil || r.BootID != bootID(root) {
		// A corrupt or stale record only costs one more attempt at the changes.
		return out, nil
	}
	for _, x := range r.Refused {
		out[x.key()] = x
	}
	return out, nil
}

func saveRefusals(root fsutil.Root, m map[string]refusal) error {
	p := root.Path(RefusalsFile)
	if len(m) == 0 {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", p, err)
		}
		return nil
	}
	r := refusals{BootID: bootID(root)}
	for _, x := range m {
		r.Refused = append(r.Refused, x)
	}
	slices.SortFunc(r.Refused, func(a, b refusal) int { return strings.Compare(a.key(), b.key()) })
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode refusals: %w", err)
	}
	_, err = fsutil.WriteFileIfChanged(p, append(b, '\n'), 0o644)
	return err
}
