package idempotency_test

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/idempotency"
)

const credID = "6F1C1C8E-3B0A-4A53-9D7E-0C3E2A1B9F10" // upper case: keys must not care

func newCredentials(t *testing.T, opts ...idempotency.Option) (*idempotency.Credentials, jetstream.KeyValue) {
	t.Helper()
	js := newJetStream(t)
	kv := newBucket(t, js, idempotency.StateBucketConfig(idempotency.DefaultStateBucket, 1))
	return idempotency.NewCredentials(kv, opts...), kv
}

func mustAcquire(t *testing.T, c *idempotency.Credentials, owner, eventKey string, blind bool) *idempotency.CredentialLease {
	t.Helper()
	l, err := c.Acquire(testCtx(t), credID, owner, eventKey, lease, blind)
	if err != nil {
		t.Fatalf("acquire by %s for %s: %v", owner, eventKey, err)
	}
	return l
}

func TestAcquire_NewCredentialHasAnUnknownHolderBlindOrNot(t *testing.T) {
	for _, blind := range []bool{true, false} {
		c, _ := newCredentials(t)
		l := mustAcquire(t, c, "a", "in", blind)
		if !l.State.HolderUnknown || l.State.LeaseOwner != "a" || l.Revision == 0 {
			t.Fatalf("blind %v: lease = %+v, want a lease on a state whose holder is unknown", blind, l)
		}
	}
}

func TestAcquire_BlindOnAnExistingCredentialReadsIt(t *testing.T) {
	c, _ := newCredentials(t)
	l := mustAcquire(t, c, "a", "in", false)
	st := l.State.Merge(ev("A+1"))
	st.Holder, st.HolderUnknown = guest["A"], false
	if err := c.Commit(testCtx(t), l, st); err != nil {
		t.Fatal(err)
	}
	l = mustAcquire(t, c, "b", "out", true)
	if l.State.CheckIn == nil || l.State.CheckIn.ID != "A+1" || !l.State.Holder.Is(guest["A"]) || l.State.HolderUnknown {
		t.Fatalf("state = %+v, want the committed one", l.State)
	}
}

func TestAcquire_BusyWhileLeased(t *testing.T) {
	clk := newClock()
	c, _ := newCredentials(t, idempotency.WithClock(clk.Now))
	held := mustAcquire(t, c, "a", "in", false)
	for _, tc := range []struct{ name, owner string }{{"another owner", "b"}, {"same owner, another event", "a"}} {
		_, err := c.Acquire(testCtx(t), credID, tc.owner, "out", lease, false)
		var be *idempotency.BusyError
		if !errors.Is(err, idempotency.ErrBusy) || !errors.As(err, &be) {
			t.Fatalf("%s: err = %v, want *BusyError", tc.name, err)
		}
		if be.LeaseOwner != "a" || !be.LeaseUntil.Equal(held.State.LeaseUntil) {
			t.Fatalf("%s: busy error = %+v", tc.name, be)
		}
	}
}

func TestAcquire_ExpiredLeaseHandsOverAnUnknownHolder(t *testing.T) {
	clk := newClock()
	c, _ := newCredentials(t, idempotency.WithClock(clk.Now))
	l := mustAcquire(t, c, "a", "in", false)
	st := l.State
	st.Holder, st.HolderUnknown = guest["A"], false
	if err := c.Commit(testCtx(t), l, st); err != nil {
		t.Fatal(err)
	}
	crashed := mustAcquire(t, c, "crashed", "B+2", false)
	clk.Advance(lease)
	next := mustAcquire(t, c, "b", "out", false)
	if !next.State.HolderUnknown {
		t.Fatalf("state after an expired lease = %+v: the crashed owner may have changed Seam, so the holder must be unknown", next.State)
	}
	// The crashed owner comes back: its lease is gone.
	if err := c.Commit(testCtx(t), crashed, crashed.State); !errors.Is(err, idempotency.ErrLostLease) {
		t.Fatalf("commit: err = %v, want ErrLostLease", err)
	}
	if err := c.Renew(testCtx(t), crashed, lease); !errors.Is(err, idempotency.ErrLostLease) {
		t.Fatalf("renew: err = %v, want ErrLostLease", err)
	}
	if err := c.Release(testCtx(t), crashed, true); err != nil {
		t.Fatalf("release of a lost lease: %v", err)
	}
}

func TestRelease_AfterAWriteMakesTheHolderUnknown(t *testing.T) {
	c, _ := newCredentials(t)
	l := mustAcquire(t, c, "a", "in", false)
	st := l.State
	st.Holder, st.HolderUnknown = guest["A"], false
	if err := c.Commit(testCtx(t), l, st); err != nil {
		t.Fatal(err)
	}
	for _, wrote := range []bool{false, true} {
		l := mustAcquire(t, c, "b", fmt.Sprint("ev", wrote), false)
		if err := c.Release(testCtx(t), l, wrote); err != nil {
			t.Fatal(err)
		}
		got, _, err := c.Get(testCtx(t), credID)
		if err != nil {
			t.Fatal(err)
		}
		if got.HolderUnknown != wrote || got.LeaseOwner != "" || !got.Holder.Is(guest["A"]) {
			t.Fatalf("wrote %v: state after release = %+v", wrote, got)
		}
	}
}

func TestRenew_ExtendsLease(t *testing.T) {
	clk := newClock()
	c, _ := newCredentials(t, idempotency.WithClock(clk.Now))
	l := mustAcquire(t, c, "a", "in", false)
	clk.Advance(lease / 2)
	if err := c.Renew(testCtx(t), l, lease); err != nil {
		t.Fatal(err)
	}
	clk.Advance(lease - time.Second)
	if _, err := c.Acquire(testCtx(t), credID, "b", "out", lease, false); !errors.Is(err, idempotency.ErrBusy) {
		t.Fatalf("acquire during renewed lease: err = %v, want ErrBusy", err)
	}
	if err := c.Commit(testCtx(t), l, l.State); err != nil {
		t.Fatalf("commit after renew: %v", err)
	}
}

func TestGet_MissingCredentialIsErrNotFound(t *testing.T) {
	c, _ := newCredentials(t)
	if _, _, err := c.Get(testCtx(t), credID); !errors.Is(err, idempotency.ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
}

func TestAcquire_TwentyConcurrentOwnersHoldTheCredentialOneAtATime(t *testing.T) {
	c, _ := newCredentials(t)
	ctx := testCtx(t)
	const n = 20
	var holders, maxHolders, busy atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			owner := fmt.Sprint("owner-", i)
			for ctx.Err() == nil {
				l, err := c.Acquire(ctx, credID, owner, fmt.Sprint("in-", i), lease, i%2 == 0)
				if errors.Is(err, idempotency.ErrBusy) {
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
				if st, _, err := c.Get(ctx, credID); err != nil || st.LeaseOwner != owner {
					t.Errorf("%s: while holding: state %+v, %v", owner, st, err)
				}
				holders.Add(-1)
				if err := c.Commit(ctx, l, l.State.Merge(ev("A+1"))); err != nil {
					t.Errorf("%s: commit: %v", owner, err)
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
		t.Fatal("no acquire ever found the credential busy: the test did not contend")
	}
	st, _, err := c.Get(ctx, credID)
	if err != nil || st.LeaseOwner != "" || st.CheckIn == nil {
		t.Fatalf("state left = %+v, %v", st, err)
	}
}
