package volumes

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// blkidOpinion asks `blkid -p` (low-level superblock probing, no cache) what is on
// dev. It is a second opinion on top of our own probe: the device is formatted only
// when both say blank. Without blkid there is no second opinion, and that is an
// error: nothing is formatted on one probe's word.
func blkidOpinion(ctx context.Context, dev string) (found string, err error) {
	bin, lerr := exec.LookPath("blkid")
	if lerr != nil {
		return "", fmt.Errorf("blkid is not installed (util-linux): %w", lerr)
	}
	cmd := exec.CommandContext(ctx, bin, "-p", "-o", "export", dev)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return summarizeBlkid(out.String()), nil
	case errors.As(err, &ee) && ee.ExitCode() == 2:
		// blkid's "nothing found".
		return "", nil
	case errors.As(err, &ee) && ee.ExitCode() == 8:
		return "several conflicting signatures (blkid: ambivalent probing result)", nil
	default:
		return "", fmt.Errorf("blkid -p %s: %w: %s", dev, err, strings.TrimSpace(stderr.String()))
	}
}

// summarizeBlkid keeps the identifying keys of blkid's export output.
func summarizeBlkid(export string) string {
	var parts []string
	for _, line := range strings.Split(export, "\n") {
		k, _, _ := strings.Cut(line, "=")
		switch k {
		case "TYPE", "PTTYPE", "USAGE":
			parts = append(parts, line)
		}
	}
	if len(parts) == 0 {
		return strings.TrimSpace(export)
	}
	return strings.Join(parts, " ")
}

// ensureBlank proves dev is blank by our probe and by blkid, or says why not.
// volumeID is only for messages.
func ensureBlank(ctx context.Context, volumeID, dev string) error {
	c, err := ProbeDevice(dev)
	if err != nil {
		return err
	}
	if c.Kind != Blank {
		return refuseFormat(volumeID, dev, c)
	}
	found, err := blkidOpinion(ctx, dev)
	if err != nil {
		return fmt.Errorf("%s (%s): cannot get a second opinion that the device is blank; refusing to format: %w", volumeID, dev, err)
	}
	if found != "" {
		return fmt.Errorf("%s (%s) reads as blank to our probe but blkid finds %s; refusing to format", volumeID, dev, found)
	}
	return nil
}

func refuseFormat(volumeID, dev string, c Content) error {
	if c.Kind == Unknown {
		return fmt.Errorf("%s (%s) holds unrecognised data; refusing to format (first non-zero byte at offset %d)", volumeID, dev, c.Offset)
	}
	return fmt.Errorf("%s (%s) holds data (%s); refusing to format", volumeID, dev, c)
}

// fsLabel is the ext4 label, which may be at most 16 bytes.
func fsLabel(etcdCluster string) string {
	l := "etcd-" + etcdCluster
	if len(l) > 16 {
		l = l[:16]
	}
	return l
}

// formatExt4 creates the filesystem on a device ensureBlank has just cleared, then
// probes again to prove the result is ext4. -F is never passed: mke2fs's own
// safety checks stay in force.
func formatExt4(ctx context.Context, volumeID, etcdCluster, dev string) (Content, error) {
	if err := ensureBlank(ctx, volumeID, dev); err != nil {
		return Content{}, err
	}
	cmd := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-L", fsLabel(etcdCluster), "-m", "0", dev)
	if out, err := cmd.CombinedOutput(); err != nil {
		return Content{}, fmt.Errorf("format %s (%s): mkfs.ext4: %w: %s", volumeID, dev, err, strings.TrimSpace(string(out)))
	}
	c, err := ProbeDevice(dev)
	if err != nil {
		return Content{}, fmt.Errorf("format %s: %w", volumeID, err)
	}
	if c.Kind != Filesystem || c.Type != "ext4" || c.UUID == "" {
		return Content{}, fmt.Errorf("format %s (%s): after mkfs.ext4 the device holds %s, not an ext4 filesystem", volumeID, dev, c)
	}
	return c, nil
}
