package consumer_test

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

// The ordering rule (DESIGN.md section 5) as a test oracle: for each
// credential, the holder is the guest of its newest check-in, unless that
// same guest has a check-out newer than, or as new as, that check-in; then
// nobody. A check-out concerns only its own guest. Ids compare without
// regard to case.

// ruleEvent is one input event of a rule test, as it is published: its ids
// may be in upper case.
type ruleEvent struct {
	id       string
	cred     string
	guest    string // the acs_user_id, or the user_identity_id when identity
	identity bool
	checkIn  bool
	at       time.Time
}

func (e ruleEvent) subject() string {
	if e.checkIn {
		return schemas.SubjectCheckedIn
	}
	return schemas.SubjectCheckedOut
}

func (e ruleEvent) doc() []byte {
	d := schemas.GuestData{ACSCredentialID: e.cred}
	if e.identity {
		d.UserIdentityID = e.guest
	} else {
		d.ACSUserID = e.guest
	}
	return event(e.subject(), e.id, e.at, d)
}

func (e ruleEvent) String() string {
	kind := "out"
	if e.checkIn {
		kind = "in"
	}
	return fmt.Sprintf("%s %s %s@%s", e.id, kind, guestName(e.guest, e.identity), e.at.Format("15:04:05.000"))
}

// ruleHolder is who holds a credential; the zero value is nobody.
type ruleHolder struct {
	guest    string // lower case
	identity bool
}

func (h ruleHolder) String() string {
	if h.guest == "" {
		return "nobody"
	}
	return guestName(h.guest, h.identity)
}

func guestName(id string, identity bool) string {
	if identity {
		return "identity " + id
	}
	return "acs_user " + id
}

// ruleHolders applies the rule to a set of distinct events and returns the
// holder of every credential they name, by lower-case credential id.
func ruleHolders(evs []ruleEvent) map[string]ruleHolder {
	type newest struct {
		ev    ruleEvent
		found bool
	}
	ins := map[string]newest{}
	for _, e := range evs {
		cred := strings.ToLower(e.cred)
		n := ins[cred]
		if e.checkIn && (!n.found || e.at.After(n.ev.at)) {
			n = newest{e, true}
		}
		ins[cred] = n
	}
	out := map[string]ruleHolder{}
	for cred, n := range ins {
		if !n.found {
			out[cred] = ruleHolder{}
			continue
		}
		h := ruleHolder{guest: strings.ToLower(n.ev.guest), identity: n.ev.identity}
		for _, e := range evs {
			if !e.checkIn && strings.EqualFold(e.cred, cred) && e.identity == h.identity &&
				strings.EqualFold(e.guest, h.guest) && !e.at.Before(n.ev.at) {
				h = ruleHolder{}
				break
			}
		}
		out[cred] = h
	}
	return out
}

// seamHolder reads who holds a credential in the fake; a credential the
// fake never saw is held by nobody.
func seamHolder(seam *seamtest.Server, cred string) (acsUser, identity string) {
	acsUser, identity, _ = seam.Holder(cred)
	return acsUser, identity
}

// holds reports whether the fake's holder is the rule's.
func (h ruleHolder) holds(acsUser, identity string) bool {
	switch {
	case h.guest == "":
		return acsUser == "" && identity == ""
	case h.identity:
		return strings.EqualFold(identity, h.guest) ||
			identity == "" && strings.EqualFold(acsUser, seamtest.DerivedACSUserID(h.guest))
	}
	return identity == "" && strings.EqualFold(acsUser, h.guest)
}

// checkHolders compares every credential's holder in the fake with the
// rule's, reports the first few differences with the events of the
// credential (and where each was published, when published is given), and
// returns how many credentials differ.
func checkHolders(t testing.TB, seam *seamtest.Server, evs, published []ruleEvent) (wrong int) {
	t.Helper()
	want := ruleHolders(evs)
	position := map[string]int{}
	for i, e := range published {
		position[e.id] = i + 1
	}
	creds := make([]string, 0, len(want))
	for c := range want {
		creds = append(creds, c)
	}
	sort.Strings(creds)
	for _, c := range creds {
		acsUser, identity := seamHolder(seam, c)
		if want[c].holds(acsUser, identity) {
			continue
		}
		if wrong++; wrong <= 5 {
			var story []string
			for _, e := range sortedByTime(evs) {
				if !strings.EqualFold(e.cred, c) {
					continue
				}
				line := e.String()
				if n, ok := position[e.id]; ok {
					line += fmt.Sprintf(" (published %d of %d)", n, len(published))
				}
				story = append(story, line)
			}
			t.Errorf("credential %s is held by acs_user %q / identity %q, the rule says %s; its events by time:\n\t%s",
				c, acsUser, identity, want[c], strings.Join(story, "\n\t"))
		}
	}
	if wrong > 0 {
		t.Errorf("%d of %d credentials end with the wrong holder", wrong, len(creds))
	}
	return wrong
}

// checkOneOutcomeEach checks that each event has exactly one outcome across
// the results and dead-letter streams, and that no outcome is about an
// unknown event. It returns the outcomes counted by subject.
func checkOneOutcomeEach(t testing.TB, outs []outcome, evs []ruleEvent) map[string]int {
	t.Helper()
	perID := map[string]int{}
	bySubject := map[string]int{}
	for _, o := range outs {
		perID[o.SourceID()]++
		subject := o.Subject
		if o.DL.OriginalSubject != "" {
			subject = "deadletter"
		}
		bySubject[subject]++
	}
	bad := 0
	for _, e := range evs {
		if n := perID[e.id]; n != 1 {
			if bad++; bad <= 5 {
				t.Errorf("event %s has %d outcomes, want 1", e, n)
			}
		}
		delete(perID, e.id)
	}
	if bad > 0 {
		t.Errorf("%d of %d events do not have exactly one outcome", bad, len(evs))
	}
	for id, n := range perID {
		t.Errorf("%d outcomes about %q, which is no input event", n, id)
	}
	return bySubject
}

// checkNoDeadLetters fails the test for every dead letter, showing the first few.
func checkNoDeadLetters(t testing.TB, outs []outcome) {
	t.Helper()
	n := 0
	for _, o := range outs {
		if o.DL.OriginalSubject == "" {
			continue
		}
		if n++; n <= 5 {
			t.Errorf("dead letter for %s (%s): %s %s (http %d, %s)", o.DL.SourceEventID, o.DL.OriginalSubject,
				o.DL.Error.Kind, o.DL.Error.Message, o.DL.Error.HTTPStatus, o.DL.Error.SeamErrorType)
		}
	}
	if n > 0 {
		t.Errorf("%d dead letters, want none", n)
	}
}

func sortedByTime(evs []ruleEvent) []ruleEvent {
	s := append([]ruleEvent(nil), evs...)
	sort.SliceStable(s, func(i, j int) bool { return s[i].at.Before(s[j].at) })
	return s
}

// TestRuleOracle pins the oracle itself to the rule's wording.
func TestRuleOracle(t *testing.T) {
	const (
		cred = "66666666-6666-4666-8666-0000000000c1"
		a    = "33333333-3333-4333-8333-0000000000a1"
		b    = "33333333-3333-4333-8333-0000000000b1"
	)
	t0 := time.Date(2026, 11, 1, 14, 0, 0, 0, time.UTC)
	in := func(g string, min int) ruleEvent {
		return ruleEvent{id: fmt.Sprintf("in-%s-%d", g[len(g)-2:], min), cred: cred, guest: g, checkIn: true, at: t0.Add(time.Duration(min) * time.Minute)}
	}
	out := func(g string, min int) ruleEvent {
		e := in(g, min)
		e.id, e.checkIn = "out"+e.id[2:], false
		return e
	}
	upper := func(e ruleEvent) ruleEvent {
		e.cred, e.guest = strings.ToUpper(e.cred), strings.ToUpper(e.guest)
		return e
	}
	ident := func(e ruleEvent) ruleEvent { e.identity = true; return e }
	for _, tc := range []struct {
		name string
		evs  []ruleEvent
		want string // "", a or b
		id   bool
	}{
		{"nothing but a check-out", []ruleEvent{out(a, 1)}, "", false},
		{"one check-in", []ruleEvent{in(a, 1)}, a, false},
		{"checked out", []ruleEvent{in(a, 1), out(a, 2)}, "", false},
		{"check-out older than the check-in", []ruleEvent{out(a, 1), in(a, 2)}, a, false},
		{"check-out as new as the check-in", []ruleEvent{in(a, 1), out(a, 1)}, "", false},
		{"the newest check-in wins", []ruleEvent{in(b, 2), in(a, 1)}, b, false},
		{"a late check-out does not take the card from the next guest", []ruleEvent{in(a, 1), in(b, 2), out(a, 3)}, b, false},
		{"the next guest checked out too", []ruleEvent{in(a, 1), in(b, 2), out(a, 3), out(b, 4)}, "", false},
		{"an old check-out of the newest guest", []ruleEvent{out(b, 0), in(a, 1), in(b, 2)}, b, false},
		{"a returning guest", []ruleEvent{in(a, 1), out(a, 2), in(b, 3), out(b, 4), in(a, 5)}, a, false},
		{"ids compare without case", []ruleEvent{in(a, 1), upper(out(a, 2)), upper(in(b, 3))}, b, false},
		{"upper-case check-out of a lower-case check-in", []ruleEvent{in(b, 1), upper(out(b, 2))}, "", false},
		{"identity guest", []ruleEvent{ident(in(a, 1)), out(b, 2)}, a, true},
		{"an acs_user check-out is not the identity's", []ruleEvent{ident(in(a, 1)), out(a, 2)}, a, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ruleHolders(tc.evs)[cred]
			if want := (ruleHolder{guest: tc.want, identity: tc.id && tc.want != ""}); got != want {
				t.Errorf("holder %s, want %s", got, want)
			}
			if len(ruleHolders(tc.evs)) != 1 {
				t.Errorf("credentials %v", ruleHolders(tc.evs))
			}
		})
	}

	derived := seamtest.DerivedACSUserID(a)
	for _, tc := range []struct {
		h             ruleHolder
		acs, identity string
		holds         bool
	}{
		{ruleHolder{}, "", "", true},
		{ruleHolder{}, a, "", false},
		{ruleHolder{guest: a}, strings.ToUpper(a), "", true},
		{ruleHolder{guest: a}, b, "", false},
		{ruleHolder{guest: a, identity: true}, derived, strings.ToUpper(a), true},
		{ruleHolder{guest: a, identity: true}, derived, "", true},
		{ruleHolder{guest: a, identity: true}, a, "", false},
		{ruleHolder{guest: a}, derived, a, false},
	} {
		if got := tc.h.holds(tc.acs, tc.identity); got != tc.holds {
			t.Errorf("%s holds (%q, %q) = %v", tc.h, tc.acs, tc.identity, got)
		}
	}
}
