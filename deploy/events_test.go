package deploy_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/consumer/consumertest"
	"github.com/keyworker/keyworker/consumer/embedded/natstest"
	"github.com/keyworker/keyworker/schemas"
)

// guest is a (credential, user) pair: checked in, and maybe checked out.
type guest struct {
	cred, user string
	checkout   bool
}

// event is one guest event to publish.
type event struct {
	id, subject string
	doc         []byte
	guest       int // index into the guests
}

// uuidFor is a stable, valid v4-shaped uuid for (kind, n, salt).
func uuidFor(kind byte, n int, salt uint32) string {
	return fmt.Sprintf("%08x-%04x-4%03x-8%03x-%012x", salt, n&0xffff, kind, n>>16&0xfff, n)
}

// guestEvents builds check-ins for n guests and check-outs, a few minutes
// later, for the first `out` of them, shuffled with seed. Each run uses
// fresh ids (salt), so events never collide with another run's.
func guestEvents(t *testing.T, n, out int, seed uint64) ([]guest, []event) {
	t.Helper()
	salt := uint32(time.Now().UnixNano())
	guests := make([]guest, n)
	var events []event
	base := time.Now().UTC().Add(-10 * time.Minute)
	for i := range guests {
		g := guest{cred: uuidFor(0xc, i, salt), user: uuidFor(0xa, i, salt), checkout: i < out}
		guests[i] = g
		data := schemas.GuestData{ACSCredentialID: g.cred, ACSUserID: g.user, ReservationID: fmt.Sprintf("R-%d", i), PropertyID: "deploy-test"}
		add := func(subject, id string, at time.Time) {
			doc := consumertest.Event(subject, "pms://deploy-test", id, at, data)
			events = append(events, event{id: id, subject: subject, doc: doc, guest: i})
		}
		add(schemas.SubjectCheckedIn, fmt.Sprintf("in-%x-%d", salt, i), base.Add(time.Duration(i)*time.Millisecond))
		if g.checkout {
			add(schemas.SubjectCheckedOut, fmt.Sprintf("out-%x-%d", salt, i), base.Add(5*time.Minute+time.Duration(i)*time.Millisecond))
		}
	}
	rand.New(rand.NewPCG(seed, seed)).Shuffle(len(events), func(i, j int) { events[i], events[j] = events[j], events[i] })
	return guests, events
}

// publish publishes ev as a PMS would: with its id as Nats-Msg-Id, retried
// while the cluster elects a new leader. It gives up after within.
func publish(ctx context.Context, js jetstream.JetStream, ev event, msgID string, within time.Duration) error {
	msg := &nats.Msg{Subject: ev.subject, Data: ev.doc, Header: nats.Header{}}
	msg.Header.Set("Content-Type", schemas.ContentType)
	var opts []jetstream.PublishOpt
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	deadline := time.Now().Add(within)
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := js.PublishMsg(pctx, msg, opts...)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("publish %s %s: %w", ev.subject, ev.id, err)
		}
		time.Sleep(100 * time.Millisecond) // the cluster is electing a leader
	}
}

// waitSettled waits until the durable consumer is drained and the outcome
// streams hold at least n events. The outcomes are read message by message
// (consumertest.Outcomes), which on a cluster the stream leader answers:
// nothing here needs the ordered consumer it was once read with.
func waitSettled(t *testing.T, js jetstream.JetStream, n int, within time.Duration) []consumertest.Outcome {
	t.Helper()
	cfg := consumer.Config{}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	var got []consumertest.Outcome
	natstest.WaitFor(t, within, func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		if err := consumertest.Drained(ctx, js, cfg); err != nil {
			return err
		}
		var err error
		if got, err = consumertest.Outcomes(ctx, js, cfg); err != nil {
			return err
		}
		if len(got) < n {
			return fmt.Errorf("%d outcome events, want %d", len(got), n)
		}
		return nil
	})
	return got
}

// checkOneOutcomeEach checks that every event has exactly one outcome, of
// the right kind, and that no outcome names an unknown event. It returns
// the outcome subject of each event id.
func checkOneOutcomeEach(t *testing.T, events []event, outs []consumertest.Outcome) map[string]string {
	t.Helper()
	want := map[string]string{}
	for _, ev := range events {
		want[ev.id] = ev.subject
	}
	got := map[string][]string{}
	for _, o := range outs {
		if _, ok := want[o.SourceID()]; !ok {
			t.Errorf("outcome %s for an event never published: %q", o.Subject, o.SourceID())
			continue
		}
		got[o.SourceID()] = append(got[o.SourceID()], o.Subject)
		if o.DL.OriginalSubject != "" {
			t.Errorf("event %s dead-lettered: %s: %s", o.SourceID(), o.DL.Error.Kind, o.DL.Error.Message)
		}
	}
	subjects := map[string]string{}
	for id, in := range want {
		outs := got[id]
		if len(outs) != 1 {
			t.Errorf("event %s (%s) has %d outcomes %v, want exactly 1", id, in, len(outs), outs)
			continue
		}
		subjects[id] = outs[0]
		ok := outs[0] == schemas.SubjectSkipped || (in == schemas.SubjectCheckedIn && outs[0] == schemas.SubjectAssigned) ||
			(in == schemas.SubjectCheckedOut && outs[0] == schemas.SubjectUnassigned)
		if !ok {
			t.Errorf("event %s (%s) ended as %s", id, in, outs[0])
		}
	}
	return subjects
}

// checkSeamState checks the simulator's final state: a guest who checked
// out holds no key, one who did not holds it, and no change was applied
// twice.
func checkSeamState(t *testing.T, sim *simulator, guests []guest) {
	t.Helper()
	for _, g := range guests {
		p := sim.pair(t, g.cred, g.user)
		switch {
		case g.checkout && p.Assigned:
			t.Errorf("guest %s checked out but still holds credential %s", g.user, g.cred)
		case !g.checkout && !p.Assigned:
			t.Errorf("guest %s checked in but does not hold credential %s", g.user, g.cred)
		case !g.checkout && p.Effects != 1:
			t.Errorf("credential %s changed hands %d times for a single check-in", g.cred, p.Effects)
		case g.checkout && p.Effects != 0 && p.Effects != 2:
			// 2: in then out; 0: the check-out came first and the check-in was stale.
			t.Errorf("credential %s changed hands %d times for a check-in and a check-out", g.cred, p.Effects)
		}
	}
}
