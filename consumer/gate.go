package consumer

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/keyworker/keyworker/seamclient"
)

// SeamHealth is the state of the Seam health gate.
type SeamHealth int32

const (
	// SeamHealthy: requests flow.
	SeamHealthy SeamHealth = iota
	// SeamUnavailable: Seam kept failing transiently (network, timeouts,
	// 5xx, gateway pages); the worker pauses and probes.
	SeamUnavailable
	// SeamUnauthorized: Seam refused the API key (401/403); the worker
	// pauses and probes until the key works again.
	SeamUnauthorized
)

// String returns the reason /readyz gives: healthy, seam_unavailable or seam_unauthorized.
func (s SeamHealth) String() string {
	switch s {
	case SeamUnavailable:
		return "seam_unavailable"
	case SeamUnauthorized:
		return "seam_unauthorized"
	}
	return "healthy"
}

// Five failures in a row with nothing in between is an outage, not bad
// luck. Probing starts after Config.GateProbeFirst (1 s) and backs off to
// Config.GateProbeMax (5 s), so a worker sends Seam well under a request a
// second while it is down and notices its return within five seconds.
const gateTripAfter = 5

// gate is the Seam health gate, a circuit breaker shared by the process's
// requests. Healthy, every request passes. Open (unavailable or
// unauthorized), requests wait, except one probe at a time, at a growing
// interval; the first answer that shows Seam up and the key accepted closes
// it and wakes every waiter. Run stops taking new messages while events
// wait in it. Written here rather than taken from gobreaker: the waiters
// must keep their leases alive while they wait and be woken at once on
// recovery, and a refused key opens it at the first answer.
type gate struct {
	now        func() time.Time
	log        zerolog.Logger
	metrics    *Metrics
	label      string // the workspace, for the metrics
	onChange   func() // after every report, for Run's hold; may be nil
	probeFirst time.Duration
	probeMax   time.Duration

	mu        sync.Mutex
	state     SeamHealth
	since     time.Time
	failures  int // transient failures in a row
	probeWait time.Duration
	nextProbe time.Time
	probing   bool
	waiting   int
	changed   chan struct{} // closed and replaced at every change of state
}

func newGate(now func() time.Time, log zerolog.Logger, m *Metrics, label string, probeFirst, probeMax time.Duration) *gate {
	g := &gate{now: now, log: log, metrics: m, label: label, probeFirst: probeFirst, probeMax: probeMax, since: now(), changed: make(chan struct{})}
	m.observeGate(label, SeamHealthy)
	return g
}

// health returns the state and since when it holds.
func (g *gate) health() (SeamHealth, time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.state, g.since
}

// crowded is the *crowdedError admit would give a new caller now (nil if
// it would let it wait, or probe).
func (g *gate) crowded(crowd int) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if crowd == 0 || g.state == SeamHealthy || g.waiting < crowd || !g.probing && !g.now().Before(g.nextProbe) {
		return nil
	}
	return &crowdedError{workspace: g.label, health: g.state}
}

// admit waits until a request may go to Seam: the gate is healthy, or it is
// this caller's turn to probe. tick runs before each wait of at most
// interval (to keep leases and the ack wait alive); its error ends the wait.
// It reports whether the request is a probe, which the caller must report.
// A caller that would start waiting while crowd others already wait (0: no
// bound) gets a *crowdedError instead.
func (g *gate) admit(ctx context.Context, interval time.Duration, crowd int, tick func() error) (probe, waited bool, err error) {
	for {
		g.mu.Lock()
		if g.state == SeamHealthy {
			g.mu.Unlock()
			return false, waited, nil
		}
		now := g.now()
		if !g.probing && !now.Before(g.nextProbe) {
			g.probing = true
			g.mu.Unlock()
			return true, waited, nil
		}
		wait := interval
		if !g.probing {
			wait = min(wait, max(g.nextProbe.Sub(now), time.Millisecond))
		}
		if !waited && crowd > 0 && g.waiting >= crowd {
			state := g.state
			g.mu.Unlock()
			return false, false, &crowdedError{workspace: g.label, health: state}
		}
		changed := g.changed
		g.waiting++
		g.mu.Unlock()

		waited = true
		if err := tick(); err != nil {
			g.mu.Lock()
			g.waiting--
			g.mu.Unlock()
			return false, waited, err
		}
		t := time.NewTimer(wait)
		select {
		case <-changed:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
		g.mu.Lock()
		g.waiting--
		g.mu.Unlock()
		if err := ctx.Err(); err != nil {
			return false, waited, err
		}
	}
}

// holding reports whether the gate is open with events waiting in it:
// new messages for its workspace could only wait too. With nobody waiting,
// one more message may come in to carry the next probe.
func (g *gate) holding() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.state != SeamHealthy && (g.waiting > 0 || g.probing)
}

// gateSignal is what one answer says of Seam's health.
type gateSignal int

const (
	signalNone         gateSignal = iota // says nothing (the caller gave up)
	signalUp                             // Seam answered and took the key
	signalDown                           // a transient failure
	signalUnauthorized                   // 401 or 403
)

// signalOf classifies a request's error for the gate. Any answer from Seam
// itself, a refusal or a 429 included, shows it up; 401/403 show the key
// refused; failures to get an answer, 5xx and gateway pages show it down.
func signalOf(err error) gateSignal {
	var api *seamclient.APIError
	if errors.As(err, &api) {
		switch {
		case api.StatusCode == http.StatusUnauthorized || api.StatusCode == http.StatusForbidden:
			return signalUnauthorized
		case api.StatusCode >= 500 || api.StatusCode == http.StatusRequestTimeout:
			return signalDown
		}
		return signalUp
	}
	switch {
	case err == nil:
		return signalUp
	case errors.Is(err, context.Canceled):
		return signalNone
	case seamclient.Classify(err) == seamclient.Permanent:
		return signalUp // not about Seam's health
	}
	return signalDown
}

// report records a request's outcome; probe says whether admit made it a probe.
func (g *gate) report(probe bool, err error) {
	sig := signalOf(err)
	g.mu.Lock()
	defer g.mu.Unlock()
	if probe {
		g.probing = false
	}
	was := g.state
	switch sig {
	case signalUp:
		g.failures = 0
		if g.state != SeamHealthy {
			g.log.Info().Str("was", g.state.String()).Dur("for", g.now().Sub(g.since)).Msg("seam is back: resuming")
			g.set(SeamHealthy)
		}
	case signalDown:
		g.failures++
		switch {
		case g.state == SeamHealthy && g.failures >= gateTripAfter:
			g.open(SeamUnavailable, err)
		case g.state != SeamHealthy && probe:
			g.backOff()
		}
	case signalUnauthorized:
		switch {
		case g.state != SeamUnauthorized:
			g.open(SeamUnauthorized, err)
		case probe:
			g.backOff()
		}
	case signalNone:
		if !probe {
			return
		}
		g.nextProbe = g.now() // let another waiter probe at once
	}
	// Waiters look again when there is something new to see: most answers,
	// those of a healthy Seam, change nothing and wake nobody.
	if g.state != was || probe || g.waiting > 0 {
		g.wake()
	}
}

// open pauses requests for state; g.mu is held.
func (g *gate) open(state SeamHealth, err error) {
	g.log.Warn().Err(err).Str("state", state.String()).
		Msg("seam health gate open: pausing Seam requests and new events, probing until Seam answers")
	g.set(state)
	g.probeWait = g.probeFirst
	g.nextProbe = g.now().Add(g.probeWait)
}

// backOff schedules the next probe after a failed one; g.mu is held.
func (g *gate) backOff() {
	g.probeWait = min(2*g.probeWait, g.probeMax)
	g.nextProbe = g.now().Add(g.probeWait)
}

// set changes the state; g.mu is held.
func (g *gate) set(state SeamHealth) {
	g.state, g.since = state, g.now()
	g.metrics.observeGate(g.label, state)
}

// wake lets every waiter look again; g.mu is held.
func (g *gate) wake() {
	close(g.changed)
	g.changed = make(chan struct{})
	if g.onChange != nil {
		g.onChange()
	}
}
