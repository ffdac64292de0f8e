package seamtest

import (
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyworker/keyworker/seamclient"
)

// clock is a settable time for the fake.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newClock() *clock { return &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)} }

func syncState(t *testing.T, o *object) (synced string, at string, warnings, errs []map[string]any) {
	t.Helper()
	_ = json.Unmarshal(o.vals["warnings"], &warnings)
	_ = json.Unmarshal(o.vals["errors"], &errs)
	return string(o.vals["is_latest_desired_state_synced_with_provider"]), o.str("latest_desired_state_synced_with_provider_at"), warnings, errs
}

func getCred(t *testing.T, s *Server, id string) *object {
	t.Helper()
	return post(t, s, seamclient.PathGet, `{"acs_credential_id":"`+id+`"}`).credential(t)
}

func TestFake_DefaultSyncIsImmediateAndAssignIssuesNoCard(t *testing.T) {
	s := NewServer(WithAutoCreate())
	t.Cleanup(s.Close)
	a := post(t, s, seamclient.PathAssign, assignBody(cred1, userA)).credential(t)
	if synced, _, w, e := syncState(t, a); synced != "true" || len(w) != 0 || len(e) != 0 {
		t.Fatalf("default sync delay 0: answer synced=%s warnings %v errors %v, want synced at once", synced, w, e)
	}
	if string(a.vals["is_issued"]) != "false" {
		t.Fatalf("assign set is_issued=%s: assigning encodes no card", a.vals["is_issued"])
	}
}

func TestFake_SyncAfterTheDelay(t *testing.T) {
	c := newClock()
	s := NewServer(WithAutoCreate(), WithClock(c.now), WithSyncDelay(2*time.Second))
	t.Cleanup(s.Close)
	a := post(t, s, seamclient.PathAssign, assignBody(cred1, userA)).credential(t)
	if synced, _, w, _ := syncState(t, a); synced != "false" || len(w) != 0 {
		t.Fatalf("answer to assign: synced=%s warnings %v, want unsynced and no warning for a PIN", synced, w)
	}
	c.add(1999 * time.Millisecond)
	if synced, _, _, _ := syncState(t, getCred(t, s, cred1)); synced != "false" {
		t.Fatalf("synced=%s before the delay passed", synced)
	}
	// A no-op assign (same holder) changes nothing and does not restart the sync.
	post(t, s, seamclient.PathAssign, assignBody(cred1, userA))
	c.add(time.Millisecond)
	synced, at, _, errs := syncState(t, getCred(t, s, cred1))
	if synced != "true" || at != "2026-12-01T12:00:02.000Z" || len(errs) != 0 {
		t.Fatalf("after the delay: synced=%s at %s errors %v, want synced at 12:00:02", synced, at, errs)
	}
	// Unassign too leaves it unsynced until the delay has passed.
	u := post(t, s, seamclient.PathUnassign, assignBody(cred1, userA)).credential(t)
	if synced, _, _, _ := syncState(t, u); synced != "false" {
		t.Fatalf("answer to unassign: synced=%s, want false", synced)
	}
	c.add(2 * time.Second)
	if got, ok := s.Credential(cred1); !ok || !json.Valid(got) {
		t.Fatal("credential not readable")
	}
	o, _ := s.credentialObject(cred1)
	if synced, _, _, _ := syncState(t, o); synced != "true" {
		t.Fatalf("Credential() after the delay: synced=%s, want true", synced)
	}
}

func TestFake_CardWaitsToBeIssued(t *testing.T) {
	c := newClock()
	s := NewServer(WithClock(c.now), WithSyncDelay(time.Second))
	t.Cleanup(s.Close)
	s.AddUser(userA)
	card := `{"acs_credential_id":"` + cred2 + `","acs_system_id":"` + unknown + `","connected_account_id":"` + unknown +
		`","workspace_id":"` + unknown + `","display_name":"Room 101","access_method":"card","is_issued":false,` +
		`"created_at":"2026-12-01T00:00:00.000Z","errors":[],"warnings":[],"is_managed":true,` +
		`"visionline_metadata":{"card_function_type":"guest"}}`
	if err := s.AddCredential(json.RawMessage(card)); err != nil {
		t.Fatal(err)
	}
	a := post(t, s, seamclient.PathAssign, assignBody(cred2, userA)).credential(t)
	_, _, w, _ := syncState(t, a)
	if len(w) != 1 || w[0]["warning_code"] != "waiting_to_be_issued" || w[0]["created_at"] == nil || w[0]["message"] == nil {
		t.Fatalf("warnings %v, want one waiting_to_be_issued", w)
	}
	c.add(time.Second)
	synced, _, w, _ := syncState(t, getCred(t, s, cred2))
	if synced != "true" || len(w) != 1 {
		t.Fatalf("after sync: synced=%s warnings %v: the card is synced but still to be encoded", synced, w)
	}
	if string(getCred(t, s, cred2).vals["visionline_metadata"]) != `{"card_function_type":"guest"}` {
		t.Fatal("manufacturer metadata changed")
	}
	u := post(t, s, seamclient.PathUnassign, assignBody(cred2, userA)).credential(t)
	if _, _, w, _ := syncState(t, u); len(w) != 0 {
		t.Fatalf("unassigned card still waits to be issued: %v", w)
	}
}

func TestFake_SyncFailureLeavesAnError(t *testing.T) {
	c := newClock()
	s := NewServer(WithAutoCreate(), WithClock(c.now), WithSyncDelay(time.Second))
	t.Cleanup(s.Close)
	s.SetSyncFailure("provider_rejected", "The lock system refused the change.")
	post(t, s, seamclient.PathAssign, assignBody(cred1, userA))
	if _, _, _, errs := syncState(t, getCred(t, s, cred1)); len(errs) != 0 {
		t.Fatalf("errors %v before the sync came due", errs)
	}
	c.add(time.Second)
	synced, _, _, errs := syncState(t, getCred(t, s, cred1))
	if synced != "false" || len(errs) != 1 || errs[0]["error_code"] != "provider_rejected" ||
		errs[0]["message"] != "The lock system refused the change." || errs[0]["created_at"] != "2026-12-01T12:00:01.000Z" {
		t.Fatalf("failed sync: synced=%s errors %v", synced, errs)
	}
	// Syncs succeed again once the failure is switched off; a new change clears the error.
	s.SetSyncFailure("", "")
	post(t, s, seamclient.PathAssign, assignBody(cred1, userB))
	c.add(time.Second)
	if synced, _, _, errs := syncState(t, getCred(t, s, cred1)); synced != "true" || len(errs) != 0 {
		t.Fatalf("after a successful sync: synced=%s errors %v", synced, errs)
	}
}

func TestFake_EmptySuccessStillAvailableWithSync(t *testing.T) {
	c := newClock()
	s := NewServer(WithAutoCreate(), WithClock(c.now), WithSyncDelay(time.Second), WithEmptySuccess())
	t.Cleanup(s.Close)
	if a := post(t, s, seamclient.PathAssign, assignBody(cred1, userA)); a.status != 200 || string(a.body) != "{}" {
		t.Fatalf("assign with empty success: %d %s", a.status, a.body)
	}
	if synced, _, _, _ := syncState(t, getCred(t, s, cred1)); synced != "false" {
		t.Fatalf("synced=%s right after the change", synced)
	}
}

// credentialObject is credential, taking f.mu.
func (f *Fake) credentialObject(id string) (*object, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.credential(strings.ToLower(id))
}
