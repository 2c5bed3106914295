// Package sntptest is an SNTP server for tests: it answers NTP client requests
// (RFC 4330) with this machine's time shifted by a settable offset, so a
// clock check can be shown a clock that is off without touching the real one.
package sntptest

import (
	"encoding/binary"
	"net"
	"sync"
	"time"
)

// Server answers on a UDP socket until Close.
type Server struct {
	conn *net.UDPConn
	mu   sync.Mutex
	off  time.Duration
	wg   sync.WaitGroup
}

// Start listens on addr ("127.0.0.1:0", "0.0.0.0:0").
func Start(addr string) (*Server, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	c, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, err
	}
	s := &Server{conn: c}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

// Port is the UDP port the server answers on.
func (s *Server) Port() int { return s.conn.LocalAddr().(*net.UDPAddr).Port }

// SetOffset makes the server's time run ahead (positive) or behind by d, so a
// client's clock appears off by -d.
func (s *Server) SetOffset(d time.Duration) {
	s.mu.Lock()
	s.off = d
	s.mu.Unlock()
}

// Close stops the server.
func (s *Server) Close() error {
	err := s.conn.Close()
	s.wg.Wait()
	return err
}

// ntpEpoch is 1900-01-01, NTP's zero.
var ntpEpoch = time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC)

func putTime(b []byte, t time.Time) {
	d := t.Sub(ntpEpoch)
	sec := uint64(d / time.Second)
	frac := uint64(d%time.Second) << 32 / uint64(time.Second)
	binary.BigEndian.PutUint32(b[0:], uint32(sec))
	binary.BigEndian.PutUint32(b[4:], uint32(frac))
}

func (s *Server) serve() {
	defer s.wg.Done()
	buf := make([]byte, 512)
	for {
		n, from, err := s.conn.ReadFromUDP(buf)
		if err != nil {
			return
		}
		if n < 48 || buf[0]&0x7 != 3 { // mode 3: client
			continue
		}
		s.mu.Lock()
		off := s.off
		s.mu.Unlock()
		recv := time.Now().Add(off)
		resp := make([]byte, 48)
		resp[0] = 0<<6 | 4<<3 | 4                       // leap none, version 4, mode 4 (server)
		resp[1] = 1                                     // stratum 1: a reference clock
		resp[2] = buf[2]                                // poll
		resp[3] = 0xEC                                  // precision 2^-20
		binary.BigEndian.PutUint32(resp[8:], 1<<16/100) // root dispersion 10 ms
		copy(resp[12:16], "TEST")
		putTime(resp[16:], recv.Add(-time.Second)) // reference time
		copy(resp[24:32], buf[40:48])              // origin: the client's transmit time
		putTime(resp[32:], recv)
		putTime(resp[40:], time.Now().Add(off))
		_, _ = s.conn.WriteToUDP(resp, from)
	}
}
