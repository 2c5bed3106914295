package gossip

import (
	"bytes"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// TestTransport: packets arrive whole, at their own size and with the sender's
// address; streams connect; every byte is counted on both sides; Shutdown ends
// the listeners.
func TestTransport(t *testing.T) {
	listenOn := func(ip net.IP) *transport {
		tr, err := listen(ip, 0, discardLogger())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Shutdown() })
		return tr
	}
	a, b := listenOn(net.IPv4(127, 77, 2, 10)), listenOn(net.IPv4(127, 77, 2, 11))
	to := memberlist.Address{Addr: net.JoinHostPort(b.ip.String(), strconv.Itoa(b.port))}

	for _, size := range []int{1, 1400, 9000} {
		msg := bytes.Repeat([]byte{byte(size)}, size)
		if _, err := a.WriteToAddress(msg, to); err != nil {
			t.Fatalf("send %d bytes: %v", size, err)
		}
		select {
		case p := <-b.PacketCh():
			// The slice must not pin a 64 KB read buffer.
			if !bytes.Equal(p.Buf, msg) || cap(p.Buf) > size+size/8+8 {
				t.Errorf("packet of %d bytes arrived as %d bytes (cap %d)", size, len(p.Buf), cap(p.Buf))
			}
			if got := p.From.(*net.UDPAddr); !got.IP.Equal(a.ip) || got.Port != a.port {
				t.Errorf("packet from %v, want %s:%d", got, a.ip, a.port)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("packet of %d bytes never arrived", size)
		}
	}
	if a.sent.Load() != 10401 || b.received.Load() != 10401 {
		t.Errorf("packet bytes counted: sent %d, received %d, want 10401 each", a.sent.Load(), b.received.Load())
	}

	c, err := a.DialAddressTimeout(to, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var s net.Conn
	select {
	case s = <-b.StreamCh():
	case <-time.After(5 * time.Second):
		t.Fatal("stream never accepted")
	}
	defer s.Close()
	if _, err := c.Write([]byte("push-pull")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 9)
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "push-pull" {
		t.Fatalf("stream read %q, %v", buf, err)
	}
	if a.sent.Load() != 10410 || b.received.Load() != 10410 {
		t.Errorf("after the stream: sent %d, received %d, want 10410 each", a.sent.Load(), b.received.Load())
	}

	if err := b.Shutdown(); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	if _, err := a.DialAddressTimeout(to, time.Second); err == nil {
		t.Error("a shut-down transport still accepts streams")
	}
}
