package idempotency_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/keyworker/keyworker/idempotency"
)

// TestReview_CapNeverDropsTheCheckedInGuestsOwnCheckOut: guest A checks in
// and out; then 32 other guests' late check-outs (not holders) arrive. The
// cap drops the oldest kept check-out, which is A's own: A becomes the
// rule's holder again and an old (or replayed) check-in of A assigns the key
// to a guest who has checked out.
func TestReview_CapNeverDropsTheCheckedInGuestsOwnCheckOut(t *testing.T) {
	a := idempotency.NewGuest("aaaaaaaa-0000-4000-8000-000000000001", "")
	mk := func(g idempotency.Guest, min int, in bool, key string) idempotency.Event {
		return idempotency.Event{Mark: idempotency.Mark{Guest: g, Time: t0.Add(time.Duration(min) * time.Minute), Key: key, ID: key}, CheckIn: in}
	}
	var s idempotency.CredentialState
	s = s.Merge(mk(a, 10, true, "A+10"))
	s = s.Merge(mk(a, 11, false, "A-11"))
	if !s.Desired().IsZero() {
		t.Fatal("setup: A checked out, want nobody")
	}
	for i := range 32 {
		g := idempotency.NewGuest(fmt.Sprintf("bbbbbbbb-0000-4000-8000-%012d", i), "")
		s = s.Merge(mk(g, 12+i, false, fmt.Sprintf("G%d-out", i)))
	}
	if d := s.Desired(); !d.IsZero() {
		t.Errorf("after 32 other guests' check-outs the rule's holder is %v: A checked out at +11 after its check-in at +10, want nobody", d)
	}
	// A's older check-in of a previous stay, arriving late or replayed.
	p := s.Plan(mk(a, 5, true, "A+5"))
	if p.Apply {
		t.Errorf("A's check-in at +5 is planned to assign the key to A, who checked out at +11")
	}
}
