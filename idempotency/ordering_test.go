package idempotency_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/idempotency"
)

const (
	credID = "6f1c1c8e-3b0a-4a53-9d7e-0c3e2a1b9f10"
	userID = "0b7f5f6e-2d1c-4e8b-a1f2-9c8d7e6f5a4b"
)

func newOrdering(t *testing.T, opts ...idempotency.Option) (*idempotency.Ordering, jetstream.KeyValue) {
	t.Helper()
	js := newJetStream(t)
	kv := newBucket(t, js, idempotency.StateBucketConfig(idempotency.DefaultStateBucket, 1))
	return idempotency.NewOrdering(kv, opts...), kv
}

var base = time.Date(2026, 3, 14, 12, 0, 0, 0, time.UTC)

func checkIn(id string, at time.Time) idempotency.PairEvent {
	return idempotency.PairEvent{Key: idempotency.Key("hotel", id), Time: at, Priority: 0, Type: "guest.checked_in", Assign: true}
}

func checkOut(id string, at time.Time) idempotency.PairEvent {
	return idempotency.PairEvent{Key: idempotency.Key("hotel", id), Time: at, Priority: 1, Type: "guest.checked_out"}
}

func mustAcquire(t *testing.T, o *idempotency.Ordering, pair, owner string, ev idempotency.PairEvent) *idempotency.PairLease {
	t.Helper()
	l, err := o.Acquire(testCtx(t), pair, owner, ev, lease)
	if err != nil {
		t.Fatalf("acquire %s by %s for %s: %v", pair, owner, ev.Type, err)
	}
	return l
}

func apply(t *testing.T, o *idempotency.Ordering, pair, owner string, ev idempotency.PairEvent) {
	t.Helper()
	l := mustAcquire(t, o, pair, owner, ev)
	if err := o.Applied(testCtx(t), l); err != nil {
		t.Fatalf("applied: %v", err)
	}
}

func stale(t *testing.T, o *idempotency.Ordering, pair string, ev idempotency.PairEvent) *idempotency.StaleError {
	t.Helper()
	_, err := o.Acquire(testCtx(t), pair, "x", ev, lease)
	var se *idempotency.StaleError
	if !errors.Is(err, idempotency.ErrStale) || !errors.As(err, &se) {
		t.Fatalf("acquire %s at %s: err = %v, want *StaleError", ev.Type, ev.Time, err)
	}
	return se
}

func TestPairKey_SeparatesUserKindsAndSanitisesIDs(t *testing.T) {
	if got, want := idempotency.PairKey(credID, userID, ""), "c."+credID+".u."+userID; got != want {
		t.Fatalf("acs user key = %q, want %q", got, want)
	}
	if got, want := idempotency.PairKey(credID, "", userID), "c."+credID+".i."+userID; got != want {
		t.Fatalf("user identity key = %q, want %q", got, want)
	}

	odd := idempotency.PairKey("cred.with>dots*", "", "")
	if strings.ContainsAny(strings.TrimPrefix(odd, "c."), "*>") || strings.Contains(odd, "..") || strings.HasSuffix(odd, ".") {
		t.Fatalf("unsanitised key %q", odd)
	}
	if odd != idempotency.PairKey("cred.with>dots*", "", "") {
		t.Fatal("pair key is not deterministic")
	}
	if idempotency.PairKey("a.b", "u", "") == idempotency.PairKey("a_b", "u", "") {
		t.Fatal("sanitised ids collide")
	}

	// Every form is a usable KV key.
	o, _ := newOrdering(t)
	for _, k := range []string{odd, idempotency.PairKey(credID, userID, ""), idempotency.PairKey("", "", "ü")} {
		apply(t, o, k, "a", checkIn("1", base))
	}
}

func TestAcquire_NewerEventAppliesAndTracksAssignment(t *testing.T) {
	o, _ := newOrdering(t)
	pair := idempotency.PairKey(credID, userID, "")

	in := checkIn("in", base)
	apply(t, o, pair, "a", in)
	st, _, err := o.Get(testCtx(t), pair)
	if err != nil {
		t.Fatal(err)
	}
	if !st.NewestTime.Equal(base) || st.NewestEventKey != in.Key || st.NewestType != in.Type || st.NewestPriority != 0 ||
		!st.Assigned || st.LeaseOwner != "" || !st.LeaseUntil.IsZero() || st.LeaseEventKey != "" {
		t.Fatalf("state after check-in = %+v", st)
	}

	out := checkOut("out", base.Add(time.Hour))
	apply(t, o, pair, "b", out)
	st, _, err = o.Get(testCtx(t), pair)
	if err != nil {
		t.Fatal(err)
	}
	if !st.NewestTime.Equal(out.Time) || st.NewestEventKey != out.Key || st.NewestPriority != 1 || st.Assigned {
		t.Fatalf("state after check-out = %+v", st)
	}
}

func TestAcquire_OlderEventIsStale(t *testing.T) {
	o, _ := newOrdering(t)
	pair := idempotency.PairKey(credID, userID, "")
	out := checkOut("out", base.Add(time.Hour))
	apply(t, o, pair, "a", out)

	se := stale(t, o, pair, checkIn("in", base))
	if se.PairKey != pair || se.State.NewestEventKey != out.Key || !se.State.NewestTime.Equal(out.Time) {
		t.Fatalf("stale error = %+v", se)
	}
	// A stale event leaves the pair free.
	held := mustAcquire(t, o, pair, "b", checkIn("later", base.Add(2*time.Hour)))

	// And is reported stale at once, without waiting for a lease to end.
	stale(t, o, pair, checkIn("in", base))
	if err := o.Release(testCtx(t), held); err != nil {
		t.Fatal(err)
	}
}

func TestAcquire_EqualTimeCheckOutBeatsCheckInButNotTheReverse(t *testing.T) {
	o, _ := newOrdering(t)

	inFirst := idempotency.PairKey(credID, "user-1", "")
	apply(t, o, inFirst, "a", checkIn("in-1", base))
	apply(t, o, inFirst, "a", checkOut("out-1", base))

	outFirst := idempotency.PairKey(credID, "user-2", "")
	apply(t, o, outFirst, "a", checkOut("out-2", base))
	stale(t, o, outFirst, checkIn("in-2", base))
	// Two distinct events of the same kind at the same time: the second
	// cannot be ordered after the first, so it is stale too.
	stale(t, o, outFirst, checkOut("out-2b", base))

	st, _, err := o.Get(testCtx(t), outFirst)
	if err != nil {
		t.Fatal(err)
	}
	if st.Assigned {
		t.Fatal("key assigned after the guest checked out")
	}
}

func TestAcquire_NewestAppliedEventItselfIsNotStale(t *testing.T) {
	o, _ := newOrdering(t)
	pair := idempotency.PairKey(credID, userID, "")
	in := checkIn("in", base)
	apply(t, o, pair, "a", in)

	// Redelivered after a crash between Applied and publishing the outcome.
	l := mustAcquire(t, o, pair, "b", in)
	if l.State.LeaseOwner != "b" || l.State.LeaseEventKey != in.Key {
		t.Fatalf("lease = %+v", l)
	}
}

func TestAcquire_BusyWhileLeased(t *testing.T) {
	clk := newClock()
	o, _ := newOrdering(t, idempotency.WithClock(clk.Now))
	pair := idempotency.PairKey(credID, userID, "")
	held := mustAcquire(t, o, pair, "a", checkIn("in", base))
	if held.Owner != "a" || held.PairKey != pair || !held.State.LeaseUntil.Equal(clk.Now().Add(lease)) || held.Revision == 0 {
		t.Fatalf("lease = %+v", held)
	}

	for _, tc := range []struct {
		name  string
		owner string
	}{{"another owner", "b"}, {"same owner, another event", "a"}} {
		_, err := o.Acquire(testCtx(t), pair, tc.owner, checkOut("out", base.Add(time.Hour)), lease)
		var be *idempotency.BusyError
		if !errors.Is(err, idempotency.ErrPairBusy) || !errors.As(err, &be) {
			t.Fatalf("%s: err = %v, want *BusyError", tc.name, err)
		}
		if be.LeaseOwner != "a" || !be.LeaseUntil.Equal(held.State.LeaseUntil) {
			t.Fatalf("%s: busy error = %+v", tc.name, be)
		}
	}
}

func TestAcquire_ExpiredLeaseLetsAnotherOwnerIn(t *testing.T) {
	clk := newClock()
	o, _ := newOrdering(t, idempotency.WithClock(clk.Now))
	pair := idempotency.PairKey(credID, userID, "")
	old := mustAcquire(t, o, pair, "crashed", checkIn("in", base))

	clk.Advance(lease)
	out := checkOut("out", base.Add(time.Hour))
	l := mustAcquire(t, o, pair, "b", out)
	if l.State.LeaseOwner != "b" || l.State.LeaseEventKey != out.Key {
		t.Fatalf("lease = %+v", l)
	}

	// The crashed owner comes back: its lease is gone.
	err := o.Applied(testCtx(t), old)
	if !errors.Is(err, idempotency.ErrLostLease) || !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		t.Fatalf("applied: err = %v, want ErrLostLease wrapping ErrKeyRevisionMismatch", err)
	}
	if err := o.Renew(testCtx(t), old, lease); !errors.Is(err, idempotency.ErrLostLease) {
		t.Fatalf("renew: err = %v, want ErrLostLease", err)
	}
	if err := o.Release(testCtx(t), old); err != nil {
		t.Fatalf("release of a lost lease: %v", err)
	}
	st, _, err := o.Get(testCtx(t), pair)
	if err != nil {
		t.Fatal(err)
	}
	if st.LeaseOwner != "b" || st.Assigned {
		t.Fatalf("state = %+v, want b's lease untouched", st)
	}
}

func TestRelease_FreesThePairWithoutApplying(t *testing.T) {
	o, _ := newOrdering(t)
	pair := idempotency.PairKey(credID, userID, "")
	in := checkIn("in", base)
	l := mustAcquire(t, o, pair, "a", in)
	if err := o.Release(testCtx(t), l); err != nil {
		t.Fatal(err)
	}
	st, _, err := o.Get(testCtx(t), pair)
	if err != nil {
		t.Fatal(err)
	}
	if st.LeaseOwner != "" || st.NewestEventKey != "" || st.Assigned {
		t.Fatalf("state after release = %+v", st)
	}
	// Nothing was applied, so an older event is not stale.
	mustAcquire(t, o, pair, "b", checkOut("older", base.Add(-time.Hour)))
}

func TestRenew_ExtendsLease(t *testing.T) {
	clk := newClock()
	o, _ := newOrdering(t, idempotency.WithClock(clk.Now))
	pair := idempotency.PairKey(credID, userID, "")
	l := mustAcquire(t, o, pair, "a", checkIn("in", base))

	clk.Advance(lease / 2)
	if err := o.Renew(testCtx(t), l, lease); err != nil {
		t.Fatal(err)
	}
	clk.Advance(lease - time.Second)
	if _, err := o.Acquire(testCtx(t), pair, "b", checkOut("out", base.Add(time.Hour)), lease); !errors.Is(err, idempotency.ErrPairBusy) {
		t.Fatalf("acquire during renewed lease: err = %v, want ErrPairBusy", err)
	}
	if err := o.Applied(testCtx(t), l); err != nil {
		t.Fatalf("applied after renew: %v", err)
	}
}

func TestGet_MissingPairIsErrNotFound(t *testing.T) {
	o, _ := newOrdering(t)
	if _, _, err := o.Get(testCtx(t), idempotency.PairKey(credID, userID, "")); !errors.Is(err, idempotency.ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
}

func TestAcquire_CreatesAgainAfterStateDeleted(t *testing.T) {
	o, kv := newOrdering(t)
	pair := idempotency.PairKey(credID, userID, "")
	apply(t, o, pair, "a", checkIn("in", base))
	if err := kv.Delete(testCtx(t), pair); err != nil {
		t.Fatal(err)
	}
	mustAcquire(t, o, pair, "b", checkIn("older", base.Add(-time.Hour)))
}

func TestAcquire_TwentyConcurrentOwnersHoldThePairOneAtATime(t *testing.T) {
	o, _ := newOrdering(t)
	pair := idempotency.PairKey(credID, userID, "")
	ctx := testCtx(t)

	const n = 20
	var holders, maxHolders, busy atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			ev := checkIn(fmt.Sprint("in-", i), base)
			owner := fmt.Sprint("owner-", i)
			for ctx.Err() == nil {
				l, err := o.Acquire(ctx, pair, owner, ev, lease)
				if errors.Is(err, idempotency.ErrPairBusy) {
					busy.Add(1)
					continue // poll until the holder releases
				}
				if err != nil {
					t.Errorf("%s: %v", owner, err)
					return
				}
				h := holders.Add(1)
				for {
					m := maxHolders.Load()
					if h <= m || maxHolders.CompareAndSwap(m, h) {
						break
					}
				}
				// Hold it across a round trip, as a Seam call would.
				if st, _, err := o.Get(ctx, pair); err != nil || st.LeaseOwner != owner {
					t.Errorf("%s: while holding: state %+v, %v", owner, st, err)
				}
				holders.Add(-1)
				if err := o.Release(ctx, l); err != nil {
					t.Errorf("%s: release: %v", owner, err)
				}
				return
			}
			t.Errorf("%s: never acquired: %v", owner, ctx.Err())
		})
	}
	close(start)
	wg.Wait()

	if m := maxHolders.Load(); m != 1 {
		t.Fatalf("at most %d holders at once, want 1", m)
	}
	if busy.Load() == 0 {
		t.Fatal("no acquire ever found the pair busy: the test did not contend")
	}
	st, _, err := o.Get(ctx, pair)
	if err != nil {
		t.Fatal(err)
	}
	if st.LeaseOwner != "" {
		t.Fatalf("lease left behind: %+v", st)
	}
}
