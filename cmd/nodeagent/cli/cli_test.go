package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files from the commands' output")

// nodeagent runs a command line as the binary would and returns its exit code,
// stdout and stderr.
func nodeagent(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Execute(context.Background(), args, strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

const badConfig = `apiVersion: nodeagent.io/v1alpha1
kind: NodeConfig
spec:
  cluster: {name: ""}
  role: Boss
  kubernetesVersion: v1.34.4
`

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestEachCommandsHelpNamesItsOwnFlagsOnly(t *testing.T) {
	global := []string{"--root", "--state-dir", "--log-format", "--log-level"}
	tests := []struct {
		command []string
		has     []string
		hasNot  []string
	}{
		{[]string{"bootstrap"}, []string{"--config", "Exit codes:", "0  the node is ready"}, []string{"--output", "--cluster", "--socket", "--reconcile-interval"}},
		{[]string{"plan"}, []string{"--config", "-o, --output", "nodeagent plan --config node.yaml", "1  the NodeConfig is invalid"}, []string{"--cluster", "--socket", "--reconcile-interval"}},
		{[]string{"run"}, []string{"--config", "--socket", "--reconcile-interval", "--readiness-interval", "Exit codes:"}, []string{"--output", "--cluster"}},
		{[]string{"status"}, []string{"-o, --output", "--cluster", "--socket", `nodeagent status -o json | jq '.phases[] | select(.state != "done")'`, "0  ready", "1  not ready", "2  unknown"}, []string{"--config", "--reconcile-interval", "--readiness-interval"}},
		{[]string{"config", "check"}, []string{"FILE|-", "-o, --output", "0  valid", "1  invalid"}, []string{"--config", "--cluster", "--socket", "--reconcile-interval"}},
		{[]string{"bake"}, []string{"--config", "Packer", "Exit codes:"}, []string{"--output", "--cluster", "--socket", "--reconcile-interval"}},
		{[]string{"version"}, []string{"-o, --output"}, []string{"--config", "--cluster", "--socket", "--reconcile-interval"}},
		{nil, []string{"bootstrap", "plan", "run", "status", "config", "bake", "version", "completion"}, []string{"--config", "--output", "--cluster", "--socket"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(append([]string{"nodeagent"}, tt.command...), " "), func(t *testing.T) {
			code, out, _ := nodeagent(t, "", append(tt.command, "--help")...)
			if code != 0 {
				t.Errorf("--help exits %d, want 0", code)
			}
			for _, w := range append(tt.has, global...) {
				if !strings.Contains(out, w) {
					t.Errorf("help lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tt.hasNot {
				if strings.Contains(flagTable(out), w+" ") {
					t.Errorf("help has %q, a flag of another command:\n%s", w, out)
				}
			}
		})
	}
}

// flagTable is the "Flags:" section of a help text: the command's own flags.
func flagTable(help string) string {
	_, flags, _ := strings.Cut(help, "\nFlags:\n")
	flags, _, _ = strings.Cut(flags, "\nGlobal Flags:")
	flags, _, _ = strings.Cut(flags, "\nUse \"")
	return flags
}

func TestABadCommandLineExits2WithAHint(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"a run flag given to status", []string{"status", "--reconcile-interval", "1s"}, []string{"unknown flag: --reconcile-interval", "--reconcile-interval is a flag of `nodeagent run`"}},
		{"a status flag given to plan", []string{"plan", "--cluster"}, []string{"--cluster is a flag of", "`nodeagent status`, not of `nodeagent plan`"}},
		{"-o given to bootstrap", []string{"bootstrap", "-o", "json"}, []string{"-o is a flag of", "`nodeagent status`", "`nodeagent plan`"}},
		{"--config given to status", []string{"status", "--config", "x.yaml"}, []string{"--config is a flag of `nodeagent bake`, `nodeagent bootstrap`, `nodeagent plan`, `nodeagent run`"}},
		{"a flag no command has", []string{"status", "--frobnicate"}, []string{"--frobnicate is not a flag of any nodeagent command"}},
		{"an unknown command", []string{"staus"}, []string{`unknown command "staus"`, "status"}},
		{"an unknown config command", []string{"config", "chek", "x"}, []string{`unknown command "chek"`, "check"}},
		{"config without a command", []string{"config"}, []string{"config check FILE|-"}},
		{"config check without a file", []string{"config", "check"}, []string{"usage: nodeagent config check FILE|-"}},
		{"bake without --config", []string{"bake"}, []string{"usage: nodeagent bake --config FILE"}},
		{"arguments to a command that takes none", []string{"status", "extra"}, []string{"takes no arguments"}},
		{"a bad log format", []string{"version", "--log-format", "xml"}, []string{"--log-format must be text or json"}},
		{"a bad log level", []string{"version", "--log-level", "loud"}, []string{"--log-level"}},
		{"a bad output format", []string{"version", "-o", "xml"}, []string{"-o must be text, json or yaml"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := nodeagent(t, "", tt.args...)
			if code != 2 {
				t.Errorf("exit %d, want 2; stderr:\n%s", code, stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
		})
	}
}

func TestVersionJSONParses(t *testing.T) {
	code, out, _ := nodeagent(t, "", "version", "-o", "json")
	var v versionInfo
	if err := json.Unmarshal([]byte(out), &v); code != 0 || err != nil || v.Version == "" || v.GoVersion == "" {
		t.Fatalf("exit %d, err %v, version %+v:\n%s", code, err, v, out)
	}
	if code, out, _ := nodeagent(t, "", "version"); code != 0 || !strings.HasPrefix(out, "nodeagent "+v.Version+" (commit ") {
		t.Errorf("text: exit %d:\n%s", code, out)
	}
}

func TestConfigCheck(t *testing.T) {
	bad := writeFile(t, "bad.yaml", badConfig)
	good, err := filepath.Abs("../../../config/testdata/worker.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		stdin string
		args  []string
		code  int
		want  []string
	}{
		{"a valid file", "", []string{"config", "check", good}, 0, []string{"valid NodeConfig for"}},
		{"a bad file lists field paths", "", []string{"config", "check", bad}, 1, []string{"2 problems", "spec.cluster.name", "spec.role"}},
		{"stdin", badConfig, []string{"config", "check", "-"}, 1, []string{"-: 2 problems", "spec.role"}},
		{"json", "", []string{"config", "check", "-o", "json", bad}, 1, []string{`"valid": false`, `"path": "spec.cluster.name"`}},
		{"yaml after the file", "", []string{"config", "check", bad, "-o", "yaml"}, 1, []string{"valid: false", "path: spec.role"}},
		{"a missing file", "", []string{"config", "check", "/nonexistent.yaml"}, 1, []string{"/nonexistent.yaml:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, stderr := nodeagent(t, tt.stdin, tt.args...)
			if code != tt.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, tt.code, stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

func TestStatusExitCodes(t *testing.T) {
	root := t.TempDir()
	// Nothing recorded yet: unknown, and JSON a script can still parse.
	code, out, _ := nodeagent(t, "", "status", "--root", root, "-o", "json")
	var v map[string]any
	if err := json.Unmarshal([]byte(out), &v); code != 2 || err != nil {
		t.Errorf("no state, -o json: exit %d (want 2), err %v:\n%s", code, err, out)
	}
	if code, out, _ := nodeagent(t, "", "--root", root, "status"); code != 2 || !strings.Contains(out, "has not run on this node") {
		t.Errorf("no state: exit %d (want 2):\n%s", code, out)
	}
	// No daemon to ask: unknown.
	if code, _, stderr := nodeagent(t, "", "status", "--cluster", "--root", root); code != 2 || !strings.Contains(stderr, "nodeagent status:") {
		t.Errorf("--cluster, no daemon: exit %d (want 2):\n%s", code, stderr)
	}
}

func TestOldSpellingsStillWork(t *testing.T) {
	bad := writeFile(t, "bad.yaml", badConfig)
	root := t.TempDir()
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"-config FILE", []string{"plan", "-config", bad, "-root", root}, 1, "", "spec.cluster.name"},
		{"-config=FILE", []string{"plan", "-config=" + bad, "-state-dir=" + root}, 1, "", "spec.role"},
		{"--config FILE", []string{"plan", "--config", bad, "--root", root}, 1, "", "spec.cluster.name"},
		{"-o json", []string{"status", "-o", "json", "-root", root}, 2, `"phases"`, ""},
		{"-o=yaml", []string{"status", "-o=yaml", "-root=" + root}, 2, "phases", ""},
		{"--output json", []string{"-root", root, "status", "--output", "json"}, 2, `"phases"`, ""},
		{"-cluster", []string{"status", "-cluster", "-root", root, "-socket", "/nope.sock"}, 2, "", "nodeagent status:"},
		{"-log-format json", []string{"version", "-log-format", "json", "-log-level", "debug"}, 0, "nodeagent ", ""},
		{"config check FILE", []string{"config", "check", bad}, 1, "spec.role", ""},
		{"config check -", []string{"config", "check", "-"}, 1, "-: ", ""},
		{"-help", []string{"status", "-help"}, 0, "--cluster", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, stderr := nodeagent(t, "{{{", tt.args...)
			if code != tt.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, tt.code, stderr)
			}
			if !strings.Contains(out, tt.stdout) {
				t.Errorf("stdout lacks %q:\n%s", tt.stdout, out)
			}
			if !strings.Contains(stderr, tt.stderr) {
				t.Errorf("stderr lacks %q:\n%s", tt.stderr, stderr)
			}
		})
	}
}

func TestNormalizeArgs(t *testing.T) {
	root := New(strings.NewReader(""), nil, nil)
	tests := []struct{ in, want []string }{
		{[]string{"-config", "f"}, []string{"--config", "f"}},
		{[]string{"-config=f", "-o", "json"}, []string{"--config=f", "-o", "json"}},
		{[]string{"-ojson", "-h"}, []string{"-ojson", "-h"}},                                        // shorthands stay
		{[]string{"config", "check", "-"}, []string{"config", "check", "-"}},                        // stdin
		{[]string{"-frobnicate"}, []string{"-frobnicate"}},                                          // not a flag: pflag says so
		{[]string{"--", "-config"}, []string{"--", "-config"}},                                      // after --: arguments
		{[]string{"-reconcile-interval=1s"}, []string{"--reconcile-interval=1s"}},                   // any command's flag
		{[]string{"--root", "/", "-state-dir", "/s"}, []string{"--root", "/", "--state-dir", "/s"}}, // global ones too
	}
	for _, tt := range tests {
		if got := normalizeArgs(root, tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("normalizeArgs(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestCompletionScripts(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish"} {
		t.Run(shell, func(t *testing.T) {
			code, out, stderr := nodeagent(t, "", "completion", shell)
			if code != 0 || len(out) < 100 || !strings.Contains(out, "nodeagent") {
				t.Errorf("exit %d, %d bytes; stderr:\n%s", code, len(out), stderr)
			}
		})
	}
}
