package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/cloud"
)

// The test binary doubles as the command: with AWSEMU_MAIN set it runs main().
func TestMain(m *testing.M) {
	if args := os.Getenv("AWSEMU_MAIN"); args != "" {
		os.Args = append([]string{"awsemu"}, strings.Split(args, "\n")...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestCommandServesAndCleansUpOnSIGTERM(t *testing.T) {
	dir := t.TempDir()
	devRoot := filepath.Join(dir, "root")
	world := fmt.Sprintf(`
instances:
- id: i-0000000000000abcd
  type: m5.large
  availabilityZone: us-east-1a
  privateIP: 10.0.0.5
  devRoot: %s
volumes:
- id: vol-0000000000000abcd
  availabilityZone: us-east-1a
  sizeMiB: 4
`, devRoot)
	worldPath := filepath.Join(dir, "world.yaml")
	if err := os.WriteFile(worldPath, []byte(world), 0o600); err != nil {
		t.Fatal(err)
	}
	listen, imdsAddr := freeAddr(t), freeAddr(t)
	args := []string{"--world", worldPath, "--listen", listen, "--imds", "i-0000000000000abcd=" + imdsAddr, "--volume-dir", filepath.Join(dir, "volumes")}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "AWSEMU_MAIN="+strings.Join(args, "\n"))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == "awsemu ready" {
				ready <- true
			}
		}
		close(ready)
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("exited before ready: %s", stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("not ready after 20s: %s", stderr.String())
	}

	t.Setenv("AWS_ENDPOINT_URL", "http://"+listen)
	t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://"+imdsAddr)
	t.Setenv("AWS_REGION", awsemu.DefaultRegion)
	t.Setenv("AWS_ACCESS_KEY_ID", awsemu.DefaultAccessKeyID)
	t.Setenv("AWS_SECRET_ACCESS_KEY", awsemu.DefaultSecretAccessKey)
	t.Setenv("AWS_CONFIG_FILE", "/dev/null")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg, err := cloud.LoadConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id, err := cloud.FetchIdentity(ctx, cloud.NewIMDS(cfg))
	if err != nil || id.InstanceID != "i-0000000000000abcd" {
		t.Fatalf("identity %+v, %v", id, err)
	}
	if _, err := cloud.NewEC2(cfg).AttachVolume(ctx, &ec2.AttachVolumeInput{
		VolumeId: aws.String("vol-0000000000000abcd"), InstanceId: aws.String(id.InstanceID), Device: aws.String("/dev/xvdu"),
	}); err != nil {
		t.Fatal(err)
	}
	link := awsemu.DevicePath(devRoot, "m5.large", "vol-0000000000000abcd", "/dev/xvdu")
	loop, err := os.Readlink(link)
	if err != nil {
		t.Fatalf("no device link after attach: %v", err)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, stderr.String())
	}
	if _, err := os.Lstat(link); !os.IsNotExist(err) {
		t.Errorf("link survives SIGTERM: %v", err)
	}
	backing, _ := os.ReadFile(filepath.Join("/sys/block", filepath.Base(loop), "loop", "backing_file"))
	if strings.Contains(string(backing), "vol-0000000000000abcd") {
		t.Errorf("%s still attached after SIGTERM", loop)
	}
	if !strings.Contains(stderr.String(), "volume attached") {
		t.Errorf("no structured log of the attach in:\n%s", stderr.String())
	}
}

func TestParseIMDS(t *testing.T) {
	cases := []struct {
		in      string
		want    string
		wantErr bool
	}{
		{"", "", false},
		{"i-abc=127.0.0.1:8101,i-def=127.0.0.1:8102", "i-abc@127.0.0.1:8101 i-def@127.0.0.1:8102", false},
		{"i-abc", "", true},
		{"i-abc=1:1,i-abc=1:2", "", true},
	}
	for _, tc := range cases {
		got, err := parseIMDS(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("parseIMDS(%q) error = %v", tc.in, err)
			continue
		}
		var parts []string
		for _, p := range got {
			parts = append(parts, p[0]+"@"+p[1])
		}
		if strings.Join(parts, " ") != tc.want {
			t.Errorf("parseIMDS(%q) = %v, want %s", tc.in, parts, tc.want)
		}
	}
}
