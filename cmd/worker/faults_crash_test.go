package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/keyworker/keyworker/consumer/consumertest"
	"github.com/keyworker/keyworker/consumer/embedded/natstest"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

var (
	crashEvents = flag.Int("events", 2000, "distinct events TestCrash_* publishes (10000 for the long run)")
	crashSeed   = flag.Int64("crash-seed", 0, "seed of TestCrash_* (plan and Seam faults); 0 takes one from the clock")
)

// crashEvent is one distinct input event of the crash test.
type crashEvent struct {
	id        string
	subject   string
	doc       []byte
	at        time.Time
	guest     *crashGuest // nil when malformed
	malformed string      // "", "json" or "both_ids"
	dup       bool        // published a second time with another Nats-Msg-Id
}

// crashRoom is one credential passed from guest to guest; its events are in
// time order.
type crashRoom struct {
	cred   string
	guests []*crashGuest
	events []*crashEvent
}

// crashGuest is one guest of a room.
type crashGuest struct {
	room     *crashRoom
	user     string
	identity bool
	events   []*crashEvent
}

// crashPublish is one publish: the event and the Nats-Msg-Id it goes with.
type crashPublish struct {
	ev    *crashEvent
	msgID string
	key   float64
}

const crashSource = "pms://crash-test"

// crashDupWindow is the streams' duplicate window in the crash test.
const crashDupWindow = time.Second

// planCrash builds n distinct events: 1% malformed, the rest over rooms
// (credentials) of 3 to 5 consecutive guests each, every guest checking in
// and (but perhaps the last) out; in a quarter of the rooms stays overlap (a
// guest checks out after the next one checked in). Rooms are interleaved at
// random; within a room neighbouring events are swapped 10% of the time and
// one event in 20 arrives late, and 10% of the events are published twice.
func planCrash(t *testing.T, n int, rng *rand.Rand) ([]*crashEvent, []*crashRoom, []crashPublish) {
	t.Helper()
	malformed := max(1, n/100)
	valid := n - malformed
	base := time.Now().Add(-6 * time.Hour).Truncate(time.Millisecond)
	var (
		events []*crashEvent
		rooms  []*crashRoom
	)
	for left := valid; left > 0; {
		r := &crashRoom{cred: newUUID()}
		overlap := rng.IntN(4) == 0
		at := base.Add(time.Duration(len(rooms)) * time.Millisecond)
		guests := 3 + rng.IntN(3)
		for k := 0; k < guests && left > 0; k++ {
			g := &crashGuest{room: r, user: newUUID(), identity: rng.Float64() < 0.2}
			r.guests = append(r.guests, g)
			in := at
			out := in.Add(time.Duration(20+rng.IntN(40)) * time.Minute)
			at = out.Add(time.Minute) // the next guest's check-in
			if overlap {
				at = out.Add(-5 * time.Minute) // ...before this one checks out
			}
			stay := []time.Time{in}
			if k < guests-1 || rng.Float64() < 0.7 {
				stay = append(stay, out)
			}
			for i, when := range stay[:min(len(stay), left)] {
				subject := schemas.SubjectCheckedIn
				if i == 1 {
					subject = schemas.SubjectCheckedOut
				}
				d := schemas.GuestData{ACSCredentialID: r.cred, ReservationID: fmt.Sprintf("R-%d-%d", len(rooms), k)}
				if g.identity {
					d.UserIdentityID = g.user
				} else {
					d.ACSUserID = g.user
				}
				ev := &crashEvent{id: newUUID(), subject: subject, at: when, guest: g}
				ev.doc = consumertest.Event(subject, crashSource, ev.id, ev.at, d)
				g.events = append(g.events, ev)
				r.events = append(r.events, ev)
				events = append(events, ev)
				left--
			}
		}
		sort.SliceStable(r.events, func(i, j int) bool { return r.events[i].at.Before(r.events[j].at) })
		rooms = append(rooms, r)
	}

	// Publish order: rooms interleaved at random, each in time order but for
	// swapped neighbours and a late event.
	queues := make([][]*crashEvent, len(rooms))
	for i, r := range rooms {
		q := append([]*crashEvent(nil), r.events...)
		for k := 0; k+1 < len(q); k++ {
			if rng.Float64() < 0.10 {
				q[k], q[k+1] = q[k+1], q[k]
				k++
			}
		}
		if len(q) > 1 && rng.IntN(20) == 0 {
			k := rng.IntN(len(q) - 1)
			late := q[k]
			q = append(append(q[:k:k], q[k+1:]...), late)
		}
		queues[i] = q
	}
	var order []*crashEvent
	live := make([]int, len(queues))
	for i := range live {
		live[i] = i
	}
	for len(live) > 0 {
		k := rng.IntN(len(live))
		q := live[k]
		order = append(order, queues[q][0])
		if queues[q] = queues[q][1:]; len(queues[q]) == 0 {
			live[k] = live[len(live)-1]
			live = live[:len(live)-1]
		}
	}
	for i := range malformed {
		ev := &crashEvent{id: newUUID(), subject: schemas.SubjectCheckedIn, at: base}
		if rng.IntN(2) == 0 {
			ev.subject = schemas.SubjectCheckedOut
		}
		if i%2 == 0 {
			ev.malformed = "json"
			ev.doc = fmt.Appendf(nil, `{"specversion":"1.0","id":%q,"source":%q,"type":%q,"data":{"acs_credential_id":`, ev.id, crashSource, ev.subject)
		} else {
			ev.malformed = "both_ids"
			ev.doc = consumertest.Event(ev.subject, crashSource, ev.id, ev.at, schemas.GuestData{
				ACSCredentialID: newUUID(), ACSUserID: newUUID(), UserIdentityID: newUUID(),
			})
		}
		events = append(events, ev)
		pos := rng.IntN(len(order) + 1)
		order = append(order[:pos], append([]*crashEvent{ev}, order[pos:]...)...)
	}

	// Second copies go anywhere after the first.
	pubs := make([]crashPublish, 0, len(order)+n/10)
	for i, ev := range order {
		pubs = append(pubs, crashPublish{ev: ev, msgID: "pub-" + ev.id, key: float64(i)})
	}
	for _, i := range rng.Perm(len(pubs)) {
		if len(pubs) >= len(order)+n/10 {
			break
		}
		first := pubs[i]
		if first.ev.malformed != "" {
			continue
		}
		first.ev.dup = true
		key := first.key + 0.5 + rng.Float64()*(float64(len(order))-first.key)
		pubs = append(pubs, crashPublish{ev: first.ev, msgID: "pub-" + first.ev.id + "-copy", key: key})
	}
	sort.SliceStable(pubs, func(i, j int) bool { return pubs[i].key < pubs[j].key })
	return events, rooms, pubs
}

// TestCrash_KilledWorkerAndNATSLoseNothingAndDuplicateNothing drives the
// worker binary against a nats-server binary and a faulty Seam fake,
// SIGKILLs the worker three times and nats-server once during the run,
// and then checks every event: exactly one outcome each, dead letters for
// exactly the malformed and the permanently failed, and the fake's final
// state as the newest surviving event of each pair says.
func TestCrash_KilledWorkerAndNATSLoseNothingAndDuplicateNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("runs worker and nats-server processes for about a minute: skipped under -short")
	}
	n := *crashEvents
	if n < 100 {
		t.Fatalf("-events %d: want at least 100", n)
	}
	seed := *crashSeed
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	t.Logf("events %d, seed %d (rerun with -crash-seed %d)", n, seed, seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 7))
	deadline := time.Now().Add(max(170*time.Second, time.Duration(n)*25*time.Millisecond))
	remaining := func() time.Duration { return max(time.Until(deadline), time.Second) }
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()

	const apiKey = "seam_test_crash_key"
	seam := procNewSeam(t, seamtest.WithAPIKey(apiKey), seamtest.WithAutoCreate(),
		seamtest.WithRandomFaults(seamtest.RandomFaults{Transient: 0.20, Permanent: 0.01, AppliedThenDrop: 0.02, Seed: seed}))
	natsSrv := procStartNATS(t, "", "")
	worker := procNewWorker(t,
		"NATS_URL="+natsSrv.URL(), "SEAM_ENDPOINT="+seam.URL, "SEAM_API_KEY="+apiKey,
		"KEYWORKER_CONCURRENCY=32", "KEYWORKER_MAX_DELIVER=10", "KEYWORKER_SHUTDOWN_GRACE=2s", "LOG_LEVEL=info",
		// A short duplicate window, outlasted by every restart: an outcome
		// published before a kill is not caught by JetStream's deduplication.
		"KEYWORKER_DUPLICATE_WINDOW="+crashDupWindow.String())
	started := time.Now()
	worker.start()
	worker.waitReady(30 * time.Second)
	client := procConnect(t, natsSrv)

	events, rooms, pubs := planCrash(t, n, rng)
	seqs := make([]uint64, len(pubs)) // stream sequence of each publish
	published := make(chan error, 1)
	go func() {
		for i, p := range pubs {
			seq, err := client.publish(ctx, p.ev.subject, p.ev.doc, p.msgID)
			if err != nil {
				published <- err
				return
			}
			seqs[i] = seq
		}
		published <- nil
	}()

	type kill struct {
		what string
		at   time.Time
	}
	var kills []kill
	for _, step := range []struct {
		frac float64
		what string
	}{{0.10, "worker"}, {0.20, "nats-server"}, {0.30, "worker"}, {0.45, "worker"}} {
		target := int(step.frac * float64(n))
		natstest.WaitFor(t, remaining(), func() error {
			c, err := client.outcomeCount()
			if err == nil && c < target {
				err = fmt.Errorf("%d outcome events, waiting for %d to kill the %s", c, target, step.what)
			}
			return err
		})
		kills = append(kills, kill{step.what, time.Now()})
		if step.what == "worker" {
			worker.kill()
			time.Sleep(2 * crashDupWindow) // the restart comes after the window: that is the scenario
			worker.start()
			worker.waitReady(30 * time.Second)
			continue
		}
		natsSrv.kill()
		natstest.WaitFor(t, 15*time.Second, func() error {
			code, body, err := worker.readyz()
			if err == nil && code == http.StatusOK {
				err = fmt.Errorf("readyz still 200 with nats-server down: %s", body)
			}
			return err
		})
		natsSrv.start()
		worker.waitReady(30 * time.Second)
	}
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	lastReport := time.Now()
	natstest.WaitFor(t, remaining(), func() error {
		err := client.drained()
		if err != nil && time.Since(lastReport) > 10*time.Second {
			c, _ := client.outcomeCount()
			t.Logf("+%s: %d of %d outcomes; %v", time.Since(started).Round(time.Second), c, n, err)
			lastReport = time.Now()
		}
		return err
	})
	processed := time.Since(started)
	code, stopIn := worker.terminate(15 * time.Second)
	if code != 0 {
		t.Errorf("worker exited %d after SIGTERM, want 0", code)
	}

	// Index what was published and what came out.
	bySeq := map[uint64]*crashEvent{}
	for i, p := range pubs {
		bySeq[seqs[i]] = p.ev
	}
	byID := map[string]*crashEvent{}
	for _, ev := range events {
		byID[ev.id] = ev
	}
	outcomes := client.outcomes()
	got := map[*crashEvent][]consumertest.Outcome{}
	subjects := map[string]int{}
	dlKinds := map[string]int{}
	for _, o := range outcomes {
		subjects[o.Subject]++
		if o.DeadLetter {
			dlKinds[o.DL.Error.Kind]++
		}
		var ev *crashEvent
		if id := o.SourceID(); id != "" {
			ev = byID[id]
		} else if o.DeadLetter {
			ev = bySeq[o.DL.OriginalStreamSequence]
		}
		if ev == nil {
			t.Errorf("%s (seq %d) is about no published event: source id %q", o.Subject, o.Seq, o.SourceID())
			continue
		}
		got[ev] = append(got[ev], o)
	}

	// Exactly one outcome per event; dead letters only where due. Seam
	// calls for one event may concern another guest of the credential (a
	// holder unassigned before the next assign, a read of the holder), so
	// 400s are counted per credential.
	answers := seam.Answers()
	status400 := map[string][]time.Time{}
	dropped := map[string]int{}
	answerCounts := map[string]int{}
	for _, a := range answers {
		cred := procRequestCredential(a.Body)
		switch {
		case a.Dropped:
			dropped[cred]++
			answerCounts["dropped"]++
		default:
			answerCounts[fmt.Sprint(a.Status)]++
		}
		if a.Status == http.StatusBadRequest {
			status400[cred] = append(status400[cred], a.At)
		}
	}
	credOf := func(ev *crashEvent) string { return strings.ToLower(ev.guest.room.cred) }
	permanentDLs := map[string]int{}
	applied := map[string]int{} // events that ended with their change applied
	skipped := map[string]int{} // events the rule superseded
	retries := map[*crashEvent]int{}
	for _, p := range pubs {
		retries[p.ev] += client.retries(p.msgID)
	}
	for _, ev := range events {
		outs := got[ev]
		if ev.malformed != "" && len(outs) > 1 && distinctInvalidDeadLetters(outs) && len(outs) <= 1+retries[ev] {
			// Malformed, it has no identity but its place in the stream: a
			// publish retried after a NATS kill that landed twice is two
			// messages, with a dead letter each.
			outs = outs[:1]
		}
		if len(outs) != 1 {
			var desc []string
			for _, o := range outs {
				if o.DeadLetter {
					desc = append(desc, fmt.Sprintf("%s#%d (%s, %d deliveries: %s)", o.Subject, o.Seq, o.DL.Error.Kind, o.DL.Deliveries, o.DL.Error.Message))
				} else {
					desc = append(desc, fmt.Sprintf("%s#%d (attempts %d)", o.Subject, o.Seq, o.Result.Attempts))
				}
			}
			t.Errorf("event %s (%s, malformed %q, published twice %v): %d outcomes %v, want exactly 1", ev.id, ev.subject, ev.malformed, ev.dup, len(outs), desc)
			continue
		}
		o := outs[0]
		switch {
		case ev.malformed != "":
			if !o.DeadLetter || o.DL.Error.Kind != schemas.ErrorKindInvalidEvent {
				t.Errorf("malformed event %s (%s): outcome %s kind %q, want an invalid_event dead letter", ev.id, ev.malformed, o.Subject, o.DL.Error.Kind)
			}
		case o.DeadLetter:
			if o.DL.Error.Kind != schemas.ErrorKindPermanent || o.DL.Error.HTTPStatus != http.StatusBadRequest || o.DL.Error.SeamErrorType != "invalid_input" {
				t.Errorf("event %s (%s) dead-lettered as %s (%d %s): %s; only the fake's random 400 invalid_input may dead-letter a valid event",
					ev.id, ev.subject, o.DL.Error.Kind, o.DL.Error.HTTPStatus, o.DL.Error.SeamErrorType, o.DL.Error.Message)
				continue
			}
			permanentDLs[credOf(ev)]++
			if permanentDLs[credOf(ev)] > len(status400[credOf(ev)]) {
				t.Errorf("event %s dead-lettered after a 400 the fake never sent for its credential", ev.id)
			}
		case o.Subject == schemas.SubjectSkipped:
			skipped[credOf(ev)]++
		case o.Subject != map[string]string{schemas.SubjectCheckedIn: schemas.SubjectAssigned, schemas.SubjectCheckedOut: schemas.SubjectUnassigned}[ev.subject]:
			t.Errorf("event %s (%s): outcome %s", ev.id, ev.subject, o.Subject)
		default:
			applied[credOf(ev)]++
		}
	}
	// Every 400 dead-letters its event, unless the process handling it was
	// killed before it could publish, or the worker was uncertain whether an
	// earlier request had applied the change (an unanswered request, or a
	// redelivery after a kill): then it checks the credential, or retries
	// when it cannot, and the event ends applied, or skipped when newer
	// events of the credential superseded it meanwhile.
	explained, confirmed := 0, 0
	for cred, times := range status400 {
		excess := len(times) - permanentDLs[cred]
		for _, at := range times {
			uncertain := dropped[cred] > 0 || slices.ContainsFunc(kills, func(kl kill) bool { return kl.at.Before(at) })
			if excess > 0 && uncertain && applied[cred]+skipped[cred] > 0 {
				excess--
				confirmed++
				continue
			}
			for _, kl := range kills {
				if excess > 0 && !kl.at.Before(at) && kl.at.Sub(at) < 10*time.Second {
					excess--
					explained++
					break
				}
			}
		}
		if excess > 0 {
			t.Errorf("credential %s: %d answers 400 but only %d dead letters", cred, len(times), permanentDLs[cred])
		}
	}

	// The fake's final state follows the rule: the holder is the guest of
	// the newest check-in, unless that guest has a newer check-out. Where an
	// event of the credential was dead-lettered, its change may be missing
	// (the operator replays it): then only a guest whose check-out was handled
	// must not hold the key.
	outcomeOf := func(ev *crashEvent) consumertest.Outcome {
		if outs := got[ev]; len(outs) == 1 {
			return outs[0]
		}
		return consumertest.Outcome{}
	}
	exact, tolerated, maxEffects := 0, 0, 0
	for _, r := range rooms {
		want := crashRuleHolder(r.events)
		var holders []*crashGuest
		for _, g := range r.guests {
			if seam.IsAssigned(r.cred, g.user) {
				holders = append(holders, g)
			}
			effects := seam.Effects(r.cred, g.user)
			maxEffects = max(maxEffects, effects)
			// Each event changes the holder at most twice (its own call, a
			// removal by the next guest); a worker killed after Seam applied
			// an assign but before storing it can have a later event read
			// that holder from Seam and remove it before the redelivery
			// assigns it again: two more per kill.
			if effects > 2*len(g.events)+2*len(kills) {
				t.Errorf("room %s: guest %s has %d effective changes in the fake from %d events", r.cred, g.user, effects, len(g.events))
			}
		}
		var have *crashGuest
		if len(holders) == 1 {
			have = holders[0]
		}
		deadLettered := slices.ContainsFunc(r.events, func(ev *crashEvent) bool { return outcomeOf(ev).DeadLetter })
		switch {
		case len(holders) > 1:
			t.Errorf("room %s: %d guests hold one credential", r.cred, len(holders))
		case have == want:
			exact++
		case deadLettered && (have == nil || !crashCheckedOut(have) || outcomeOf(have.events[len(have.events)-1]).DeadLetter):
			// Dead-lettered, the change waits for its replay: a guest keeps
			// the key only when its own check-out is that dead letter.
			tolerated++
			t.Logf("room %s: holder %s, rule %s: an event of the room was dead-lettered", r.cred, crashGuestName(have), crashGuestName(want))
		default:
			t.Errorf("room %s (%d guests, %d events): holder %s, the rule says %s; events in time order: %s",
				r.cred, len(r.guests), len(r.events), crashGuestName(have), crashGuestName(want), describeRoom(r, outcomeOf))
		}
	}
	foundPublished := 0
	for _, l := range worker.logLines() {
		if strings.Contains(l, "owner that died before recording it") {
			foundPublished++
		}
	}

	dups := 0
	for _, ev := range events {
		if ev.dup {
			dups++
		}
	}
	guests := 0
	for _, r := range rooms {
		guests += len(r.guests)
	}
	t.Logf("events: %d distinct, %d publishes (%d published twice), %d malformed, %d rooms with %d guests", len(events), len(pubs), dups, max(1, n/100), len(rooms), guests)
	t.Logf("final state: %d rooms exactly as the rule says, %d tolerated after a dead letter; %d deliveries found their outcome published by a killed worker", exact, tolerated, foundPublished)
	t.Logf("outcomes: %d %v", len(outcomes), subjects)
	t.Logf("dead letters by kind: %v", dlKinds)
	var killDesc []string
	for _, k := range kills {
		killDesc = append(killDesc, fmt.Sprintf("%s at +%s", k.what, k.at.Sub(started).Round(time.Millisecond)))
	}
	t.Logf("kills (SIGKILL): %d [%s]; worker runs %d; SIGTERM exit %d in %s", len(kills), strings.Join(killDesc, ", "), len(worker.logs), code, stopIn.Round(time.Millisecond))
	t.Logf("seam: %d calls (assign %d, unassign %d, get %d), answers %v, %d effects (max %d per guest); 400s explained by kills %d, by an uncertain earlier request %d",
		seam.Calls(""), seam.Calls("assign"), seam.Calls("unassign"), seam.Calls("get"), answerCounts, seam.TotalEffects(), maxEffects, explained, confirmed)
	t.Logf("duration: %s processing (start to drained), %s in all", processed.Round(time.Millisecond), time.Since(started).Round(time.Millisecond))
}

// crashRuleHolder is the rule's holder of a room: the guest of the newest
// check-in, unless that guest has a check-out at least as new.
func crashRuleHolder(events []*crashEvent) *crashGuest {
	var newest *crashEvent
	for _, ev := range events {
		if ev.subject == schemas.SubjectCheckedIn && (newest == nil || ev.at.After(newest.at)) {
			newest = ev
		}
	}
	if newest == nil {
		return nil
	}
	for _, ev := range newest.guest.events {
		if ev.subject == schemas.SubjectCheckedOut && !ev.at.Before(newest.at) {
			return nil
		}
	}
	return newest.guest
}

// crashCheckedOut reports whether the guest's newest event is a check-out.
func crashCheckedOut(g *crashGuest) bool {
	return g.events[len(g.events)-1].subject == schemas.SubjectCheckedOut
}

func crashGuestName(g *crashGuest) string {
	if g == nil {
		return "nobody"
	}
	return g.user
}

func describeRoom(r *crashRoom, outcomeOf func(*crashEvent) consumertest.Outcome) string {
	var parts []string
	for _, ev := range r.events {
		o := outcomeOf(ev)
		what := o.Subject
		if o.Subject == schemas.SubjectSkipped {
			what += "/" + o.Skip.Reason
		}
		parts = append(parts, fmt.Sprintf("%s %s %s -> %s", ev.guest.user[:8], ev.subject, ev.at.Format(time.TimeOnly), what))
	}
	return strings.Join(parts, "; ")
}

// distinctInvalidDeadLetters reports whether outs are invalid_event dead
// letters of as many different input messages.
func distinctInvalidDeadLetters(outs []consumertest.Outcome) bool {
	seen := map[uint64]bool{}
	for _, o := range outs {
		if !o.DeadLetter || o.DL.Error.Kind != schemas.ErrorKindInvalidEvent || seen[o.DL.OriginalStreamSequence] {
			return false
		}
		seen[o.DL.OriginalStreamSequence] = true
	}
	return true
}
