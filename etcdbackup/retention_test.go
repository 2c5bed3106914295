package etcdbackup

import (
	"slices"
	"testing"
	"time"
)

// TestRetention: every backup younger than the hourly window stays; older
// ones keep the newest of each UTC day while younger than the daily window;
// everything else goes.
func TestRetention(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 30, 0, 0, time.UTC)
	var times []time.Time // hourly for 10 days, newest first
	for h := 0; h < 240; h++ {
		times = append(times, now.Add(-time.Duration(h)*time.Hour).Truncate(time.Hour))
	}
	times = append(times, now.AddDate(-2, 0, 0)) // older than a year
	r := DefaultRetention
	gone := r.Expired(times, now)
	kept := slices.DeleteFunc(slices.Clone(times), func(t time.Time) bool { return slices.Contains(gone, t) })

	for _, k := range kept {
		if now.Sub(k) >= r.Daily {
			t.Errorf("kept %s, older than a year", k)
		}
	}
	perDay := map[string]int{}
	for _, k := range kept {
		if now.Sub(k) >= r.Hourly {
			perDay[k.Format(time.DateOnly)]++
		}
	}
	for day, n := range perDay {
		if n != 1 {
			t.Errorf("%s: %d backups older than 7 days kept, want the newest only", day, n)
		}
	}
	if n := len(kept) - len(perDay); n != 7*24 {
		t.Errorf("%d backups of the last 7 days kept, want all %d", n, 7*24)
	}
	// The kept one of each old day is that day's newest.
	for _, k := range kept {
		if now.Sub(k) >= r.Hourly && k.Hour() != 23 && k.Format(time.DateOnly) != now.Add(-r.Hourly).Format(time.DateOnly) {
			t.Errorf("kept %s, not the newest of its day", k)
		}
	}
	if !slices.Contains(gone, now.AddDate(-2, 0, 0)) {
		t.Error("a two-year-old backup is kept")
	}
	if got := r.Expired(nil, now); len(got) != 0 {
		t.Errorf("nothing to expire: %v", got)
	}
}
