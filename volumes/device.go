package volumes

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// devicePaths are the host paths under which an attached volume can appear, most
// specific first. The Nitro by-id name carries the volume id itself; the Xen names
// come from this attachment's device name, which EC2 keeps unique per instance.
func devicePaths(volumeID, attachName string) []string {
	paths := []string{"/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_" + strings.ReplaceAll(volumeID, "-", "")}
	if attachName != "" {
		for _, n := range []string{attachName, xvdName(attachName)} {
			if !strings.HasPrefix(n, "/dev/") {
				n = "/dev/" + n
			}
			if !contains(paths, n) {
				paths = append(paths, n)
			}
		}
	}
	return paths
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// resolveDevice finds the block device of an attached volume now, or returns
// errNoDevice. Symlinks are followed from the Root-resolved path; an absolute
// target (by-id links point at ../../nvme1n1, test links at /dev/loopN) is a
// real host device.
func (p *ClaimPhase) resolveDevice(volumeID, attachName string) (string, error) {
	var tried []string
	for _, hp := range devicePaths(volumeID, attachName) {
		path := p.o.Root.Path(hp)
		tried = append(tried, path)
		real, err := filepath.EvalSymlinks(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("resolve %s: %w", path, err)
		}
		fi, err := os.Stat(real)
		if err != nil {
			return "", fmt.Errorf("resolve %s: %w", path, err)
		}
		if fi.Mode()&fs.ModeDevice == 0 || fi.Mode()&fs.ModeCharDevice != 0 {
			return "", fmt.Errorf("%s resolves to %s, which is not a block device", path, real)
		}
		if err := p.checkNVMeSerial(real, volumeID); err != nil {
			return "", fmt.Errorf("%s: %w", path, err)
		}
		return real, nil
	}
	return "", fmt.Errorf("%w: none of %s exists", errNoDevice, strings.Join(tried, ", "))
}

var errNoDevice = errors.New("device not present")

// waitDevice waits, with back-off bounded by DeviceTimeout, for the kernel (and
// udev, for the by-id link) to show the attached volume.
func (p *ClaimPhase) waitDevice(ctx context.Context, volumeID, attachName string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, p.o.DeviceTimeout)
	defer cancel()
	bo := p.poll.device.start()
	start := time.Now()
	for {
		dev, err := p.resolveDevice(volumeID, attachName)
		if err == nil {
			p.o.Log.Debug("device present", "volume", volumeID, "device", dev, "waited", time.Since(start).Round(time.Millisecond))
			return dev, nil
		}
		if !errors.Is(err, errNoDevice) {
			return "", fmt.Errorf("volume %s: %w", volumeID, err)
		}
		if serr := sleep(ctx, bo.next()); serr != nil {
			return "", fmt.Errorf("volume %s is attached as %s but no block device appeared within %s: %w", volumeID, attachName, p.o.DeviceTimeout, err)
		}
	}
}

// checkNVMeSerial proves an NVMe device is the volume: EBS puts the volume id
// (without its dash) in the controller's serial number. A Xen name or a stale link
// pointing at another NVMe disk is caught here, before anything reads or formats
// it. Devices without that sysfs entry (Xen, loop) pass: there is nothing to ask.
func (p *ClaimPhase) checkNVMeSerial(dev, volumeID string) error {
	name := filepath.Base(dev)
	if !strings.HasPrefix(name, "nvme") {
		return nil
	}
	b, err := os.ReadFile(p.o.Root.Path("/sys/class/block/" + name + "/device/serial"))
	if err != nil {
		return nil
	}
	serial := strings.TrimSpace(string(b))
	if want := strings.ReplaceAll(volumeID, "-", ""); serial != want {
		return fmt.Errorf("%s is EBS volume serial %q, not %s; refusing to use it", dev, serial, volumeID)
	}
	return nil
}
