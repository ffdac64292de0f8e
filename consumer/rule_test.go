package consumer_test

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"pgregory.net/rapid"

	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

// seamModes are the ways Seam may treat a change of holder: an assign to a
// held credential takes it over or is refused (409), an unassign by a
// non-holder is a no-op or is refused (400). The rule must hold under each.
var seamModes = []struct {
	name      string
	exclusive bool // assign refused while another user holds the credential
	strict    bool // unassign refused from a non-holder
}{
	{"takeover+noop_unassign", false, false},
	{"exclusive_assign+noop_unassign", true, false},
	{"takeover+strict_unassign", false, true},
	{"exclusive_assign+strict_unassign", true, true},
}

func seamModeOptions(exclusive, strict bool) []seamtest.Option {
	opts := []seamtest.Option{seamtest.WithAutoCreate()}
	if exclusive {
		opts = append(opts, seamtest.WithExclusiveAssign())
	}
	if strict {
		opts = append(opts, seamtest.WithStrictUnassign())
	}
	return opts
}

// hotelRooms builds the events of rooms credentials, each passed along four
// consecutive guests: every guest checks in, and checks out after (or, for
// the last guest of every third room, is still in the house). In a quarter
// of the rooms each check-out comes after the next guest's check-in (a late
// check-out). A fifth of the guests are user identities; some events name
// their guest or credential in upper case. Times are in the past, minutes
// apart within a room and distinct across rooms.
func hotelRooms(rng *rand.Rand, rooms int, base time.Time) []ruleEvent {
	const guests = 4
	var evs []ruleEvent
	seen := map[time.Time]bool{}
	for r := range rooms {
		cred := fmt.Sprintf("66666666-6666-4666-8666-%012d", r)
		overlap := r%4 == 1
		inHouse := r%3 == 0
		offset := time.Duration(r) * 7 * time.Second
		for k := range guests {
			guest := fmt.Sprintf("33333333-3333-4333-8333-%06d%06d", r, k)
			identity := rng.Float64() < 0.2
			if identity {
				guest = fmt.Sprintf("44444444-4444-4444-8444-%06d%06d", r, k)
			}
			upperOut, upperIn := false, false
			switch x := rng.Float64(); {
			case x < 0.2:
				upperOut = true
			case x < 0.4:
				upperIn = true
			}
			stay := base.Add(time.Duration(k)*40*time.Minute + offset)
			in := ruleEvent{
				id: fmt.Sprintf("room%03d-guest%d-in", r, k), cred: cred, guest: guest, identity: identity,
				checkIn: true, at: stay,
			}
			if upperIn {
				in.guest = strings.ToUpper(guest)
			}
			evs = append(evs, in)
			if k == guests-1 && inHouse {
				continue
			}
			stayFor := 30 * time.Minute
			if overlap && k < guests-1 {
				stayFor = 45 * time.Minute // past the next guest's check-in at 40 min
			}
			out := in
			out.id, out.checkIn, out.at, out.guest = fmt.Sprintf("room%03d-guest%d-out", r, k), false, stay.Add(stayFor), guest
			if upperOut {
				out.guest = strings.ToUpper(guest)
			}
			evs = append(evs, out)
		}
	}
	for i := range evs {
		if rng.Float64() < 0.15 {
			evs[i].cred = strings.ToUpper(evs[i].cred)
		}
		if seen[evs[i].at] {
			panic("hotelRooms: two events at the same time")
		}
		seen[evs[i].at] = true
	}
	return evs
}

// pmsOrder is the order a real PMS might publish events in: by time, then
// about a tenth of neighbouring pairs swapped, and in about one room in
// twenty one event held back and published at the end.
func pmsOrder(rng *rand.Rand, evs []ruleEvent) []ruleEvent {
	order := sortedByTime(evs)
	for i := 0; i+1 < len(order); i++ {
		if rng.Float64() < 0.1 {
			order[i], order[i+1] = order[i+1], order[i]
			i++
		}
	}
	byRoom := map[string][]int{}
	var rooms []string
	for i, e := range order {
		c := strings.ToLower(e.cred)
		if byRoom[c] == nil {
			rooms = append(rooms, c)
		}
		byRoom[c] = append(byRoom[c], i)
	}
	late := map[int]bool{}
	for _, c := range rooms {
		if rng.Float64() < 0.05 {
			idx := byRoom[c]
			late[idx[rng.IntN(len(idx))]] = true
		}
	}
	var early, held []ruleEvent
	for i, e := range order {
		if late[i] {
			held = append(held, e)
		} else {
			early = append(early, e)
		}
	}
	rng.Shuffle(len(held), func(i, j int) { held[i], held[j] = held[j], held[i] })
	return append(early, held...)
}

// TestRule_HotelRooms runs a day of a 100-room hotel, four guests per room,
// through two replicas, under each way Seam may treat a change of holder.
// Every room must end with the rule's holder, every event with one outcome,
// and nothing may be dead-lettered.
func TestRule_HotelRooms(t *testing.T) {
	const rooms = 100
	for i, mode := range seamModes {
		t.Run(mode.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(20261201, uint64(i)))
			evs := hotelRooms(rng, rooms, time.Now().Add(-4*time.Hour))
			order := pmsOrder(rng, evs)

			h := newHarness(t, fastConfig(), seamModeOptions(mode.exclusive, mode.strict)...)
			h.start(2)
			start := time.Now()
			for _, e := range order {
				h.publish(e.subject(), e.doc(), "")
			}
			h.waitDrained(45 * time.Second)
			t.Logf("%d events of %d rooms through two replicas in %s", len(evs), rooms, time.Since(start).Round(time.Millisecond))

			outs := h.outcomes()
			bySubject := checkOneOutcomeEach(t, outs, evs)
			t.Logf("outcomes: %v; Seam calls: %d assign, %d unassign, %d get", bySubject,
				h.seam.Calls("assign"), h.seam.Calls("unassign"), h.seam.Calls("get"))
			checkNoDeadLetters(t, outs)
			checkHolders(t, h.seam, evs, order)
		})
	}
}

// replicaSet runs worker replicas that can be stopped one by one, each
// with its own NATS connection, as separate processes would.
type replicaSet struct {
	h      *harness
	mu     sync.Mutex
	cancel []context.CancelFunc
	wg     sync.WaitGroup
}

func newReplicaSet(h *harness, n int) *replicaSet {
	rs := &replicaSet{h: h, cancel: make([]context.CancelFunc, n)}
	for i := range n {
		rs.startAt(i)
	}
	h.t.Cleanup(rs.stopAll)
	return rs
}

// startAt starts a fresh replica in slot i.
func (rs *replicaSet) startAt(i int) {
	h := rs.h
	h.t.Helper()
	nc, err := nats.Connect(h.url)
	if err != nil {
		h.t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		h.t.Fatal(err)
	}
	w, err := consumer.New(context.Background(), js, h.seamClient(), h.cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rs.mu.Lock()
	rs.cancel[i] = cancel
	rs.mu.Unlock()
	rs.wg.Add(1)
	go func() {
		defer rs.wg.Done()
		defer nc.Close()
		// Killed before it got going, Run may fail with the context's error.
		if err := w.Run(ctx); err != nil && ctx.Err() == nil {
			h.t.Errorf("replica %d: %v", i, err)
		}
	}()
}

// kill stops the replica in slot i, without waiting for it to finish its
// in-flight events, and starts a fresh one in its place.
func (rs *replicaSet) kill(i int) {
	rs.mu.Lock()
	cancel := rs.cancel[i]
	rs.mu.Unlock()
	cancel()
	rs.startAt(i)
}

// stopAll stops every replica and waits until each Run has returned.
func (rs *replicaSet) stopAll() {
	rs.mu.Lock()
	for _, c := range rs.cancel {
		c()
	}
	rs.mu.Unlock()
	rs.wg.Wait()
}

// scenario is one random case of the property test.
type scenario struct {
	events    []ruleEvent
	pubs      []publication
	replicas  int
	kills     []replicaKill
	exclusive bool
	strict    bool
	latency   time.Duration
}

type publication struct {
	event int    // index in events
	msgID string // Nats-Msg-Id, empty for none
}

type replicaKill struct {
	after   int // publications before the kill
	replica int
}

func (sc scenario) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d replicas, exclusive assign %v, strict unassign %v, latency %s\nevents by time:\n", sc.replicas, sc.exclusive, sc.strict, sc.latency)
	for _, e := range sortedByTime(sc.events) {
		fmt.Fprintf(&b, "\t%s on %s\n", e, e.cred)
	}
	b.WriteString("published:")
	for i, p := range sc.pubs {
		for _, k := range sc.kills {
			if k.after == i {
				fmt.Fprintf(&b, " [kill %d]", k.replica)
			}
		}
		fmt.Fprintf(&b, " %s", sc.events[p.event].id)
		if p.msgID != "" {
			fmt.Fprintf(&b, "(%s)", p.msgID)
		}
	}
	for _, k := range sc.kills {
		if k.after == len(sc.pubs) {
			fmt.Fprintf(&b, " [kill %d]", k.replica)
		}
	}
	return b.String()
}

// drawScenario draws 1-3 credentials, 2-4 guests, random stays (check-in,
// then maybe a check-out, overlapping freely, now and then a check-out at
// the very time of its check-in or one without any check-in), a random
// arrival order with duplicates, 2 or 3 replicas, up to two kills and the
// Seam mode.
func drawScenario(t *rapid.T, base time.Time) scenario {
	nCreds := rapid.IntRange(1, 3).Draw(t, "credentials")
	nGuests := rapid.IntRange(2, 4).Draw(t, "guests")
	type guest struct {
		id       string
		identity bool
	}
	guests := make([]guest, nGuests)
	for g := range guests {
		guests[g].identity = rapid.Bool().Draw(t, fmt.Sprintf("guest%d_identity", g))
		guests[g].id = fmt.Sprintf("33333333-3333-4333-8333-%012d", g)
		if guests[g].identity {
			guests[g].id = fmt.Sprintf("44444444-4444-4444-8444-%012d", g)
		}
	}
	nStays := rapid.IntRange(1, 6).Draw(t, "stays")
	nStray := rapid.IntRange(0, 1).Draw(t, "stray_checkouts")
	// Two distinct instants per stay and one per stray check-out, one
	// second apart at least: no two check-ins ever share a time.
	slots := rapid.SliceOfNDistinct(rapid.IntRange(0, 200), 2*nStays+nStray, 2*nStays+nStray, rapid.ID[int]).Draw(t, "times")
	at := func(slot int) time.Time { return base.Add(time.Duration(slot) * time.Second) }
	var sc scenario
	mk := func(cred, g int, checkIn bool, when time.Time) ruleEvent {
		kind := "out"
		if checkIn {
			kind = "in"
		}
		e := ruleEvent{
			id:   fmt.Sprintf("e%02d-%s-c%d-g%d", len(sc.events), kind, cred, g),
			cred: fmt.Sprintf("66666666-6666-4666-8666-%012d", cred), guest: guests[g].id,
			identity: guests[g].identity, checkIn: checkIn, at: when,
		}
		if rapid.IntRange(0, 3).Draw(t, e.id+"_upper") == 0 {
			e.guest = strings.ToUpper(e.guest)
		}
		if rapid.IntRange(0, 3).Draw(t, e.id+"_upper_cred") == 0 {
			e.cred = strings.ToUpper(e.cred)
		}
		return e
	}
	for s := range nStays {
		cred := rapid.IntRange(0, nCreds-1).Draw(t, fmt.Sprintf("stay%d_credential", s))
		g := rapid.IntRange(0, nGuests-1).Draw(t, fmt.Sprintf("stay%d_guest", s))
		in, out := at(min(slots[2*s], slots[2*s+1])), at(max(slots[2*s], slots[2*s+1]))
		sc.events = append(sc.events, mk(cred, g, true, in))
		switch rapid.IntRange(0, 9).Draw(t, fmt.Sprintf("stay%d_checkout", s)) {
		case 0, 1: // still in the house, or the check-out was lost
		case 2:
			sc.events = append(sc.events, mk(cred, g, false, in)) // same instant: checked out
		default:
			sc.events = append(sc.events, mk(cred, g, false, out))
		}
	}
	for s := range nStray {
		cred := rapid.IntRange(0, nCreds-1).Draw(t, "stray_credential")
		g := rapid.IntRange(0, nGuests-1).Draw(t, "stray_guest")
		sc.events = append(sc.events, mk(cred, g, false, at(slots[2*nStays+s])))
	}

	for _, i := range rapid.Permutation(seq(len(sc.events))).Draw(t, "arrival") {
		var msgID string
		if rapid.Bool().Draw(t, fmt.Sprintf("msgid%d", i)) {
			msgID = sc.events[i].id
		}
		sc.pubs = append(sc.pubs, publication{event: i, msgID: msgID})
	}
	nDup := rapid.IntRange(0, 3).Draw(t, "duplicates")
	for d := range nDup {
		i := rapid.IntRange(0, len(sc.events)-1).Draw(t, fmt.Sprintf("dup%d_event", d))
		pos := rapid.IntRange(0, len(sc.pubs)).Draw(t, fmt.Sprintf("dup%d_position", d))
		var msgID string // another Nats-Msg-Id than the original's, or none
		if rapid.Bool().Draw(t, fmt.Sprintf("dup%d_msgid", d)) {
			msgID = fmt.Sprintf("%s-copy%d", sc.events[i].id, d)
		}
		sc.pubs = slices.Insert(sc.pubs, pos, publication{event: i, msgID: msgID})
	}

	sc.replicas = rapid.IntRange(2, 3).Draw(t, "replicas")
	nKills := rapid.IntRange(0, 2).Draw(t, "kills")
	for k := range nKills {
		sc.kills = append(sc.kills, replicaKill{
			after:   rapid.IntRange(0, len(sc.pubs)).Draw(t, fmt.Sprintf("kill%d_after", k)),
			replica: rapid.IntRange(0, sc.replicas-1).Draw(t, fmt.Sprintf("kill%d_replica", k)),
		})
	}
	sc.exclusive = rapid.Bool().Draw(t, "exclusive_assign")
	sc.strict = rapid.Bool().Draw(t, "strict_unassign")
	sc.latency = rapid.SampledFrom([]time.Duration{0, 2 * time.Millisecond, 10 * time.Millisecond}).Draw(t, "latency")
	return sc
}

func seq(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

// runScenario publishes a scenario's events to a fresh server and fake
// through its replicas, killing and replacing replicas on the way, and
// checks the end state against the rule.
func runScenario(t *testing.T, sc scenario) {
	cfg := fastConfig()
	// Short grace, so a kill hands in-flight events back half done. The
	// delivery limit is for poison messages; kills and busy credentials
	// must not exhaust it here.
	cfg.ShutdownGrace = 200 * time.Millisecond
	cfg.MaxDeliver = 20
	opts := seamModeOptions(sc.exclusive, sc.strict)
	if sc.latency > 0 {
		opts = append(opts, seamtest.WithLatency(sc.latency))
	}
	h := newHarness(t, cfg, opts...)
	rs := newReplicaSet(h, sc.replicas)
	killAfter := func(n int) {
		for _, k := range sc.kills {
			if k.after == n {
				rs.kill(k.replica)
			}
		}
	}
	killAfter(0)
	for n, p := range sc.pubs {
		e := sc.events[p.event]
		h.publish(e.subject(), e.doc(), p.msgID)
		killAfter(n + 1)
	}
	h.waitDrained(20 * time.Second)
	rs.stopAll() // no replica may touch Seam once the state is read

	outs := h.outcomes()
	checkOneOutcomeEach(t, outs, sc.events)
	checkNoDeadLetters(t, outs)
	checkHolders(t, h.seam, sc.events, nil)
	if t.Failed() {
		t.Logf("scenario:\n%s", sc)
	}
}

// propertyChecks is how many random scenarios TestRule_Property runs
// unless -rapid.checks or RAPID_CHECKS says otherwise: each needs its own
// NATS server, so rapid's default of 100 would take minutes.
const propertyChecks = 50

// setRapidDefault sets one of rapid's flags unless the command line or the
// environment set it.
func setRapidDefault(t *testing.T, name, env, value string) {
	t.Helper()
	if _, ok := os.LookupEnv(env); ok {
		return
	}
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	if set {
		return
	}
	if err := flag.Set(name, value); err != nil {
		t.Fatal(err)
	}
}

// TestRule_Property checks the rule on random small hotels: random stays,
// arrival orders, duplicates, replica kills and Seam modes. Each case runs
// as a subtest on its own NATS server and fake; rapid shrinks a failing
// case to a small one.
func TestRule_Property(t *testing.T) {
	setRapidDefault(t, "rapid.checks", "RAPID_CHECKS", fmt.Sprint(propertyChecks))
	setRapidDefault(t, "rapid.shrinktime", "RAPID_SHRINKTIME", "15s")
	setRapidDefault(t, "rapid.nofailfile", "RAPID_NOFAILFILE", "true") // -rapid.seed redraws a failed case; keep the tree clean
	start := time.Now()
	n := 0
	rapid.Check(t, func(rt *rapid.T) {
		sc := drawScenario(rt, time.Now().Add(-2*time.Hour))
		n++
		name := fmt.Sprintf("case%03d", n)
		if !t.Run(name, func(t *testing.T) { runScenario(t, sc) }) {
			rt.Logf("%s failed:\n%s", name, sc)
			// The same message every time, so rapid sees the same failure
			// while it shrinks the case.
			rt.Fatal("the scenario ends against the rule (see its subtest)")
		}
	})
	t.Logf("%d cases in %s", n, time.Since(start).Round(time.Millisecond))
}
