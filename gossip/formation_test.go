package gossip

import (
	"testing"
	"time"
)

func TestFormationPolicy(t *testing.T) {
	p := formationPolicy{Waits: []time.Duration{time.Second, 2 * time.Second}, Every: 3 * time.Second, Quiet: 2, Extra: 3}
	cases := []struct {
		name         string
		round, quiet int
		wait         time.Duration
		more         bool
	}{
		{"the fixed rounds run whatever the view does", 0, 5, time.Second, true},
		{"the last fixed round", 1, 5, 2 * time.Second, true},
		{"after them, a view still growing goes on every Every", 2, 0, 3 * time.Second, true},
		{"one quiet round is not yet enough", 3, 1, 3 * time.Second, true},
		{"Quiet rounds in a row without growth end it", 3, 2, 0, false},
		{"a view that never stops growing ends after Extra more", 5, 0, 0, false},
	}
	for _, c := range cases {
		wait, more := p.next(c.round, c.quiet)
		if wait != c.wait || more != c.more {
			t.Errorf("%s: next(%d, %d) = %v, %v; want %v, %v", c.name, c.round, c.quiet, wait, more, c.wait, c.more)
		}
	}
	if _, more := (formationPolicy{}).next(0, 0); more {
		t.Error("a policy without rounds (-scale.noformation) makes an exchange")
	}
}
