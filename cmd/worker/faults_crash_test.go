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
	pair      *crashPair // nil when malformed
	malformed string     // "", "json" or "both_ids"
	dup       bool       // published a second time with another Nats-Msg-Id
}

// crashPair is one (credential, user); its events are in time order.
type crashPair struct {
	cred, user string
	identity   bool
	events     []*crashEvent
}

// crashPublish is one publish: the event and the Nats-Msg-Id it goes with.
type crashPublish struct {
	ev    *crashEvent
	msgID string
	key   float64
}

const crashSource = "pms://crash-test"

// planCrash builds n distinct events: 1% malformed, the rest spread over
// pairs of one check-in, check-in then check-out, or check-in, check-out,
// check-in again. About 5% of the events are check-outs published before
// their check-in, and 10% of the events are published twice.
func planCrash(t *testing.T, n int, rng *rand.Rand) ([]*crashEvent, []*crashPair, []crashPublish) {
	t.Helper()
	malformed := max(1, n/100)
	valid := n - malformed
	base := time.Now().Add(-2 * time.Hour).Truncate(time.Millisecond)
	var (
		events []*crashEvent
		pairs  []*crashPair
		twos   []*crashPair
	)
	for left := valid; left > 0; {
		size := 1
		switch r := rng.Float64(); {
		case r < 0.30:
		case r < 0.85:
			size = 2
		default:
			size = 3
		}
		size = min(size, left)
		left -= size
		p := &crashPair{cred: newUUID(), user: newUUID(), identity: rng.Float64() < 0.2}
		at := base.Add(time.Duration(len(pairs)) * time.Millisecond)
		for i := range size {
			subject := schemas.SubjectCheckedIn
			if i == 1 {
				subject = schemas.SubjectCheckedOut
			}
			d := schemas.GuestData{ACSCredentialID: p.cred, ReservationID: fmt.Sprintf("R-%d", len(pairs))}
			if p.identity {
				d.UserIdentityID = p.user
			} else {
				d.ACSUserID = p.user
			}
			ev := &crashEvent{id: newUUID(), subject: subject, at: at.Add(time.Duration(i) * time.Minute), pair: p}
			ev.doc = procGuestDoc(t, subject, crashSource, ev.id, ev.at, d)
			p.events = append(p.events, ev)
			events = append(events, ev)
		}
		if size == 2 {
			twos = append(twos, p)
		}
		pairs = append(pairs, p)
	}

	// Publish order: pairs interleaved at random, each in its own order,
	// except that some two-event pairs publish the check-out first.
	queues := make([][]*crashEvent, len(pairs))
	for i, p := range pairs {
		queues[i] = append([]*crashEvent(nil), p.events...)
	}
	rng.Shuffle(len(twos), func(i, j int) { twos[i], twos[j] = twos[j], twos[i] })
	outFirst := map[*crashPair]bool{}
	for _, p := range twos[:min(len(twos), n*5/100)] {
		outFirst[p] = true
	}
	for i, p := range pairs {
		if outFirst[p] {
			queues[i][0], queues[i][1] = queues[i][1], queues[i][0]
		}
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
			ev.doc = procGuestDoc(t, ev.subject, crashSource, ev.id, ev.at, schemas.GuestData{
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
	return events, pairs, pubs
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
		"KEYWORKER_CONCURRENCY=32", "KEYWORKER_MAX_DELIVER=10", "KEYWORKER_SHUTDOWN_GRACE=2s", "LOG_LEVEL=info")
	started := time.Now()
	worker.start()
	worker.waitReady(30 * time.Second)
	client := procConnect(t, natsSrv)

	events, pairs, pubs := planCrash(t, n, rng)
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
		procPoll(t, remaining(), func() error {
			c, err := client.outcomeCount()
			if err == nil && c < target {
				err = fmt.Errorf("%d outcome events, waiting for %d to kill the %s", c, target, step.what)
			}
			return err
		})
		kills = append(kills, kill{step.what, time.Now()})
		if step.what == "worker" {
			worker.kill()
			worker.start()
			worker.waitReady(30 * time.Second)
			continue
		}
		natsSrv.kill()
		procPoll(t, 15*time.Second, func() error {
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
	procPoll(t, remaining(), func() error {
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
	got := map[*crashEvent][]procOutcome{}
	subjects := map[string]int{}
	dlKinds := map[string]int{}
	for _, o := range outcomes {
		subjects[o.Subject]++
		if o.IsDL {
			dlKinds[o.DL.Error.Kind]++
		}
		var ev *crashEvent
		if id := o.sourceID(); id != "" {
			ev = byID[id]
		} else if o.IsDL {
			ev = bySeq[o.DL.OriginalStreamSequence]
		}
		if ev == nil {
			t.Errorf("%s (seq %d) is about no published event: source id %q", o.Subject, o.Seq, o.sourceID())
			continue
		}
		got[ev] = append(got[ev], o)
	}

	// Exactly one outcome per event; dead letters only where due.
	type pathKey struct{ cred, path string }
	answers := seam.Answers()
	status400 := map[pathKey][]time.Time{}
	dropped := map[pathKey]int{}
	answerCounts := map[string]int{}
	for _, a := range answers {
		k := pathKey{procRequestCredential(a.Body), a.Path}
		switch {
		case a.Dropped:
			dropped[k]++
			answerCounts["dropped"]++
		default:
			answerCounts[fmt.Sprint(a.Status)]++
		}
		if a.Status == http.StatusBadRequest {
			status400[k] = append(status400[k], a.At)
		}
	}
	endpoint := func(ev *crashEvent) pathKey {
		if ev.subject == schemas.SubjectCheckedIn {
			return pathKey{strings.ToLower(ev.pair.cred), seamtest.PathAssign}
		}
		return pathKey{strings.ToLower(ev.pair.cred), seamtest.PathUnassign}
	}
	permanentDLs := map[pathKey]int{}
	applied := map[pathKey]int{} // events that ended with their change applied
	for _, ev := range events {
		outs := got[ev]
		if len(outs) != 1 {
			var desc []string
			for _, o := range outs {
				if o.IsDL {
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
			if !o.IsDL || o.DL.Error.Kind != schemas.ErrorKindInvalidEvent {
				t.Errorf("malformed event %s (%s): outcome %s kind %q, want an invalid_event dead letter", ev.id, ev.malformed, o.Subject, o.DL.Error.Kind)
			}
		case o.IsDL:
			if o.DL.Error.Kind != schemas.ErrorKindPermanent || o.DL.Error.HTTPStatus != http.StatusBadRequest || o.DL.Error.SeamErrorType != "invalid_input" {
				t.Errorf("event %s (%s) dead-lettered as %s (%d %s): %s; only the fake's random 400 invalid_input may dead-letter a valid event",
					ev.id, ev.subject, o.DL.Error.Kind, o.DL.Error.HTTPStatus, o.DL.Error.SeamErrorType, o.DL.Error.Message)
				continue
			}
			k := endpoint(ev)
			permanentDLs[k]++
			if permanentDLs[k] > len(status400[k]) {
				t.Errorf("event %s dead-lettered after a 400 the fake never sent on %s", ev.id, k.path)
			}
		case o.Subject == schemas.SubjectSkipped:
		case o.Subject != map[string]string{schemas.SubjectCheckedIn: schemas.SubjectAssigned, schemas.SubjectCheckedOut: schemas.SubjectUnassigned}[ev.subject]:
			t.Errorf("event %s (%s): outcome %s", ev.id, ev.subject, o.Subject)
		default:
			applied[endpoint(ev)]++
		}
	}
	// Every 400 on assign or unassign dead-letters its event, unless the
	// process handling it was killed before it could publish, or the worker
	// was uncertain whether an earlier request had applied the change (an
	// unanswered request, or a redelivery after a kill): then it checks the
	// credential, or retries when it cannot, and the event ends applied.
	explained, confirmed := 0, 0
	for k, times := range status400 {
		if k.path == seamtest.PathGet {
			continue
		}
		excess := len(times) - permanentDLs[k]
		for _, at := range times {
			uncertain := dropped[k] > 0 || slices.ContainsFunc(kills, func(kl kill) bool { return kl.at.Before(at) })
			if excess > 0 && uncertain && applied[k] > 0 {
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
			t.Errorf("credential %s: %d answers 400 on %s but only %d dead letters", k.cred, len(times), k.path, permanentDLs[k])
		}
	}

	// The fake's final state follows the newest event that was not
	// dead-lettered; a guest who checked out never keeps the key.
	tolerated, maxEffects := 0, 0
	outcomeOf := func(ev *crashEvent) procOutcome {
		if outs := got[ev]; len(outs) == 1 {
			return outs[0]
		}
		return procOutcome{}
	}
	for _, p := range pairs {
		var newest *crashEvent
		var newerDLs []*crashEvent
		for _, ev := range p.events {
			if outcomeOf(ev).IsDL {
				newerDLs = append(newerDLs, ev)
				continue
			}
			newest, newerDLs = ev, nil
		}
		want := newest != nil && newest.subject == schemas.SubjectCheckedIn
		assigned := seam.IsAssigned(p.cred, p.user)
		if assigned != want {
			// A dead-lettered event whose earlier call was applied and
			// dropped may have changed the credential: either state is right.
			ambiguous := false
			for _, ev := range newerDLs {
				if dropped[endpoint(ev)] > 0 {
					ambiguous = true
				}
			}
			if ambiguous {
				tolerated++
				t.Logf("pair %s: assigned %v: the newest event was dead-lettered after a dropped call that may have applied it", p.cred, assigned)
			} else {
				t.Errorf("pair %s (%d events, newest surviving %v): assigned %v, want %v", p.cred, len(p.events), describeCrash(newest, outcomeOf), assigned, want)
			}
		}
		last := p.events[len(p.events)-1]
		if last.subject == schemas.SubjectCheckedOut && assigned && !outcomeOf(last).IsDL {
			t.Errorf("pair %s: the guest checked out (event %s, outcome %s) but the key is still assigned", p.cred, last.id, outcomeOf(last).Subject)
		}
		effects := seam.Effects(p.cred, p.user)
		maxEffects = max(maxEffects, effects)
		if effects > len(p.events) {
			t.Errorf("pair %s: %d effective changes in the fake from %d events", p.cred, effects, len(p.events))
		}
	}

	dups := 0
	for _, ev := range events {
		if ev.dup {
			dups++
		}
	}
	t.Logf("events: %d distinct, %d publishes (%d published twice), %d malformed, %d pairs", len(events), len(pubs), dups, max(1, n/100), len(pairs))
	t.Logf("outcomes: %d %v", len(outcomes), subjects)
	t.Logf("dead letters by kind: %v", dlKinds)
	var killDesc []string
	for _, k := range kills {
		killDesc = append(killDesc, fmt.Sprintf("%s at +%s", k.what, k.at.Sub(started).Round(time.Millisecond)))
	}
	t.Logf("kills (SIGKILL): %d [%s]; worker runs %d; SIGTERM exit %d in %s", len(kills), strings.Join(killDesc, ", "), len(worker.logs), code, stopIn.Round(time.Millisecond))
	t.Logf("seam: %d calls (assign %d, unassign %d, get %d), answers %v, %d effects (max %d per pair); 400s explained by kills %d, by an uncertain earlier request %d; state mismatches tolerated %d",
		seam.Calls(""), seam.Calls("assign"), seam.Calls("unassign"), seam.Calls("get"), answerCounts, seam.TotalEffects(), maxEffects, explained, confirmed, tolerated)
	t.Logf("duration: %s processing (start to drained), %s in all", processed.Round(time.Millisecond), time.Since(started).Round(time.Millisecond))
}

func describeCrash(ev *crashEvent, outcomeOf func(*crashEvent) procOutcome) string {
	if ev == nil {
		return "none"
	}
	return fmt.Sprintf("%s %s -> %s", ev.subject, ev.at.Format(time.TimeOnly), outcomeOf(ev).Subject)
}
