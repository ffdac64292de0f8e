package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/cmd/worker/internal/cli"
	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

const demoUsage = `Usage: worker demo

Starts an embedded JetStream server (in a temporary directory), the Seam
simulator with two hotels of a group (each its own workspace, key and
state) and the worker routing events by property, publishes a few realistic
check-in and check-out events, prints what became of each, and exits.

Example:
  go run ./cmd/worker demo
`

// demoStep is one event the demo publishes and what it expects back.
type demoStep struct {
	say     string
	subject string
	doc     []byte
	id      string               // event id; outcomes are matched on it, or on the stream sequence when undecodable
	before  func(*seamtest.Fake) // sets the simulator's scene for the step
	silent  bool                 // a duplicate: no outcome of its own
}

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		return cli.HelpOr(err, fs, demoUsage, stdout)
	}
	dir, err := os.MkdirTemp("", "keyworker-demo-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfg := &cli.Config{DataDir: dir, LogLevel: "error", LogFormat: "console", Concurrency: 8, Replicas: 1,
		MaxDeliver: 10, MaxClockSkew: 5 * time.Minute, ShutdownGrace: 5 * time.Second, SeamTimeout: 5 * time.Second,
		AwaitSync: demoAwaitSync}
	// Two hotels of a group, each its own Seam workspace with its own key.
	// Like Seam, each simulator's lock system has each change a moment
	// after Seam accepted it.
	sim := seamtest.New(seamtest.WithAutoCreate(), seamtest.WithSyncDelay(demoSyncDelay))
	harbour := seamtest.New(seamtest.WithAutoCreate(), seamtest.WithSyncDelay(demoSyncDelay))
	multi := seamtest.NewWorkspaces()
	multi.Add(demoGrand, "sim_key_grand", sim)
	multi.Add(demoHarbour, "sim_key_harbour", harbour)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	url, stopSim, err := multi.Serve(ctx, "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("demo: seam simulator: %w", err)
	}
	defer func() { _ = stopSim(context.Background()) }()
	cfg.SeamEndpoint = url
	cfg.Routing = []cli.WorkspaceSpec{
		{ID: demoGrand, APIKey: "sim_key_grand", Properties: []string{"grand-hotel"}},
		{ID: demoHarbour, APIKey: "sim_key_harbour", Properties: []string{"harbour-inn"}},
	}
	ready := make(chan *cli.Conn, 1)
	served := make(chan error, 1)
	go func() {
		served <- serve(ctx, cfg, cli.NewLogger(cfg, stderr), serveHooks{started: func(c *cli.Conn) { ready <- c }})
	}()
	var conn *cli.Conn
	select {
	case conn = <-ready:
	case err := <-served:
		return fmt.Errorf("demo: worker did not start: %w", err)
	case <-time.After(30 * time.Second):
		return errors.New("demo: worker did not start within 30 s")
	}

	fmt.Fprintf(stdout, "keyworker demo: embedded JetStream + Seam SIMULATOR with two hotels, workspaces %s and %s (no real doors are touched)\n", demoGrand, demoHarbour)
	fmt.Fprintln(stdout)
	outcomes, err := watchOutcomes(ctx, conn.JS())
	if err != nil {
		return err
	}
	steps := demoSteps(time.Now().UTC())
	var failures int
	for i, st := range steps {
		if st.before != nil {
			st.before(sim)
		}
		ack, err := cli.PublishEvent(ctx, conn.JS(), st.subject, st.doc, "")
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%d. %s\n", i+1, st.say)
		if st.silent {
			continue
		}
		line, ok := awaitOutcome(ctx, outcomes, st.id, ack.Sequence, 20*time.Second)
		if !ok {
			failures++
			line = "!! no outcome within 20 s"
		}
		fmt.Fprintf(stdout, "   -> %s\n", line)
	}
	fmt.Fprintln(stdout)
	fmt.Fprintf(stdout, "Seam simulator saw %d requests for %s and %d for %s; Ana's credential changed hands %d times (once in, once out) although her check-in was sent twice.\n",
		sim.Calls(""), demoGrand, harbour.Calls(""), demoHarbour, sim.Effects(demoCredA, demoUserA))
	fmt.Fprintln(stdout, "Dead letters: worker dlq list   Replay: worker dlq replay --error-kind permanent")
	cancel()
	if err := <-served; err != nil {
		return err
	}
	if failures > 0 {
		return fmt.Errorf("demo: %d events had no outcome", failures)
	}
	return nil
}

// demoAwaitSync is the demo's KEYWORKER_AWAIT_SYNC; demoSyncDelay is how
// long its simulated lock systems take to have a change.
const (
	demoAwaitSync = 2 * time.Second
	demoSyncDelay = 500 * time.Millisecond
)

// The demo's two hotels, each a Seam workspace.
const (
	demoGrand   = "ws_grand_hotel"
	demoHarbour = "ws_harbour_inn"
)

const (
	demoCredA = "6f3c1a52-8d4e-4b7a-9c21-3e5f7a9b1c01"
	demoUserA = "2b7e9d14-5a3c-4f8e-b1d2-7c9a0e4f6a11"
	demoCredB = "6f3c1a52-8d4e-4b7a-9c21-3e5f7a9b1c02"
	demoIdenB = "9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c22"
	demoCredC = "6f3c1a52-8d4e-4b7a-9c21-3e5f7a9b1c03"
	demoUserC = "2b7e9d14-5a3c-4f8e-b1d2-7c9a0e4f6a33"
	demoCredD = "6f3c1a52-8d4e-4b7a-9c21-3e5f7a9b1c04"
	demoUserD = "2b7e9d14-5a3c-4f8e-b1d2-7c9a0e4f6a44"
)

func demoSteps(now time.Time) []demoStep {
	ev := func(subject, id string, t time.Time, g cli.Guest) []byte {
		g.ID, g.Source = id, "pms://"+g.Property
		doc, _ := g.Event(subject, t)
		return doc
	}
	ana := cli.Guest{Credential: demoCredA, User: demoUserA, Reservation: "R-1001", Property: "grand-hotel"}
	ben := cli.Guest{Credential: demoCredB, Identity: demoIdenB, Reservation: "R-1002", Property: "grand-hotel"}
	chen := cli.Guest{Credential: demoCredC, User: demoUserC, Reservation: "R-1003", Property: "grand-hotel"}
	dara := cli.Guest{Credential: demoCredD, User: demoUserD, Reservation: "H-2001", Property: "harbour-inn"}
	in, out := schemas.SubjectCheckedIn, schemas.SubjectCheckedOut
	notFound := seamtest.SeamError(404, "acs_credential_not_found")
	bad := []byte(`{"specversion":"1.0","id":"evt-bad-1","source":"pms://grand-hotel","type":"guest.checked_in","time":"` +
		now.Format(time.RFC3339) + `","data":{"acs_credential_id":"` + demoCredC + `","acs_user_id":"` + demoUserC + `","user_identity_id":"` + demoIdenB + `"}}`)
	return []demoStep{
		{say: "Ana checks in to room 204 (R-1001)", subject: in, id: "evt-ana-in", doc: ev(in, "evt-ana-in", now.Add(-3*time.Minute), ana)},
		{say: "Ben checks in by user identity (R-1002); his room's lock refuses the change", subject: in, id: "evt-ben-in", doc: ev(in, "evt-ben-in", now.Add(-2*time.Minute), ben),
			before: func(f *seamtest.Fake) { f.SetSyncFailure("provider_rejected", "The lock did not accept the change.") }},
		{say: "Dara checks in at the Harbour Inn, the group's other hotel: its own workspace and key (H-2001)", subject: in, id: "evt-dara-in", doc: ev(in, "evt-dara-in", now.Add(-2*time.Minute), dara)},
		{say: "the PMS sends Ana's check-in again (a retry)", subject: in, id: "evt-ana-in", doc: ev(in, "evt-ana-in", now.Add(-3*time.Minute), ana), silent: true},
		{say: "Ana checks out; the lock system is slow today (more than " + demoAwaitSync.String() + ")", subject: out, id: "evt-ana-out", doc: ev(out, "evt-ana-out", now.Add(-1*time.Minute), ana),
			before: func(f *seamtest.Fake) { f.SetSyncFailure("", ""); f.SetSyncDelay(time.Hour) }},
		{say: "a delayed check-in for Ana, older than her check-out, arrives late", subject: in, id: "evt-ana-in-late", doc: ev(in, "evt-ana-in-late", now.Add(-150*time.Second), ana)},
		{say: "a malformed check-in names both a user and a user identity", subject: in, doc: bad},
		{say: "Chen checks in, but Seam does not know the credential", subject: in, id: "evt-chen-in", doc: ev(in, "evt-chen-in", now, chen),
			before: func(f *seamtest.Fake) { f.FailNext(1, "", notFound) }},
	}
}

// demoOutcome is an outcome event as the demo prints it.
type demoOutcome struct {
	subject string
	env     schemas.Envelope
}

// watchOutcomes follows the results and dead-letter streams from the start.
func watchOutcomes(ctx context.Context, js jetstream.JetStream) (<-chan demoOutcome, error) {
	ch := make(chan demoOutcome, 64)
	for _, stream := range []string{consumer.DefaultResultsStream, consumer.DefaultDeadLetterStream} {
		c, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
		if err != nil {
			return nil, err
		}
		cc, err := c.Consume(func(m jetstream.Msg) {
			var env schemas.Envelope
			_ = json.Unmarshal(m.Data(), &env)
			select {
			case ch <- demoOutcome{subject: m.Subject(), env: env}:
			case <-ctx.Done():
			}
		})
		if err != nil {
			return nil, err
		}
		context.AfterFunc(ctx, cc.Stop)
	}
	return ch, nil
}

// awaitOutcome waits for the outcome of event id (or of the input stream
// sequence seq, for an undecodable event) and renders it as one line.
func awaitOutcome(ctx context.Context, ch <-chan demoOutcome, id string, seq uint64, within time.Duration) (string, bool) {
	timeout := time.After(within)
	for {
		select {
		case o := <-ch:
			if line, ok := renderOutcome(o, id, seq); ok {
				return line, true
			}
		case <-timeout:
			return "", false
		case <-ctx.Done():
			return "", false
		}
	}
}

func renderOutcome(o demoOutcome, id string, seq uint64) (string, bool) {
	if strings.HasPrefix(o.subject, schemas.DeadLetterPrefix) {
		var dl schemas.DeadLetter
		if json.Unmarshal(o.env.Data, &dl) != nil || dl.OriginalStreamSequence != seq {
			return "", false
		}
		line := fmt.Sprintf("%s  kind=%s: %s", o.subject, dl.Error.Kind, dl.Error.Message)
		if dl.Error.SeamErrorType != "" {
			line += fmt.Sprintf(" (seam %d %s)", dl.Error.HTTPStatus, dl.Error.SeamErrorType)
		}
		return line + inWorkspace(dl.WorkspaceID), true
	}
	var r struct {
		schemas.CredentialResult
		Reason       string `json:"reason"`
		SupersededBy string `json:"superseded_by_event_id"`
	}
	if json.Unmarshal(o.env.Data, &r) != nil || r.SourceEventID != id {
		return "", false
	}
	if o.subject == schemas.SubjectSkipped {
		line := fmt.Sprintf("%s  reason=%s", o.subject, r.Reason)
		if r.SupersededBy != "" {
			line += ", superseded by " + r.SupersededBy
		}
		return line + inWorkspace(r.WorkspaceID), true
	}
	cred, _ := seamclient.ParseCredential(r.ACSCredential)
	var view struct {
		AccessMethod string `json:"access_method"`
		DisplayName  string `json:"display_name"`
	}
	_ = json.Unmarshal(r.ACSCredential, &view)
	holder := cred.ACSUserID
	if holder == "" {
		holder = "nobody"
	}
	line := fmt.Sprintf("%s  %s %q now held by %s (%d attempt)", o.subject, view.AccessMethod, view.DisplayName, holder, r.Attempts)
	if ps := r.ProviderSync; ps != nil {
		line += ", provider_sync=" + ps.State
		switch ps.State {
		case schemas.SyncStatePending:
			line += " (the lock system does not have the change yet)"
		case schemas.SyncStateFailed:
			var codes []string
			for _, e := range ps.Errors {
				codes = append(codes, e.ErrorCode)
			}
			line += " (" + strings.Join(append(codes, ps.Warnings...), ", ") + ")"
		}
	}
	return line + inWorkspace(r.WorkspaceID), true
}

func inWorkspace(id string) string {
	if id == "" {
		return ""
	}
	return "  [" + id + "]"
}
