package procfs

import "testing"

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`/swap\040file`:      "/swap file",
		`/plain`:             "/plain",
		`/trail\04`:          `/trail\04`,
		`/x\134y`:            `/x\y`,
		`/tab\011and\012nl`:  "/tab\tand\nnl",
		`/not\999octal`:      `/not\999octal`,
		`/mnt/master\040vol`: "/mnt/master vol",
	} {
		if got := Unescape(in); got != want {
			t.Errorf("Unescape(%q) = %q, want %q", in, got, want)
		}
	}
}
