package awsemu

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// xenFamilies are the instance families that run on the Xen hypervisor and name
// EBS volumes /dev/xvdX; every other family is Nitro and exposes NVMe devices.
var xenFamilies = map[string]bool{
	"t1": true, "t2": true, "m1": true, "m2": true, "m3": true, "m4": true,
	"c1": true, "c3": true, "c4": true, "r3": true, "r4": true, "i2": true, "i3": true,
	"d2": true, "g2": true, "g3": true, "p2": true, "p3": true, "x1": true, "x1e": true,
	"h1": true, "f1": true, "cc2": true, "cr1": true, "hs1": true,
}

// IsNitro reports whether an instance type exposes EBS volumes as NVMe devices.
func IsNitro(instanceType string) bool {
	family, size, _ := strings.Cut(instanceType, ".")
	if size == "metal" || strings.HasSuffix(size, ".metal") {
		return true
	}
	return !xenFamilies[family]
}

// DevicePath is where a volume attached at device shows up on an instance, below
// devRoot: the NVMe by-id link on Nitro, /dev/xvdX on Xen.
func DevicePath(devRoot, instanceType, volumeID, device string) string {
	if devRoot == "" {
		devRoot = "/"
	}
	if IsNitro(instanceType) {
		return filepath.Join(devRoot, "dev", "disk", "by-id", "nvme-Amazon_Elastic_Block_Store_"+strings.ReplaceAll(volumeID, "-", ""))
	}
	return filepath.Join(devRoot, "dev", xenName(device))
}

// xenName maps an attach name to the Xen kernel's name: /dev/sdf -> xvdf.
func xenName(device string) string {
	d := strings.TrimPrefix(device, "/dev/")
	if rest, ok := strings.CutPrefix(d, "sd"); ok {
		return "xvd" + rest
	}
	return d
}

// materialize turns an attaching volume into an attached one: a loop device over
// its backing file and the link the instance would see. Called with e.mu held.
func (e *Emulator) materialize(v *volume) error {
	a := v.att
	in, ok := e.instances[a.instanceID]
	if !ok {
		return fmt.Errorf("attach %s: instance %s vanished", v.ID, a.instanceID)
	}
	if err := ensureBackingFile(v.file, v.sizeBytes()); err != nil {
		return fmt.Errorf("attach %s: %w", v.ID, err)
	}
	loop, err := attachLoop(v.file)
	if err != nil {
		return fmt.Errorf("attach %s: %w", v.ID, err)
	}
	link := DevicePath(in.DevRoot, in.Type, v.ID, a.device)
	if err := e.devices.Link(in.ID, loop, link); err != nil {
		if derr := detachLoop(loop, v.file); derr != nil {
			e.log.Error("undo loop device", "volume", v.ID, "loop", loop, "err", derr)
		}
		return fmt.Errorf("attach %s: %w", v.ID, err)
	}
	a.loop, a.link, a.attached = loop, link, true
	e.log.Info("volume attached", "volume", v.ID, "instance", in.ID, "loop", loop, "link", link)
	return nil
}

// detachLocked ends an attachment now; called with e.mu held.
func (e *Emulator) detachLocked(v *volume) {
	if err := e.teardown(v.att); err != nil {
		e.log.Error("detach: device cleanup", "volume", v.ID, "err", err)
	}
	e.log.Info("volume detached", "volume", v.ID, "instance", v.att.instanceID)
	v.att = nil
	v.State = "available"
}

// teardown removes an attachment's link and loop device; the volume's backing
// file (and so its data) stays.
func (e *Emulator) teardown(a *attachment) error {
	if a.timer != nil {
		a.timer.Stop()
	}
	var errs []error
	if a.link != "" {
		if err := e.devices.Unlink(a.instanceID, a.loop, a.link); err != nil {
			errs = append(errs, err)
		}
		a.link = ""
	}
	if a.loop != "" {
		var file string
		for _, v := range e.volumes {
			if v.att == a {
				file = v.file
			}
		}
		if err := detachLoop(a.loop, file); err != nil {
			errs = append(errs, err)
		}
		a.loop = ""
	}
	a.attached = false
	return errors.Join(errs...)
}

// ensureBackingFile creates (or grows) a sparse file; existing data is kept so a
// volume's filesystem survives an emulator restart.
func ensureBackingFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("backing file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("backing file: %w", err)
	}
	if fi.Size() < size {
		if err := f.Truncate(size); err != nil {
			return fmt.Errorf("backing file %s: grow to %d bytes: %w", path, size, err)
		}
	}
	return nil
}

// replaceSymlink points link at target atomically (temp link + rename), so a
// reader never sees a missing or half-made link.
func replaceSymlink(target, link string) error {
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		return fmt.Errorf("link %s: %w", link, err)
	}
	if fi, err := os.Lstat(link); err == nil && fi.Mode()&fs.ModeSymlink == 0 {
		return fmt.Errorf("link %s: a non-link file is in the way", link)
	}
	tmp := link + ".awsemu-tmp"
	_ = os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("link %s: %w", link, err)
	}
	if err := os.Rename(tmp, link); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("link %s: %w", link, err)
	}
	return nil
}

// RestoreVolume puts file, a copy of an attached volume's backing file taken
// at a power cut, in place of its data, as the device holds it after the
// power comes back: the loop device over the old data goes (writes it still
// held never reach file) and a new one over file is shown to the instance at
// the same link. The attachment stays as it was: no EC2 call is recorded.
func (e *Emulator) RestoreVolume(id, file string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	v, ok := e.volumes[id]
	if !ok {
		return fmt.Errorf("restore %s: no such volume", id)
	}
	if v.att == nil || !v.att.attached {
		return fmt.Errorf("restore %s: not attached", id)
	}
	if err := e.teardown(v.att); err != nil {
		return fmt.Errorf("restore %s: %w", id, err)
	}
	if err := os.Rename(file, v.file); err != nil {
		return fmt.Errorf("restore %s: %w", id, err)
	}
	return e.materialize(v)
}
