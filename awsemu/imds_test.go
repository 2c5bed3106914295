package awsemu

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/nodeagent/nodeagent/cloud"
)

func imdsDo(t *testing.T, method, url string, hdr map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx(t), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestIMDSTokens(t *testing.T) {
	r := Start(t, testWorld(t), Options{})
	base := r.IMDSURL(nitroID)
	token := func(ttl string) string {
		code, tok := imdsDo(t, http.MethodPut, base+"/latest/api/token", map[string]string{imdsTTLHeader: ttl})
		if code != 200 || tok == "" {
			t.Fatalf("token: %d %q", code, tok)
		}
		return tok
	}
	get := func(tok string) int {
		code, _ := imdsDo(t, http.MethodGet, base+"/latest/meta-data/instance-id", map[string]string{imdsTokenHeader: tok})
		return code
	}
	good := token("60")
	cases := []struct {
		name string
		code func() int
		want int
	}{
		{"no token (IMDSv1) is refused", func() int { return get("") }, 401},
		{"unknown token", func() int { return get("forged") }, 401},
		{"valid token", func() int { return get(good) }, 200},
		{"token of another instance", func() int {
			code, tok := imdsDo(t, http.MethodPut, r.IMDSURL(xenID)+"/latest/api/token", map[string]string{imdsTTLHeader: "60"})
			if code != 200 {
				t.Fatalf("token: %d", code)
			}
			return get(tok)
		}, 401},
		{"token without TTL", func() int { c, _ := imdsDo(t, http.MethodPut, base+"/latest/api/token", nil); return c }, 400},
		{"TTL above six hours", func() int {
			c, _ := imdsDo(t, http.MethodPut, base+"/latest/api/token", map[string]string{imdsTTLHeader: "21601"})
			return c
		}, 400},
		{"token through a proxy", func() int {
			c, _ := imdsDo(t, http.MethodPut, base+"/latest/api/token", map[string]string{imdsTTLHeader: "60", "X-Forwarded-For": "10.0.0.1"})
			return c
		}, 403},
		{"GET on the token path", func() int { c, _ := imdsDo(t, http.MethodGet, base+"/latest/api/token", nil); return c }, 405},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.code(); got != tc.want {
				t.Fatalf("status %d, want %d", got, tc.want)
			}
		})
	}
	t.Run("expired token", func(t *testing.T) {
		short := token("1")
		if get(short) != 200 {
			t.Fatal("fresh token refused")
		}
		time.Sleep(1100 * time.Millisecond)
		if got := get(short); got != 401 {
			t.Fatalf("expired token: status %d, want 401", got)
		}
	})
}

func TestIMDSPaths(t *testing.T) {
	w := testWorld(t)
	r := Start(t, w, Options{})
	c := cloud.NewIMDS(sdkConfig(t, r, nitroID))
	cases := []struct{ path, want string }{
		{"instance-id", nitroID},
		{"instance-type", "m5.large"},
		{"placement/availability-zone", "us-east-1a"},
		{"placement/region", "us-east-1"},
		{"local-ipv4", "10.0.1.10"},
		{"local-hostname", "ip-10-0-1-10.ec2.internal"},
		{"hostname", "ip-10-0-1-10.ec2.internal"},
		{"tags/instance/Name", "cp-a"},
		{"placement/", "availability-zone\nregion"},
	}
	for _, tc := range cases {
		t.Run(tc.path, func(t *testing.T) {
			out, err := c.GetMetadata(ctx(t), &imds.GetMetadataInput{Path: tc.path})
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(out.Content)
			out.Content.Close()
			if string(b) != tc.want {
				t.Errorf("%s = %q, want %q", tc.path, b, tc.want)
			}
		})
	}
	doc, err := c.GetInstanceIdentityDocument(ctx(t), &imds.GetInstanceIdentityDocumentInput{})
	if err != nil {
		t.Fatal(err)
	}
	if doc.InstanceID != nitroID || doc.Region != "us-east-1" || doc.AvailabilityZone != "us-east-1a" || doc.PrivateIP != "10.0.1.10" || doc.InstanceType != "m5.large" || doc.AccountID == "" || doc.PendingTime.IsZero() {
		t.Errorf("identity document = %+v", doc.InstanceIdentityDocument)
	}
	region, err := c.GetRegion(ctx(t), &imds.GetRegionInput{})
	if err != nil || region.Region != "us-east-1" {
		t.Errorf("GetRegion = %v, %v", region, err)
	}
	_, err = c.GetMetadata(ctx(t), &imds.GetMetadataInput{Path: "no/such/thing"})
	var re *smithyhttp.ResponseError
	if !errors.As(err, &re) || re.HTTPStatusCode() != 404 {
		t.Errorf("missing path: %v, want 404", err)
	}
	if r.E.Calls("imds", "api/token") == 0 {
		t.Error("the SDK fetched no token")
	}
}

func TestIMDSUserData(t *testing.T) {
	r := Start(t, testWorld(t), Options{})
	with := cloud.NewIMDS(sdkConfig(t, r, nitroID))
	b, err := cloud.FetchUserData(ctx(t), with)
	if err != nil || string(b) != "#cloud-config\n" {
		t.Fatalf("FetchUserData = %q, %v", b, err)
	}
	without := cloud.NewIMDS(sdkConfig(t, r, nitroB))
	if _, err := cloud.FetchUserData(ctx(t), without); !errors.Is(err, cloud.ErrNoUserData) {
		t.Fatalf("FetchUserData without user-data = %v, want ErrNoUserData", err)
	}
	code, _ := imdsDo(t, http.MethodGet, r.IMDSURL(nitroB)+"/latest/user-data", nil)
	if code != 401 {
		t.Fatalf("user-data without token: %d", code)
	}
	id, err := cloud.FetchIdentity(ctx(t), with)
	if err != nil {
		t.Fatal(err)
	}
	want := cloud.Identity{InstanceID: nitroID, InstanceType: "m5.large", Region: "us-east-1", AvailabilityZone: "us-east-1a", PrivateIP: "10.0.1.10", Hostname: "ip-10-0-1-10.ec2.internal"}
	if id != want {
		t.Errorf("FetchIdentity = %+v, want %+v", id, want)
	}
	if !strings.HasPrefix(r.IMDSURL(nitroID), "http://127.0.0.1:") {
		t.Errorf("IMDS URL %s is not loopback", r.IMDSURL(nitroID))
	}
}
