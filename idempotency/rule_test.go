package idempotency_test

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/keyworker/keyworker/idempotency"
)

var (
	t0    = time.Date(2026, 3, 14, 12, 0, 0, 0, time.UTC)
	guest = map[string]idempotency.Guest{
		"A": idempotency.NewGuest("aaaaaaaa-0000-4000-8000-000000000001", ""),
		"B": idempotency.NewGuest("bbbbbbbb-0000-4000-8000-000000000002", ""),
		"C": idempotency.NewGuest("", "cccccccc-0000-4000-8000-000000000003"),
	}
)

// ev is "A+3" for guest A's check-in at t0+3 min, "A-5" for its check-out at t0+5 min.
func ev(s string) idempotency.Event {
	var (
		g    string
		sign byte
		min  int
	)
	if _, err := fmt.Sscanf(s, "%1s%c%d", &g, &sign, &min); err != nil {
		panic(s)
	}
	return idempotency.Event{
		Mark:    idempotency.Mark{Guest: guest[g], Time: t0.Add(time.Duration(min) * time.Minute), Key: s, ID: s},
		CheckIn: sign == '+',
	}
}

func name(g idempotency.Guest) string {
	for n, o := range guest {
		if o.Is(g) {
			return n
		}
	}
	if g.IsZero() {
		return "nobody"
	}
	return fmt.Sprint(g)
}

// state merges events, holder unchanged.
func state(holder string, events ...string) idempotency.CredentialState {
	var s idempotency.CredentialState
	for _, e := range events {
		s = s.Merge(ev(e))
	}
	s.Holder = guest[holder]
	return s
}

func TestPlan_Table(t *testing.T) {
	for _, tc := range []struct {
		name   string
		state  idempotency.CredentialState
		event  string
		apply  bool
		reason string
		by     string
		remove string
		holder string // after the plan's calls
	}{
		{"first check-in assigns", state(""), "A+1", true, "", "", "nobody", "A"},
		{"check-out of the holder unassigns", state("A", "A+1"), "A-2", true, "", "", "nobody", "nobody"},
		{"next guest takes the card: holder removed first", state("A", "A+1"), "B+2", true, "", "", "A", "B"},
		{"late check-out of the previous guest does not take the card", state("B", "A+1", "B+2"), "A-3", false, idempotency.ReasonNotHolder, "B+2", "nobody", "B"},
		{"old check-in after the next guest is stale", state("B", "B+2"), "A+1", false, idempotency.ReasonStale, "B+2", "nobody", "B"},
		{"check-in older than its own check-out", state("", "A-5"), "A+1", false, idempotency.ReasonCheckedOut, "A-5", "nobody", "nobody"},
		{"check-in of a guest who checked out later takes the card from the earlier guest", state("B", "B+1", "A-5"), "A+3", false, idempotency.ReasonCheckedOut, "A-5", "B", "nobody"},
		{"check-out older than the guest's new check-in is stale", state("A", "A+1", "A-2", "A+3"), "A-2", false, idempotency.ReasonStale, "A+3", "nobody", "A"},
		{"check-out of a guest who never held", state(""), "A-2", false, idempotency.ReasonNotHolder, "", "nobody", "nobody"},
		{"Seam holds a guest the rule does not: a check-out removes it", state("A", "B+2"), "A-3", true, "", "", "nobody", "nobody"},
		{"duplicate check-in of the holder is applied again", state("A", "A+1"), "A+1", true, "", "", "nobody", "A"},
		{"a check-out at the same time as its check-in wins", state("A", "A+1"), "A-1", true, "", "", "nobody", "nobody"},
		{"identity guest", state("", "C+1"), "C-2", true, "", "", "nobody", "nobody"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.state.Plan(ev(tc.event))
			if p.Apply != tc.apply || p.Reason != tc.reason {
				t.Fatalf("apply %v reason %q, want %v %q", p.Apply, p.Reason, tc.apply, tc.reason)
			}
			by := ""
			if p.By != nil {
				by = p.By.ID
			}
			if by != tc.by {
				t.Errorf("superseded by %q, want %q", by, tc.by)
			}
			if got := name(p.Remove); got != tc.remove {
				t.Errorf("remove %s, want %s", got, tc.remove)
			}
			if got := name(p.State.Holder); got != tc.holder {
				t.Errorf("holder after %s, want %s", got, tc.holder)
			}
		})
	}
}

// ruleHolder applies the rule to a set of events directly.
func ruleHolder(events []string) string {
	var newest *idempotency.Event
	for _, e := range events {
		x := ev(e)
		if x.CheckIn && (newest == nil || x.Time.After(newest.Time) || x.Time.Equal(newest.Time) && x.Key > newest.Key) {
			newest = &x
		}
	}
	if newest == nil {
		return "nobody"
	}
	for _, e := range events {
		x := ev(e)
		if !x.CheckIn && x.Guest.Is(newest.Guest) && !x.Time.Before(newest.Time) {
			return "nobody"
		}
	}
	return name(newest.Guest)
}

// TestPlan_AnyOrderEndsWithTheRulesHolder carries out plans one event after
// another, as the worker does, in every order of random event sets, and
// checks that Seam's holder ends as the rule says.
func TestPlan_AnyOrderEndsWithTheRulesHolder(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	names := []string{"A", "B", "C"}
	for round := range 3000 {
		var events []string
		for range 1 + rng.IntN(6) {
			sign := "+"
			if rng.IntN(2) == 0 {
				sign = "-"
			}
			events = append(events, fmt.Sprintf("%s%s%d", names[rng.IntN(3)], sign, rng.IntN(8)))
		}
		want := ruleHolder(events)
		order := rng.Perm(len(events))
		var (
			s    idempotency.CredentialState
			seam idempotency.Guest // who Seam holds the card for
		)
		for _, i := range order {
			s.Holder = seam
			p := s.Plan(ev(events[i]))
			if !p.Remove.IsZero() {
				seam = idempotency.Guest{}
			}
			switch e := ev(events[i]); {
			case p.Call && e.CheckIn:
				seam = e.Guest
			case p.Call && seam.Is(e.Guest):
				seam = idempotency.Guest{}
			}
			s = p.State
			if name(s.Holder) != name(seam) {
				t.Fatalf("round %d: state says %s holds, Seam has %s", round, name(s.Holder), name(seam))
			}
		}
		if got := name(seam); got != want {
			var in []string
			for _, i := range order {
				in = append(in, events[i])
			}
			t.Fatalf("round %d: events %v handled in order %v: Seam holder %s, rule says %s", round, events, in, got, want)
		}
	}
}

func TestMerge_KeepsStateBoundedWhateverTheStays(t *testing.T) {
	var s idempotency.CredentialState
	for i := range 5000 {
		g := idempotency.NewGuest(fmt.Sprintf("00000000-0000-4000-8000-%012d", i), "")
		at := t0.Add(time.Duration(i) * time.Hour)
		s = s.Merge(idempotency.Event{Mark: idempotency.Mark{Guest: g, Time: at, Key: fmt.Sprint("in", i)}, CheckIn: true})
		// Late check-outs of earlier guests, after this guest's check-in.
		for k := range 3 {
			old := idempotency.NewGuest(fmt.Sprintf("00000000-0000-4000-8000-%012d", i-k-1), "")
			s = s.Merge(idempotency.Event{Mark: idempotency.Mark{Guest: old, Time: at.Add(time.Minute), Key: fmt.Sprint("out", i, k)}})
		}
	}
	if n := len(s.CheckOuts); n > 3 {
		t.Fatalf("%d check-outs kept after 5000 stays, want only those newer than the newest check-in", n)
	}
	// 100 guests checking out after the newest check-in: bounded.
	for i := range 100 {
		g := idempotency.NewGuest(fmt.Sprintf("11111111-0000-4000-8000-%012d", i), "")
		s = s.Merge(idempotency.Event{Mark: idempotency.Mark{Guest: g, Time: t0.Add(10000 * time.Hour), Key: fmt.Sprint("x", i)}})
	}
	if n := len(s.CheckOuts); n > 32 {
		t.Fatalf("%d check-outs kept, want at most 32", n)
	}
}

func TestGuest_IsComparesCanonicalIDsAndAliases(t *testing.T) {
	lower := idempotency.NewGuest("AAAAAAAA-0000-4000-8000-000000000001", "")
	if !lower.Is(guest["A"]) {
		t.Fatal("ids differing in case must be one guest")
	}
	both := idempotency.Guest{User: guest["A"].User, Identity: guest["C"].Identity}
	if !both.Is(guest["A"]) || !both.Is(guest["C"]) || both.Is(guest["B"]) {
		t.Fatal("a guest named both ways is each of its ids, and no other")
	}
	if (idempotency.Guest{}).Is(idempotency.Guest{}) {
		t.Fatal("nobody is nobody's guest")
	}
}

func TestCredentialKey_IsCaseInsensitive(t *testing.T) {
	if idempotency.CredentialKey("ABCDEF00-0000-4000-8000-000000000001") != idempotency.CredentialKey("abcdef00-0000-4000-8000-000000000001") {
		t.Fatal("credential keys must not depend on case")
	}
	if k := idempotency.CredentialKey("a.b"); k == "c.a.b" {
		t.Fatalf("an id with a dot must be hashed, got %s", k)
	}
}
