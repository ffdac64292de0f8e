package idempotency

import (
	"slices"
	"strings"
	"time"
)

// The ordering rule (DESIGN section 5): for each credential, the holder is
// the guest of its newest check-in, unless that same guest has a check-out
// newer than that check-in (or at the same time): then nobody. A check-out
// concerns only its own guest.
//
// CredentialState keeps just enough to apply the rule whatever the order
// events arrive in: the newest check-in, and the check-outs not older than
// it (older ones can never matter again, since only a check-in newer than
// the newest one can change the holder). Merging an event is commutative and
// idempotent, so every arrival order ends in the same state.

// Guest names one guest by the ids events and Seam use for it, lower case.
// An event names one of them; Seam's credential names the acs_user_id and,
// when assigned through a user identity, that identity too, so a guest
// checked in by identity and out by acs user id is still one guest once
// the worker has seen Seam's answer.
type Guest struct {
	User     string `json:"u,omitempty"`
	Identity string `json:"i,omitempty"`
}

// NewGuest returns the guest with these ids, in canonical (lower) case.
func NewGuest(acsUserID, userIdentityID string) Guest {
	return Guest{User: strings.ToLower(acsUserID), Identity: strings.ToLower(userIdentityID)}
}

// IsZero reports whether g names nobody.
func (g Guest) IsZero() bool { return g.User == "" && g.Identity == "" }

// Is reports whether g and o are the same guest: they share an id.
func (g Guest) Is(o Guest) bool {
	return g.User != "" && g.User == o.User || g.Identity != "" && g.Identity == o.Identity
}

// with returns g completed by the ids of o, when o is the same guest.
func (g Guest) with(o Guest) Guest {
	if !g.Is(o) {
		return g
	}
	if g.User == "" {
		g.User = o.User
	}
	if g.Identity == "" {
		g.Identity = o.Identity
	}
	return g
}

// Mark is one event as the ordering state remembers it.
type Mark struct {
	Guest Guest     `json:"g"`
	Time  time.Time `json:"t"`
	// Key is the event's idempotency key (see Key): ties between two
	// check-ins at the same time go to the greater key, the same on every replica.
	Key    string `json:"k"`
	ID     string `json:"id,omitempty"`
	Source string `json:"src,omitempty"`
}

// newer reports whether check-in m wins over check-in o.
func (m Mark) newer(o Mark) bool {
	return m.Time.After(o.Time) || m.Time.Equal(o.Time) && m.Key > o.Key
}

// Event is an event to merge into a credential's state.
type Event struct {
	Mark
	CheckIn bool
}

// maxCheckOuts bounds the check-outs kept per credential. Only check-outs
// not older than the newest check-in are kept, one per guest: in a hotel
// that is the holder and the odd late check-out of a previous guest. Past
// the bound the oldest of another guest than the newest check-in's is
// dropped; it could matter only if its guest later sent a check-in older
// than that check-out yet newer than every check-in seen, after 32 other
// guests had checked out since.
const maxCheckOuts = 32

// maxDecisions bounds the recent decisions kept per credential.
const maxDecisions = 8

// Decision is what the rule decided for one event, kept so that a
// redelivery of it (its worker died after storing the state, before
// publishing) publishes the same outcome.
type Decision struct {
	Key    string `json:"k"`
	Apply  bool   `json:"a,omitempty"`
	Reason string `json:"r,omitempty"`
	By     *Mark  `json:"by,omitempty"`
}

// CredentialState is the stored state of one credential: the rule's inputs
// (CheckIn, CheckOuts), the holder as far as the worker has made Seam hold
// it, and the lease of the one owner that may call Seam for it.
type CredentialState struct {
	CheckIn   *Mark  `json:"check_in,omitempty"`
	CheckOuts []Mark `json:"check_outs,omitempty"`
	// Holder is who Seam holds the credential for, as the worker last
	// made or saw it. HolderUnknown says Seam may hold it otherwise (a
	// change was sent and its outcome never learnt): read it before use.
	Holder        Guest `json:"holder,omitzero"`
	HolderUnknown bool  `json:"holder_unknown,omitempty"`

	// Decisions are the latest decided events, newest last.
	Decisions []Decision `json:"decisions,omitempty"`

	LeaseOwner    string    `json:"lease_owner,omitempty"`
	LeaseUntil    time.Time `json:"lease_until,omitzero"`
	LeaseEventKey string    `json:"lease_event_key,omitempty"`
}

// decided returns the stored decision for the event with key, if any.
func (s CredentialState) decided(key string) (Decision, bool) {
	for _, d := range s.Decisions {
		if d.Key == key {
			return d, true
		}
	}
	return Decision{}, false
}

// remember returns s with d as its newest decision.
func (s CredentialState) remember(d Decision) CredentialState {
	ds := slices.DeleteFunc(slices.Clone(s.Decisions), func(o Decision) bool { return o.Key == d.Key })
	ds = append(ds, d)
	if len(ds) > maxDecisions {
		ds = ds[len(ds)-maxDecisions:]
	}
	s.Decisions = ds
	return s
}

// Desired is the holder the rule gives: zero for nobody.
func (s CredentialState) Desired() Guest {
	if s.CheckIn == nil || s.checkedOut(s.CheckIn.Guest) != nil {
		return Guest{}
	}
	return s.CheckIn.Guest
}

// checkedOut returns g's kept check-out, if any; kept ones are never older
// than the newest check-in.
func (s CredentialState) checkedOut(g Guest) *Mark {
	for i := range s.CheckOuts {
		if s.CheckOuts[i].Guest.Is(g) {
			return &s.CheckOuts[i]
		}
	}
	return nil
}

// Merge returns s with ev added. It is commutative and idempotent.
func (s CredentialState) Merge(ev Event) CredentialState {
	s.CheckOuts = slices.Clone(s.CheckOuts)
	if ev.CheckIn {
		if s.CheckIn != nil && !ev.newer(*s.CheckIn) {
			return s
		}
		m := ev.Mark
		// What the state knows of the guest's other id goes with it.
		if s.CheckIn != nil {
			m.Guest = m.Guest.with(s.CheckIn.Guest)
		}
		m.Guest = m.Guest.with(s.Holder)
		s.CheckIn = &m
		s.CheckOuts = slices.DeleteFunc(s.CheckOuts, func(c Mark) bool { return c.Time.Before(m.Time) })
		return s
	}
	if s.CheckIn != nil && ev.Time.Before(s.CheckIn.Time) {
		return s // can never matter: see CredentialState
	}
	for i, c := range s.CheckOuts {
		if c.Guest == ev.Guest {
			if ev.Time.After(c.Time) || ev.Time.Equal(c.Time) && ev.Key > c.Key {
				s.CheckOuts[i] = ev.Mark
			}
			return s
		}
	}
	s.CheckOuts = append(s.CheckOuts, ev.Mark)
	if len(s.CheckOuts) > maxCheckOuts {
		// Drop the oldest of another guest than the newest check-in's: that
		// one decides who holds the card now.
		oldest := -1
		for i, c := range s.CheckOuts {
			if s.CheckIn != nil && c.Guest.Is(s.CheckIn.Guest) {
				continue
			}
			if oldest < 0 || c.Time.Before(s.CheckOuts[oldest].Time) {
				oldest = i
			}
		}
		s.CheckOuts = slices.Delete(s.CheckOuts, oldest, oldest+1)
	}
	return s
}

// Skip reasons of a Plan that does not apply its event.
const (
	// ReasonStale: a newer check-in of the credential supersedes the event.
	ReasonStale = "stale"
	// ReasonCheckedOut: a check-in whose own guest has a newer check-out.
	ReasonCheckedOut = "checked_out"
	// ReasonNotHolder: a check-out of a guest who does not hold the credential.
	ReasonNotHolder = "not_holder"
)

// Plan is what one event does to a credential: the Seam calls to make and
// the state to store once they succeed.
type Plan struct {
	// State is the stored state with the event merged; Holder is what it
	// will be once the calls succeed.
	State CredentialState
	// Remove is a holder to unassign before anything else: one the rule no
	// longer gives the card to. Zero: none.
	Remove Guest
	// Apply says the event's outcome is a result (assigned, unassigned):
	// its own request (assign for a check-in, unassign for a check-out) is
	// what the rule wants.
	Apply bool
	// Call says to send that request to Seam. It is Apply, but for an event
	// decided before whose request the rule no longer wants (a newer event
	// came since): then the result is published without it.
	Call bool
	// Reason (when !Apply) says why the event is skipped, and By which
	// event superseded it (nil when none did: a check-out of a guest who
	// never held the card).
	Reason string
	By     *Mark
}

// Calls reports whether the plan needs Seam at all.
func (p Plan) Calls() bool { return p.Call || !p.Remove.IsZero() }

// Plan decides what ev does to a credential in state s, whose Holder must be
// known. The event's own call is made when the rule gives the card to its
// guest (a check-in) or takes it from a guest who has or may have it (a
// check-out of the holder by the rule or by Seam); any other holder the rule
// no longer gives the card to is removed.
func (s CredentialState) Plan(ev Event) Plan {
	if d, ok := s.decided(ev.Key); ok {
		// Decided before, its state stored: the same outcome again. Its
		// own request is sent again (a no-op in Seam by now, for the
		// credential the result carries) only while the rule still wants it.
		call := d.Apply && s.Desired().Is(ev.Guest) == ev.CheckIn
		return Plan{State: s, Apply: d.Apply, Call: call, Reason: d.Reason, By: d.By}
	}
	before := s.Desired()
	next := s.Merge(ev)
	want := next.Desired()
	p := Plan{State: next}
	guest := ev.Guest
	switch {
	case ev.CheckIn && want.Is(guest):
		p.Apply = true
		next.Holder = guest.with(s.Holder)
	case ev.CheckIn:
		p.By = next.CheckIn
		p.Reason = ReasonStale
		if next.CheckIn.Key == ev.Key {
			p.Reason, p.By = ReasonCheckedOut, next.checkedOut(guest)
		}
	case want.Is(guest):
		p.Reason, p.By = ReasonStale, next.CheckIn // the guest checked in again since
	case s.Holder.Is(guest) || before.Is(guest):
		p.Apply = true
	default:
		p.Reason, p.By = ReasonNotHolder, next.CheckIn
	}
	if !s.Holder.IsZero() && !want.Is(s.Holder) && !(p.Apply && !ev.CheckIn && s.Holder.Is(guest)) {
		p.Remove = s.Holder
	}
	switch {
	case p.Apply && ev.CheckIn:
	case p.Apply || !p.Remove.IsZero():
		next.Holder = Guest{}
	}
	if next.CheckIn != nil && !next.Holder.IsZero() {
		// What Seam said of the holder completes the check-in's guest.
		ci := *next.CheckIn
		ci.Guest = ci.Guest.with(next.Holder)
		next.CheckIn = &ci
	}
	p.Call = p.Apply
	p.State = next.remember(Decision{Key: ev.Key, Apply: p.Apply, Reason: p.Reason, By: p.By})
	return p
}
