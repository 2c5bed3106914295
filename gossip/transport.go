package gossip

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// transport is the ring's UDP socket and TCP listener on one address, in place
// of memberlist's NetTransport for two reasons:
//
//   - NetTransport reads every UDP packet into a fresh, zeroed 64 KB buffer. A
//     gossip packet is 100 bytes to a 9 KB jumbo frame, so that is mostly
//     garbage: in the scale test the 64 KB buffers were two thirds of all
//     allocation and the zeroing plus the GC it caused the largest CPU cost.
//     Here one buffer per socket is reused and each packet is copied out at
//     its own size.
//   - The bytes on the ring's sockets are counted (Status, the scale test): the
//     bandwidth figure is measured, not estimated. Packet payloads are counted as
//     memberlist hands them over (UDP/IP headers excluded); streams count every
//     byte written or read.
type transport struct {
	ip   net.IP
	port int
	udp  *net.UDPConn
	tcp  *net.TCPListener
	log  *slog.Logger

	sent     atomic.Uint64
	received atomic.Uint64

	packets  chan *memberlist.Packet
	streams  chan net.Conn
	done     chan struct{}
	doneOnce sync.Once
	wg       sync.WaitGroup
}

var _ memberlist.NodeAwareTransport = (*transport)(nil)

// udpRecvBuffer is asked of the kernel for the UDP socket (it caps the request
// at net.core.rmem_max): a burst of gossip after a restart should queue, not drop.
const udpRecvBuffer = 2 << 20

// maxPacket is the largest UDP payload read (packets are at most a VPC jumbo
// frame, see packetBudget, or an older peer's 1.4 KB).
const maxPacket = 65536 // above vpcJumboPacket, so any peer's packet fits

// listen binds the TCP listener and the UDP socket on ip:port.
func listen(ip net.IP, port int, log *slog.Logger) (*transport, error) {
	tcp, err := net.ListenTCP("tcp", &net.TCPAddr{IP: ip, Port: port})
	if err != nil {
		return nil, err
	}
	if port == 0 { // the same port for both, as memberlist expects
		port = tcp.Addr().(*net.TCPAddr).Port
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip, Port: port})
	if err != nil {
		tcp.Close()
		return nil, err
	}
	if err := udp.SetReadBuffer(udpRecvBuffer); err != nil {
		log.Debug("gossip UDP receive buffer", "err", err)
	}
	t := &transport{
		ip: ip, port: port, udp: udp, tcp: tcp, log: log,
		packets: make(chan *memberlist.Packet),
		streams: make(chan net.Conn),
		done:    make(chan struct{}),
	}
	t.wg.Add(2)
	go t.readPackets()
	go t.acceptStreams()
	return t, nil
}

func (t *transport) readPackets() {
	defer t.wg.Done()
	buf := make([]byte, maxPacket)
	for {
		n, from, err := t.udp.ReadFromUDPAddrPort(buf)
		ts := time.Now()
		if err != nil {
			if t.closed() {
				return
			}
			t.log.Warn("read gossip packet", "err", err)
			continue
		}
		if n == 0 {
			continue
		}
		t.received.Add(uint64(n))
		p := &memberlist.Packet{
			Buf:       append([]byte(nil), buf[:n]...),
			From:      net.UDPAddrFromAddrPort(from),
			Timestamp: ts,
		}
		select {
		case t.packets <- p:
		case <-t.done:
			return
		}
	}
}

func (t *transport) acceptStreams() {
	defer t.wg.Done()
	backoff := 5 * time.Millisecond
	for {
		c, err := t.tcp.AcceptTCP()
		if err != nil {
			if t.closed() {
				return
			}
			// Out of descriptors, most likely: wait rather than spin.
			t.log.Warn("accept gossip stream", "err", err)
			select {
			case <-time.After(backoff):
			case <-t.done:
				return
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		select {
		case t.streams <- &countingConn{Conn: c, t: t}:
		case <-t.done:
			c.Close()
			return
		}
	}
}

func (t *transport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	if ip == "" {
		return t.ip, t.port, nil
	}
	addr := net.ParseIP(ip)
	if addr == nil {
		return nil, 0, fmt.Errorf("advertise address %q is not an IP", ip)
	}
	if port == 0 {
		port = t.port
	}
	return addr, port, nil
}

func (t *transport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

func (t *transport) WriteToAddress(b []byte, addr memberlist.Address) (time.Time, error) {
	to, err := parseAddrPort(addr.Addr)
	if err != nil {
		return time.Time{}, err
	}
	if _, err := t.udp.WriteToUDPAddrPort(b, to); err != nil {
		return time.Time{}, err
	}
	t.sent.Add(uint64(len(b)))
	return time.Now(), nil
}

// parseAddrPort reads memberlist's "ip:port"; a host name is resolved, which
// only seeds given by name need.
func parseAddrPort(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	ua, err := net.ResolveUDPAddr("udp", s)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return ua.AddrPort(), nil
}

func (t *transport) closed() bool {
	select {
	case <-t.done:
		return true
	default:
		return false
	}
}

func (t *transport) PacketCh() <-chan *memberlist.Packet { return t.packets }
func (t *transport) StreamCh() <-chan net.Conn           { return t.streams }

func (t *transport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

func (t *transport) DialAddressTimeout(addr memberlist.Address, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.Dial("tcp", addr.Addr)
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, t: t}, nil
}

// Shutdown closes both sockets, which ends the reader and the acceptor.
func (t *transport) Shutdown() error {
	t.doneOnce.Do(func() { close(t.done) })
	err := errors.Join(t.udp.Close(), t.tcp.Close())
	t.wg.Wait()
	return err
}

type countingConn struct {
	net.Conn
	t *transport
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.t.received.Add(uint64(n))
	return n, err
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.t.sent.Add(uint64(n))
	return n, err
}
