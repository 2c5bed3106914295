package systemd

import (
	"context"
	"fmt"
	"sync"

	sdbus "github.com/coreos/go-systemd/v22/dbus"
)

// Session shares one D-Bus connection among the users of one run (the phases
// of a bootstrap or of a reconcile and its readiness checks) instead of each
// opening its own: connecting and authenticating is most of what a converged
// run spends on systemd. The Managers it hands out leave the connection open
// when they are closed; the Session's own Close closes it. A connection that
// has dropped (systemd re-executed, say) is replaced at the next Connect.
// Safe for concurrent use.
type Session struct {
	mu   sync.Mutex
	conn *sdbus.Conn
	// dial opens a connection (NewSystemConnectionContext; tests count them).
	dial func(ctx context.Context) (*sdbus.Conn, error)
}

// NewSession returns a Session on the system bus (see Connect for the address).
func NewSession() *Session { return &Session{dial: sdbus.NewSystemConnectionContext} }

// Connect returns a Manager on the session's connection, opening it first if
// there is none or it has dropped.
func (s *Session) Connect(ctx context.Context) (*Manager, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil && !s.conn.Connected() {
		s.conn.Close()
		s.conn = nil
	}
	if s.conn == nil {
		c, err := s.dial(ctx)
		if err != nil {
			return nil, fmt.Errorf("connect to systemd over D-Bus: %w", err)
		}
		s.conn = c
	}
	return newManager(sharedConn{s.conn}), nil
}

// Close closes the connection, if open. The Session can connect again.
func (s *Session) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
}

// sharedConn is the session's connection as one Manager sees it: closing the
// Manager leaves it to the session.
type sharedConn struct{ *sdbus.Conn }

func (sharedConn) Close() {}
