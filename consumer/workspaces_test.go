package consumer_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/consumer/embedded/natstest"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

// hotel is one Seam workspace of a hotel group: its own fake, key and property.
type hotel struct {
	id, key, property string
	seam              *seamtest.Server
}

func newHotel(t *testing.T, id, property string, opts ...seamtest.Option) *hotel {
	t.Helper()
	key := "seam_key_" + id
	s := seamtest.NewServer(append([]seamtest.Option{seamtest.WithAutoCreate(), seamtest.WithAPIKey(key)}, opts...)...)
	t.Cleanup(s.Close)
	return &hotel{id: id, key: key, property: property, seam: s}
}

// workspace is the hotel as the worker's routing has it.
func (ho *hotel) workspace(t *testing.T, timeout time.Duration) consumer.Workspace {
	t.Helper()
	c, err := seamclient.New(ho.seam.URL, ho.key, seamclient.WithTimeout(timeout), seamclient.WithWorkspaceID(ho.id))
	if err != nil {
		t.Fatal(err)
	}
	return consumer.Workspace{ID: ho.id, Seam: c, Properties: []string{ho.property}}
}

// checkInsAt publishes n check-ins for the hotel's property, each for its
// own credential and guest, and returns their ids.
func (h *harness) checkInsAt(ho *hotel, n int) []string {
	h.t.Helper()
	return h.checkInsFrom(ho, 0, n)
}

// checkInsFrom is checkInsAt for the guests from, from+1, ...
func (h *harness) checkInsFrom(ho *hotel, from, n int) []string {
	h.t.Helper()
	ids := make([]string, 0, n)
	for i := from; i < from+n; i++ {
		ids = append(ids, fmt.Sprintf("%s-%d", ho.id, i))
		d := schemas.GuestData{
			ACSCredentialID: credOf(ho, i),
			ACSUserID:       fmt.Sprintf("55555555-5555-4555-8555-%012d", i),
			PropertyID:      ho.property,
		}
		h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, ids[len(ids)-1], time.Now(), d), "")
	}
	return ids
}

func credOf(ho *hotel, i int) string {
	return fmt.Sprintf("88888888-8888-4888-%04x-%012d", 0x8000+len(ho.id)+int(ho.id[len(ho.id)-1]), i)
}

// byWorkspace counts outcomes per source event and checks each names the
// workspace of its hotel.
func outcomesOf(t *testing.T, outs []outcome, ho *hotel) map[string]outcome {
	t.Helper()
	got := map[string]outcome{}
	for _, o := range outs {
		if !strings.HasPrefix(o.SourceID(), ho.id+"-") {
			continue
		}
		if _, dup := got[o.SourceID()]; dup {
			t.Errorf("%s: more than one outcome", o.SourceID())
		}
		got[o.SourceID()] = o
	}
	return got
}

// assertHotelDone checks one credential.assigned per event of ho, naming
// its workspace, the fake's final state, and that every request it got
// carried its own seam-workspace header and was for its own credentials.
func assertHotelDone(t *testing.T, outs []outcome, ho *hotel, n int) {
	t.Helper()
	got := outcomesOf(t, outs, ho)
	if len(got) != n {
		t.Errorf("%s: %d outcomes, want %d", ho.id, len(got), n)
	}
	for id, o := range got {
		if o.Subject != schemas.SubjectAssigned {
			t.Errorf("%s: %s %s", id, o.Subject, o.DL.Error.Message)
			continue
		}
		if o.Result.WorkspaceID != ho.id {
			t.Errorf("%s: workspace_id %q, want %q", id, o.Result.WorkspaceID, ho.id)
		}
	}
	for i := range n {
		if !ho.seam.IsAssigned(credOf(ho, i), fmt.Sprintf("55555555-5555-4555-8555-%012d", i)) {
			t.Errorf("%s: credential %d not assigned in its workspace", ho.id, i)
		}
	}
	for _, r := range ho.seam.Requests() {
		if h := r.Header.Get("seam-workspace"); h != ho.id {
			t.Errorf("%s got a request with seam-workspace %q", ho.id, h)
		}
		var body struct {
			Cred string `json:"acs_credential_id"`
		}
		_ = json.Unmarshal(r.Body, &body)
		if body.Cred != "" && !strings.HasPrefix(body.Cred, credOf(ho, 0)[:23]) {
			t.Errorf("%s got a request for credential %s of another workspace", ho.id, body.Cred)
		}
	}
}

func TestWorkspaces_EachPropertyReachesOnlyItsOwnWorkspace(t *testing.T) {
	h := newHarness(t, fastConfig())
	a := newHotel(t, "ws_grand", "grand-hotel")
	b := newHotel(t, "ws_harbour", "harbour-inn")
	h.start(1, consumer.WithWorkspaces([]consumer.Workspace{a.workspace(t, h.cfg.SeamTimeout), b.workspace(t, h.cfg.SeamTimeout)}))
	const n = 10
	h.checkInsAt(a, n)
	h.checkInsAt(b, n)
	outs := h.waitOutcomes(2*n, 20*time.Second)
	h.waitDrained(10 * time.Second)
	assertHotelDone(t, outs, a, n)
	assertHotelDone(t, outs, b, n)
	if h.seam.Calls("") != 0 {
		t.Errorf("the worker's own Seam client got %d calls with routing in force", h.seam.Calls(""))
	}
	// WithAPIKey makes each fake refuse any other key with 401; none came.
	if a.seam.Answers(401)+b.seam.Answers(401) != 0 {
		t.Errorf("a workspace was sent another's key: %d and %d answers 401", a.seam.Answers(401), b.seam.Answers(401))
	}
}

func TestWorkspaces_UnknownPropertyDeadLettersNamingIt(t *testing.T) {
	h := newHarness(t, fastConfig())
	a := newHotel(t, "ws_grand", "grand-hotel")
	h.start(1, consumer.WithWorkspaces([]consumer.Workspace{a.workspace(t, h.cfg.SeamTimeout)}))
	d := schemas.GuestData{
		ACSCredentialID: "88888888-8888-4888-8888-000000000001",
		ACSUserID:       "55555555-5555-4555-8555-000000000001",
		PropertyID:      "seaside-lodge",
	}
	h.publish(schemas.SubjectCheckedIn, event(schemas.SubjectCheckedIn, "evt-lost", time.Now(), d), "")
	outs := h.waitOutcomes(1, 10*time.Second)
	dl := outs[0].DL
	if outs[0].Subject != schemas.DeadLetterSubject(schemas.SubjectCheckedIn) || dl.Error.Kind != schemas.ErrorKindPermanent {
		t.Fatalf("outcome %s kind %q, want a permanent dead letter", outs[0].Subject, dl.Error.Kind)
	}
	if !strings.Contains(dl.Error.Message, `"seaside-lodge"`) {
		t.Errorf("dead letter message %q does not name the property", dl.Error.Message)
	}
	if dl.WorkspaceID != "" || a.seam.Calls("") != 0 {
		t.Errorf("unrouted event: workspace_id %q, %d Seam calls", dl.WorkspaceID, a.seam.Calls(""))
	}
}

func TestWorkspaces_ReloadRoutesANewPropertyAndKeepsTheOldOnABadRouting(t *testing.T) {
	h := newHarness(t, fastConfig())
	a := newHotel(t, "ws_grand", "grand-hotel")
	b := newHotel(t, "ws_harbour", "harbour-inn")
	reg := prometheus.NewRegistry()
	w := h.newWorker(consumer.WithWorkspaces([]consumer.Workspace{a.workspace(t, h.cfg.SeamTimeout)}),
		consumer.WithMetrics(consumer.NewMetrics(reg, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	dup := a.workspace(t, h.cfg.SeamTimeout)
	dup.ID = "ws_other"
	if err := w.SetWorkspaces([]consumer.Workspace{a.workspace(t, h.cfg.SeamTimeout), dup}); !errors.Is(err, consumer.ErrInvalidRouting) {
		t.Fatalf("a property routed twice: %v, want ErrInvalidRouting", err)
	}
	if hasWorkspaceSeries(t, reg, "keyworker_seam_gate", "ws_other") {
		t.Error("a refused routing left gate series of its workspace")
	}
	if err := w.SetWorkspaces([]consumer.Workspace{a.workspace(t, h.cfg.SeamTimeout), b.workspace(t, h.cfg.SeamTimeout)}); err != nil {
		t.Fatal(err)
	}
	h.checkInsAt(a, 3)
	h.checkInsAt(b, 3)
	outs := h.waitOutcomes(6, 20*time.Second)
	assertHotelDone(t, outs, a, 3)
	assertHotelDone(t, outs, b, 3)
	if got := len(w.Workspaces()); got != 2 {
		t.Errorf("%d workspaces after the reload, want 2", got)
	}
	if err := w.SetWorkspaces([]consumer.Workspace{b.workspace(t, h.cfg.SeamTimeout)}); err != nil {
		t.Fatal(err)
	}
	if hasWorkspaceSeries(t, reg, "keyworker_seam_gate", a.id) || !hasWorkspaceSeries(t, reg, "keyworker_seam_gate", b.id) {
		t.Error("after a reload without it, a workspace's gate series stay (or the kept one's went)")
	}
}

// hasWorkspaceSeries reports whether reg holds a series of metric for workspace.
func hasWorkspaceSeries(t *testing.T, reg *prometheus.Registry, metric, workspace string) bool {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if f.GetName() == metric && l.GetName() == "workspace" && l.GetValue() == workspace {
					return true
				}
			}
		}
	}
	return false
}

// TestWorkspaces_OneWorkspaceDownNeverHoldsTheOther: while one workspace is
// down (or refuses its key), the other's events are all handled; the first
// one's are handled once it is back, none dead-lettered.
func TestWorkspaces_OneWorkspaceDownNeverHoldsTheOther(t *testing.T) {
	for _, tc := range []struct {
		name string
		down time.Duration // at least this long
		fail func(*seamtest.Server, bool)
	}{
		{"refused key", 0, func(s *seamtest.Server, on bool) { s.SetRefuseKey(on) }},
		{"outage 60s", 60 * time.Second, func(s *seamtest.Server, on bool) {
			if on {
				s.SetDown(seamtest.DownMixed)
			} else {
				s.SetDown(seamtest.DownOff)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.down > 0 && testing.Short() {
				t.Skip("keeps a workspace down for 60 s: skipped under -short")
			}
			cfg := fastConfig()
			cfg.Concurrency = 8
			cfg.RetryFor = 10 * time.Minute
			h := newHarness(t, cfg)
			a := newHotel(t, "ws_grand", "grand-hotel")
			b := newHotel(t, "ws_harbour", "harbour-inn")
			reg := prometheus.NewRegistry()
			w := h.newWorker(consumer.WithWorkspaces([]consumer.Workspace{a.workspace(t, cfg.SeamTimeout), b.workspace(t, cfg.SeamTimeout)}),
				consumer.WithMetrics(consumer.NewMetrics(reg, nil)))
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- w.Run(ctx) }()
			t.Cleanup(func() { cancel(); <-done })

			tc.fail(a.seam, true)
			downAt := time.Now()
			const n = 30 // more than the concurrency: some of a's wait, some are handed back
			aIDs := h.checkInsAt(a, n)
			natstest.WaitFor(t, 20*time.Second, func() error {
				for _, x := range w.Workspaces() {
					if x.ID == a.id && x.Health != consumer.SeamHealthy {
						return nil
					}
				}
				return errors.New("workspace a's gate is still closed")
			})
			bIDs := h.checkInsAt(b, n)
			// Every one of b's events finishes while a is still down.
			outs := h.waitOutcomes(n, 30*time.Second)
			assertHotelDone(t, outs, b, n)
			if got := len(outcomesOf(t, outs, a)); got != 0 {
				t.Fatalf("%d outcomes of the workspace that is down", got)
			}
			for _, x := range w.Workspaces() {
				if x.ID == a.id && x.Health == consumer.SeamHealthy {
					t.Fatalf("workspace a healthy again before it was brought back")
				}
				if x.ID == b.id && x.Health != consumer.SeamHealthy {
					t.Fatalf("workspace b is %s: a's outage leaked into it", x.Health)
				}
			}
			if s, _ := w.SeamHealth(); s != consumer.SeamHealthy {
				t.Errorf("worker SeamHealth %s with one workspace healthy, want healthy", s)
			}
			var aState consumer.SeamHealth
			for _, x := range w.Workspaces() {
				if x.ID == a.id {
					aState = x.Health
				}
			}
			for _, m := range []struct {
				ws, state string
			}{{a.id, aState.String()}, {b.id, "healthy"}} {
				if v := gaugeValue(t, reg, "keyworker_seam_gate", map[string]string{"workspace": m.ws, "state": m.state}); v != 1 {
					t.Errorf("keyworker_seam_gate{workspace=%q,state=%q} = %v, want 1", m.ws, m.state, v)
				}
			}
			// Counted once settled, just after the outcome is published.
			natstest.WaitFor(t, 10*time.Second, func() error {
				if v := gaugeValue(t, reg, "keyworker_workspace_events_total", map[string]string{"workspace": b.id, "outcome": "assigned"}); v != n {
					return fmt.Errorf("keyworker_workspace_events_total{workspace=%q,outcome=assigned} = %v, want %d", b.id, v, n)
				}
				return nil
			})
			t.Logf("%d events of %s done %s into %s's outage", len(bIDs), b.id, time.Since(downAt).Round(time.Millisecond), a.id)
			// b keeps taking events, a batch every few seconds, for as long
			// as the outage lasts, each batch done while a is still down.
			bDone := n
			for time.Since(downAt) < tc.down {
				const batch = 10
				time.Sleep(5 * time.Second) // the PMS's pace, not a synchronisation
				h.checkInsFrom(b, bDone, batch)
				bDone += batch
				outs := h.waitOutcomes(bDone, 30*time.Second)
				if got := len(outcomesOf(t, outs, a)); got != 0 {
					t.Fatalf("%d outcomes of the workspace that is down", got)
				}
				assertHotelDone(t, outs, b, bDone)
			}
			tc.fail(a.seam, false)
			upAt := time.Now()
			outs = h.waitOutcomes(n+bDone, 3*time.Minute)
			t.Logf("%s: %d events done during %s of %s's outage; its %d events done %s after it came back",
				b.id, bDone, upAt.Sub(downAt).Round(time.Second), a.id, n, time.Since(upAt).Round(time.Millisecond))
			h.waitDrained(30 * time.Second)
			assertHotelDone(t, outs, a, len(aIDs))
			assertHotelDone(t, outs, b, bDone)
			for _, o := range outs {
				if o.DL.OriginalSubject != "" {
					t.Errorf("%s dead-lettered: %s", o.SourceID(), o.DL.Error.Message)
				}
			}
		})
	}
}

// gaugeValue is the value of the series of metric with exactly these labels, 0 when absent.
func gaugeValue(t *testing.T, reg *prometheus.Registry, metric string, labels map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != metric {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, l := range m.GetLabel() {
				if labels[l.GetName()] != l.GetValue() {
					continue next
				}
			}
			if m.Gauge != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}
