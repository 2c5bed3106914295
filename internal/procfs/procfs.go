// Package procfs holds what several packages need to read the kernel's /proc
// tables (mountinfo, swaps, fstab-style files).
package procfs

import (
	"strconv"
	"strings"
)

// Unescape undoes the kernel's \NNN (octal) escaping of spaces, tabs, newlines
// and backslashes in the paths of /proc/self/mountinfo, /proc/swaps and fstab.
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
