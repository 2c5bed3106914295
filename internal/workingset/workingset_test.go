package workingset

import (
	"os"
	"testing"
)

// written is in the binary's writable data: Trim must leave it alone.
var written = []int{1, 2, 3}

func TestTrimDropsTheBinarysReadOnlyPagesAndTheProcessGoesOn(t *testing.T) {
	written[1] = 42
	res, err := Trim()
	if err != nil {
		t.Fatalf("Trim: %v", err)
	}
	if len(res.Mappings) == 0 {
		t.Fatal("no mapping trimmed")
	}
	var code bool
	for _, m := range res.Mappings {
		if m.Perms[2] == 'x' {
			code = true
		}
		if m.Perms[1] != '-' {
			t.Errorf("trimmed a writable mapping %+v", m)
		}
	}
	if !code {
		t.Errorf("the executable's code was not among the trimmed mappings: %+v", res.Mappings)
	}
	if res.ResidentAfter >= res.ResidentBefore {
		t.Errorf("file-backed resident bytes %d before, %d after: nothing released", res.ResidentBefore, res.ResidentAfter)
	}
	t.Logf("file-backed resident: %.1f MiB before, %.1f MiB after", float64(res.ResidentBefore)/(1<<20), float64(res.ResidentAfter)/(1<<20))
	// The process goes on: code and read-only data map again on use, and the
	// writable data kept its value.
	if written[1] != 42 {
		t.Errorf("writable data changed by the trim: %v", written)
	}
	if _, err := os.ReadFile("/proc/self/status"); err != nil {
		t.Fatal(err)
	}
	again, err := Trim()
	if err != nil {
		t.Fatalf("a second Trim: %v", err)
	}
	if len(again.Mappings) != len(res.Mappings) {
		t.Errorf("second trim found %d mappings, the first %d", len(again.Mappings), len(res.Mappings))
	}
}

func TestReadOnlyMappingsOfTakesOnlyTheFilesPrivateReadOnlyMappings(t *testing.T) {
	// Device 0xfd:01 and inode 1234 are the executable's.
	maps := []byte(`00400000-00a00000 r-xp 00000000 fd:01 1234                               /usr/local/bin/nodeagent
00a00000-01000000 r--p 00600000 fd:01 1234                               /usr/local/bin/nodeagent
01000000-01100000 rw-p 00c00000 fd:01 1234                               /usr/local/bin/nodeagent
01100000-01200000 rw-p 00000000 00:00 0 
7f0000000000-7f0000100000 r--p 00000000 fd:01 999                        /usr/lib/locale/C.utf8/LC_CTYPE
7f0000100000-7f0000200000 r--s 00000000 fd:01 1234                       /usr/local/bin/nodeagent
7f0000200000-7f0000300000 r--p 00000000 fd:02 1234                       /other/fs/same/inode
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
`)
	got, err := readOnlyMappingsOf(maps, 0xfd01, 1234)
	if err != nil {
		t.Fatal(err)
	}
	want := []Mapping{{0x400000, 0xa00000, "r-xp"}, {0xa00000, 0x1000000, "r--p"}}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("mapping %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestReadOnlyMappingsOfRefusesAMalformedTable(t *testing.T) {
	for _, maps := range []string{
		"garbage\n",
		"zz-00a00000 r-xp 00000000 fd:01 1234 /x\n",
		"00400000-00a00000 r-xp 00000000 fd01 1234 /x\n",
		"00400000-00a00000 r-xp 00000000 fd:01 notanumber /x\n",
	} {
		if _, err := readOnlyMappingsOf([]byte(maps), 0xfd01, 1234); err == nil {
			t.Errorf("%q: no error", maps)
		}
	}
}
