package gossip

import (
	"encoding/xml"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/cloud"
)

// TestEC2SeedsEmulator asks the project's wire-level AWS emulator, through the
// real SDK client configured only by environment, as on a node.
func TestEC2SeedsEmulator(t *testing.T) {
	w := &awsemu.World{}
	var want []string
	for i := range 12 {
		in := awsemu.Instance{
			ID: fmt.Sprintf("i-%017d", i), PrivateIP: fmt.Sprintf("10.0.1.%d", 10+i), State: "running",
			Tags: map[string]string{"KubernetesCluster": "c.k8s.local"},
		}
		switch {
		case i == 3:
			in.State = "stopped"
		case i == 4:
			in.State = "terminated"
		case i == 5:
			in.Tags = map[string]string{"KubernetesCluster": "other.k8s.local"}
		case i == 6: // self
		default:
			want = append(want, in.PrivateIP)
		}
		w.Instances = append(w.Instances, in)
	}
	emu := awsemu.Start(t, w, awsemu.Options{})
	for _, kv := range emu.Env("") {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	cfg, err := cloud.LoadConfig(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// Five per page: the nine matches take two pages, so a lost NextToken shows.
	s := &EC2Seeds{Client: cloud.NewEC2(cfg), ClusterName: "c.k8s.local", Self: "10.0.1.16", PageSize: 5}
	got, err := s.Seeds(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(want)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("seeds %v, want %v", got, want)
	}
}

// fakeInstance is one instance of the fake EC2 endpoint.
type fakeInstance struct {
	ID, IP, Cluster, State string
}

// fakeEC2 answers DescribeInstances over the EC2 query protocol (form-encoded
// POST, XML reply) the way EC2 does: it applies the request's filters itself and
// pages with NextToken, so the test checks what EC2Seeds asks for (filters,
// MaxResults), not just what it does with a canned answer; TestEC2SeedsEmulator
// runs the same client against the project's AWS emulator.
type fakeEC2 struct {
	instances []fakeInstance
	pageSize  int

	mu    sync.Mutex
	calls int
}

type xmlInstance struct {
	InstanceID string `xml:"instanceId"`
	PrivateIP  string `xml:"privateIpAddress,omitempty"`
	State      struct {
		Code int    `xml:"code"`
		Name string `xml:"name"`
	} `xml:"instanceState"`
}

type xmlReservation struct {
	ReservationID string        `xml:"reservationId"`
	Instances     []xmlInstance `xml:"instancesSet>item"`
}

type xmlDescribeInstances struct {
	XMLName      xml.Name         `xml:"DescribeInstancesResponse"`
	Xmlns        string           `xml:"xmlns,attr"`
	RequestID    string           `xml:"requestId"`
	Reservations []xmlReservation `xml:"reservationSet>item"`
	NextToken    string           `xml:"nextToken,omitempty"`
}

func (f *fakeEC2) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil || r.Form.Get("Action") != "DescribeInstances" || r.Form.Get("MaxResults") != strconv.Itoa(f.pageSize) {
		http.Error(w, "unsupported", http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	f.calls++
	f.mu.Unlock()
	filters := map[string][]string{}
	for i := 1; r.Form.Get(fmt.Sprintf("Filter.%d.Name", i)) != ""; i++ {
		name := r.Form.Get(fmt.Sprintf("Filter.%d.Name", i))
		for j := 1; r.Form.Get(fmt.Sprintf("Filter.%d.Value.%d", i, j)) != ""; j++ {
			filters[name] = append(filters[name], r.Form.Get(fmt.Sprintf("Filter.%d.Value.%d", i, j)))
		}
	}
	match := func(key, v string) bool {
		want, ok := filters[key]
		if !ok {
			return true
		}
		for _, w := range want {
			if w == v {
				return true
			}
		}
		return false
	}
	var hits []fakeInstance
	for _, in := range f.instances {
		if match("tag:KubernetesCluster", in.Cluster) && match("instance-state-name", in.State) {
			hits = append(hits, in)
		}
	}
	start, _ := strconv.Atoi(r.Form.Get("NextToken"))
	endIdx := min(start+f.pageSize, len(hits))
	resp := xmlDescribeInstances{Xmlns: "http://ec2.amazonaws.com/doc/2016-11-15/", RequestID: "req-1"}
	for _, in := range hits[start:endIdx] {
		x := xmlInstance{InstanceID: in.ID, PrivateIP: in.IP}
		x.State.Name = in.State
		x.State.Code = map[string]int{"pending": 0, "running": 16, "terminated": 48, "stopped": 80}[in.State]
		resp.Reservations = append(resp.Reservations, xmlReservation{ReservationID: "r-" + in.ID, Instances: []xmlInstance{x}})
	}
	if endIdx < len(hits) {
		resp.NextToken = strconv.Itoa(endIdx)
	}
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	xml.NewEncoder(w).Encode(resp)
}

func TestEC2Seeds(t *testing.T) {
	fake := &fakeEC2{pageSize: 2, instances: []fakeInstance{
		{"i-1", "10.0.0.11", "c.k8s.local", "running"},
		{"i-2", "10.0.0.12", "c.k8s.local", "running"},     // self
		{"i-3", "10.0.0.13", "c.k8s.local", "terminated"},  // not running
		{"i-4", "10.0.0.14", "other.k8s.local", "running"}, // other cluster
		{"i-5", "10.0.0.15", "c.k8s.local", "pending"},
		{"i-6", "10.0.0.9", "c.k8s.local", "running"},
		{"i-7", "", "c.k8s.local", "running"}, // no private IP (yet)
		{"i-8", "10.0.0.20", "c.k8s.local", "running"},
	}}
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	t.Setenv("AWS_ENDPOINT_URL_EC2", srv.URL)
	t.Setenv("AWS_REGION", "eu-west-1")
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	cfg, err := cloud.LoadConfig(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	s := &EC2Seeds{Client: cloud.NewEC2(cfg), ClusterName: "c.k8s.local", Self: "10.0.0.12", PageSize: 2}
	got, err := s.Seeds(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"10.0.0.11", "10.0.0.20", "10.0.0.9"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("seeds %v, want %v", got, want)
	}
	// Five matching instances at two per page: three pages.
	if fake.calls != 3 {
		t.Errorf("%d DescribeInstances calls, want 3 (paginated)", fake.calls)
	}
}

func TestWithPort(t *testing.T) {
	tests := []struct{ in, want string }{
		{"10.0.0.1", "10.0.0.1:3999"},
		{"10.0.0.1:4000", "10.0.0.1:4000"},
		{"fd00::1", "[fd00::1]:3999"},
		{"[fd00::1]:4000", "[fd00::1]:4000"},
	}
	for _, tt := range tests {
		if got := withPort(tt.in, 3999); got != tt.want {
			t.Errorf("withPort(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
