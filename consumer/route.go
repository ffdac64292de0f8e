package consumer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Workspace is one Seam workspace events are routed to, by their property_id.
type Workspace struct {
	// ID is the Seam workspace id: carried in outcomes as workspace_id and
	// the workspace label of the metrics. Empty only for the single
	// workspace of a worker without routing.
	ID string
	// Seam calls this workspace (its own key, endpoint and seam-workspace header).
	Seam SeamCaller
	// RateLimit is this workspace's ceiling on requests per second; 0: none.
	RateLimit float64
	// Properties are the property_id values routed here.
	Properties []string
	// Default takes the events of properties no workspace lists, and those
	// without a property_id.
	Default bool
}

// ErrInvalidRouting is wrapped by every error SetWorkspaces and
// WithWorkspaces return for a routing that cannot be used.
var ErrInvalidRouting = errors.New("consumer: invalid workspace routing")

// UnknownPropertyError is the dead letter's cause for an event whose
// property no workspace takes and no default catches. Replaying it once the
// routing has the entry assigns it.
type UnknownPropertyError struct{ Property string }

func (e *UnknownPropertyError) Error() string {
	if e.Property == "" {
		return "consumer: the event has no property_id and the workspace routing has no default"
	}
	return fmt.Sprintf("consumer: property %q has no Seam workspace: add it to the workspace routing (or a default), reload, then replay with --property %s", e.Property, e.Property)
}

// workspace is a Workspace at work: each has its own health gate and pacer,
// so one workspace's outage, refused key or 429s never hold another's events.
type workspace struct {
	id    string
	label string // id, or "default"
	seam  SeamCaller
	gate  *gate
	pacer *pacer
	rps   float64
}

// routing is one generation of the routing; replaced whole on reload.
type routing struct {
	byProperty map[string]*workspace
	def        *workspace
	all        []*workspace
}

// WithWorkspaces routes events to Seam workspaces by property_id instead of
// sending every event to the SeamCaller given to New (which may then be nil).
func WithWorkspaces(ws []Workspace) Option {
	return func(w *Worker) error {
		if len(ws) == 0 {
			return fmt.Errorf("%w: no workspace", ErrInvalidRouting)
		}
		w.pending = ws
		return nil
	}
}

// SetWorkspaces replaces the routing, for a reload: events already routed
// finish with the workspace they were given; a workspace whose id stays
// keeps its health gate (and its pacer, unless its rate limit changed). A
// routing that cannot be used is refused and the old one stays.
func (w *Worker) SetWorkspaces(ws []Workspace) error {
	w.routeMu.Lock()
	defer w.routeMu.Unlock()
	rt, err := w.buildRouting(ws, w.routes.Load())
	if err != nil {
		return err
	}
	old := w.routes.Swap(rt)
	w.health.notify() // Run may be holding for workspaces that are gone
	for _, x := range old.all {
		if !slices.ContainsFunc(rt.all, func(y *workspace) bool { return y.label == x.label }) {
			w.metrics.forgetWorkspace(x.label) // its gate's state would stay on the dashboard and in alerts
		}
	}
	w.logRouting(rt)
	return nil
}

func (w *Worker) logRouting(rt *routing) {
	ids := make([]string, len(rt.all))
	for i, x := range rt.all {
		ids[i] = x.label
	}
	w.log.Info().Strs("workspaces", ids).Int("properties", len(rt.byProperty)).Bool("default", rt.def != nil).Msg("workspace routing loaded")
}

func (w *Worker) buildRouting(ws []Workspace, old *routing) (*routing, error) {
	if len(ws) == 0 {
		return nil, fmt.Errorf("%w: no workspace", ErrInvalidRouting)
	}
	prev := map[string]*workspace{}
	if old != nil {
		for _, x := range old.all {
			prev[x.id] = x
		}
	}
	rt := &routing{byProperty: map[string]*workspace{}}
	seen := map[string]bool{}
	for i, spec := range ws {
		switch {
		case spec.ID == "" && len(ws) > 1:
			return nil, fmt.Errorf("%w: workspace %d has no id", ErrInvalidRouting, i+1)
		case seen[spec.ID]:
			return nil, fmt.Errorf("%w: workspace %s is listed twice", ErrInvalidRouting, spec.ID)
		case spec.Seam == nil:
			return nil, fmt.Errorf("%w: workspace %s has no Seam client", ErrInvalidRouting, spec.ID)
		case spec.RateLimit < 0:
			return nil, fmt.Errorf("%w: workspace %s: rate limit %v must not be negative", ErrInvalidRouting, spec.ID, spec.RateLimit)
		case spec.Default && rt.def != nil:
			return nil, fmt.Errorf("%w: workspaces %s and %s are both the default", ErrInvalidRouting, rt.def.id, spec.ID)
		}
		seen[spec.ID] = true
		x := &workspace{id: spec.ID, label: spec.ID, seam: spec.Seam, rps: spec.RateLimit}
		if x.label == "" {
			x.label = "default"
		}
		for _, p := range spec.Properties {
			if other := rt.byProperty[p]; other != nil {
				return nil, fmt.Errorf("%w: property %q is routed to both %s and %s", ErrInvalidRouting, p, other.label, x.label)
			}
			rt.byProperty[p] = x
		}
		if spec.Default {
			rt.def = x
		}
		rt.all = append(rt.all, x)
	}
	// Only a routing that will be used gets gates and pacers: new ones
	// publish their metrics at once.
	for _, x := range rt.all {
		if p := prev[x.id]; p != nil {
			x.gate = p.gate
			if p.rps == x.rps {
				x.pacer = p.pacer
			}
		}
		if x.gate == nil {
			log := w.log.With().Str("workspace", x.label).Logger()
			x.gate = newGate(w.now, log, w.metrics, x.label, w.cfg.GateProbeFirst, w.cfg.GateProbeMax)
			x.gate.onChange = w.health.notify
		}
		if x.pacer == nil {
			x.pacer = newPacer(w.now, w.sleep, x.rps, w.metrics, x.label)
		}
	}
	return rt, nil
}

// route picks the job's workspace by its property.
func (w *Worker) route(j *job) error {
	rt := w.routes.Load()
	p := j.event.Data.PropertyID
	x := rt.byProperty[p]
	if x == nil {
		x = rt.def
	}
	if x == nil {
		return &UnknownPropertyError{Property: p}
	}
	j.ws = x
	return nil
}

// crowded turns an event away before it claims anything when enough
// events of its workspace already wait in its open gate (see crowd): it
// would get a *crowdedError at its first Seam request anyway, after a
// claim and a lease taken and given back for nothing.
func (w *Worker) crowded(j *job) error {
	if w.route(j) != nil {
		return nil // unknown property: dead-lettered after its claim
	}
	return j.ws.gate.crowded(w.crowd())
}

// WorkspaceHealth is one workspace's Seam health gate.
type WorkspaceHealth struct {
	ID     string // empty for the single workspace of a worker without routing
	Label  string // the metrics' workspace label
	Health SeamHealth
	Since  time.Time
}

// Workspaces reports the health gate of every workspace of the current routing.
func (w *Worker) Workspaces() []WorkspaceHealth {
	rt := w.routes.Load()
	out := make([]WorkspaceHealth, len(rt.all))
	for i, x := range rt.all {
		h, since := x.gate.health()
		out[i] = WorkspaceHealth{ID: x.id, Label: x.label, Health: h, Since: since}
	}
	return out
}

// hold waits while every workspace's gate is open with events waiting in
// it, so that Run takes no new messages that could only wait too. One
// healthy workspace is enough to keep fetching: events of a workspace that
// is down wait in process (their slots given back) while the others flow.
func (w *Worker) hold(ctx context.Context, interval time.Duration, tick func()) {
	for {
		changed := w.health.changed()
		held := true
		for _, x := range w.routes.Load().all {
			if !x.gate.holding() {
				held = false
				break
			}
		}
		if !held {
			return
		}
		t := time.NewTimer(interval)
		select {
		case <-changed:
		case <-t.C:
			tick()
		case <-ctx.Done():
		}
		t.Stop()
		if ctx.Err() != nil {
			return
		}
	}
}

// broadcast wakes everyone waiting for a change of any workspace's gate.
type broadcast struct {
	mu sync.Mutex
	ch chan struct{}
}

func (b *broadcast) changed() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch == nil {
		b.ch = make(chan struct{})
	}
	return b.ch
}

func (b *broadcast) notify() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch != nil {
		close(b.ch)
		b.ch = nil
	}
}

// workspaceID is the job's workspace id for outcomes, when it was routed.
func workspaceID(j *job) string {
	if j.ws == nil {
		return ""
	}
	return j.ws.id
}

// workspaceLabel is the job's workspace for the metrics: "none" before it
// was routed (invalid events, unknown properties).
func workspaceLabel(j *job) string {
	if j.ws == nil {
		return "none"
	}
	return j.ws.label
}

// crowdedError hands an event back instead of letting it wait in its
// workspace's open gate, when that many events wait there already: the
// events of a workspace that is down must not fill MaxAckPending and
// starve the healthy ones.
type crowdedError struct {
	workspace string
	health    SeamHealth
}

func (e *crowdedError) Error() string {
	return fmt.Sprintf("consumer: workspace %s is %s and enough of its events wait in process: handing this one back", e.workspace, e.health)
}
