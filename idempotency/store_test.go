package idempotency_test

import (
	"errors"
	"fmt"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/idempotency"
)

const lease = time.Minute

func newStore(t *testing.T, opts ...idempotency.Option) (*idempotency.Store, jetstream.KeyValue) {
	t.Helper()
	js := newJetStream(t)
	kv := newBucket(t, js, idempotency.BucketConfig(idempotency.DefaultBucket, 7*24*time.Hour, 1))
	return idempotency.NewStore(kv, opts...), kv
}

func mustClaim(t *testing.T, s *idempotency.Store, key, owner string, allowAfterDL bool) *idempotency.Claim {
	t.Helper()
	c, err := s.Claim(testCtx(t), key, owner, lease, allowAfterDL)
	if err != nil {
		t.Fatalf("claim %s by %s: %v", key, owner, err)
	}
	return c
}

func conflict(t *testing.T, err error, want error) *idempotency.ConflictError {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("err = %v, want %v", err, want)
	}
	var ce *idempotency.ConflictError
	if !errors.As(err, &ce) {
		t.Fatalf("err %T is not a *ConflictError", err)
	}
	return ce
}

func TestKey_IsHexSHA256OfSourceAndIDSeparated(t *testing.T) {
	k := idempotency.Key("hotel-1", "evt-1")
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(k) {
		t.Fatalf("key %q is not a hex sha256", k)
	}
	if k != idempotency.Key("hotel-1", "evt-1") {
		t.Fatal("key is not deterministic")
	}
	if idempotency.Key("a", "bc") == idempotency.Key("ab", "c") {
		t.Fatal("source and id are not separated")
	}
}

func TestBucketConfig_FileStorageWithTTLAndOneValuePerKey(t *testing.T) {
	c := idempotency.BucketConfig("b", 48*time.Hour, 3)
	if c.Bucket != "b" || c.Storage != jetstream.FileStorage || c.TTL != 48*time.Hour || c.History != 1 || c.Replicas != 3 {
		t.Fatalf("config = %+v", c)
	}
	s := idempotency.StateBucketConfig("s", 0)
	if s.Bucket != "s" || s.Storage != jetstream.FileStorage || s.TTL != 0 || s.History != 1 || s.Replicas != 1 {
		t.Fatalf("state config = %+v", s)
	}
}

func TestClaim_SecondClaimByAnotherOwnerConflictsWithAlreadyClaimed(t *testing.T) {
	clk := newClock()
	s, _ := newStore(t, idempotency.WithClock(clk.Now))
	key := idempotency.Key("src", "1")

	c := mustClaim(t, s, key, "a", false)
	if c.Key != key || c.Record.Status != idempotency.StatusInProgress || c.Record.Owner != "a" ||
		!c.Record.LeaseUntil.Equal(clk.Now().Add(lease)) || c.Record.Attempts != 0 || c.Revision == 0 {
		t.Fatalf("claim = %+v", c)
	}

	_, err := s.Claim(testCtx(t), key, "b", lease, true)
	ce := conflict(t, err, idempotency.ErrAlreadyClaimed)
	if errors.Is(err, idempotency.ErrDone) {
		t.Fatal("a live claim must not match ErrDone")
	}
	if ce.Record.Owner != "a" || !ce.Record.LeaseUntil.Equal(c.Record.LeaseUntil) || ce.Revision != c.Revision {
		t.Fatalf("conflict = %+v", ce)
	}
}

func TestClaim_ExpiredLeaseIsTakenOverByAnotherOwner(t *testing.T) {
	clk := newClock()
	s, _ := newStore(t, idempotency.WithClock(clk.Now))
	key := idempotency.Key("src", "1")
	first := mustClaim(t, s, key, "crashed", false)

	clk.Advance(lease - time.Nanosecond)
	if _, err := s.Claim(testCtx(t), key, "b", lease, false); !errors.Is(err, idempotency.ErrAlreadyClaimed) {
		t.Fatalf("claim before expiry: err = %v, want ErrAlreadyClaimed", err)
	}
	clk.Advance(time.Nanosecond)
	c := mustClaim(t, s, key, "b", false)
	if c.Record.Owner != "b" || !c.Record.LeaseUntil.Equal(clk.Now().Add(lease)) || c.Revision <= first.Revision {
		t.Fatalf("take-over = %+v", c)
	}
}

func TestClaim_SameOwnerTakesOverItsLiveClaim(t *testing.T) {
	s, _ := newStore(t)
	key := idempotency.Key("src", "1")
	first := mustClaim(t, s, key, "a", false)
	again := mustClaim(t, s, key, "a", false)
	if again.Revision <= first.Revision {
		t.Fatalf("revision %d not after %d", again.Revision, first.Revision)
	}
}

func TestClaim_CompletedIsDoneEvenForReplay(t *testing.T) {
	s, _ := newStore(t)
	key := idempotency.Key("src", "1")
	c := mustClaim(t, s, key, "a", false)
	if err := s.Complete(testCtx(t), c, idempotency.StatusCompleted, "credential.assigned", 42, 2); err != nil {
		t.Fatal(err)
	}
	for _, replay := range []bool{false, true} {
		_, err := s.Claim(testCtx(t), key, "b", lease, replay)
		ce := conflict(t, err, idempotency.ErrDone)
		r := ce.Record
		if r.Status != idempotency.StatusCompleted || r.Outcome != "credential.assigned" || r.OutcomeSeq != 42 ||
			r.Attempts != 2 || r.Owner != "" || !r.LeaseUntil.IsZero() {
			t.Fatalf("replay=%v: record = %+v", replay, r)
		}
	}
}

func TestClaim_DeadLetteredIsDoneUnlessReplay(t *testing.T) {
	s, _ := newStore(t)
	key := idempotency.Key("src", "1")
	c := mustClaim(t, s, key, "a", false)
	if err := s.Complete(testCtx(t), c, idempotency.StatusDeadLettered, "deadletter.guest.checked_in", 7, 5); err != nil {
		t.Fatal(err)
	}
	_, err := s.Claim(testCtx(t), key, "b", lease, false)
	if ce := conflict(t, err, idempotency.ErrDone); ce.Record.Status != idempotency.StatusDeadLettered {
		t.Fatalf("record = %+v", ce.Record)
	}

	r := mustClaim(t, s, key, "b", true)
	if r.Record.Status != idempotency.StatusInProgress || r.Record.Owner != "b" || r.Record.Attempts != 5 || r.Record.Outcome != "" {
		t.Fatalf("replay claim = %+v", r.Record)
	}
}

func TestRelease_NextClaimGetsThroughWithAttemptsCarried(t *testing.T) {
	clk := newClock()
	s, _ := newStore(t, idempotency.WithClock(clk.Now))
	key := idempotency.Key("src", "1")
	c := mustClaim(t, s, key, "a", false)
	first, last := clk.Now(), clk.Now().Add(3*time.Second)
	if err := s.Release(testCtx(t), c, 3, first, last); err != nil {
		t.Fatal(err)
	}
	got, rev, err := s.Get(testCtx(t), key)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != idempotency.StatusPending || got.Owner != "" || !got.LeaseUntil.IsZero() || got.Attempts != 3 || rev != c.Revision {
		t.Fatalf("released record = %+v (rev %d, claim rev %d)", got, rev, c.Revision)
	}

	// The lease would still be live: releasing is what lets another owner in.
	n := mustClaim(t, s, key, "b", false)
	if n.Record.Attempts != 3 || !n.Record.FirstAttemptAt.Equal(first) || !n.Record.LastAttemptAt.Equal(last) || n.Record.Owner != "b" {
		t.Fatalf("next claim = %+v", n.Record)
	}
}

func TestComplete_AfterTakeOverIsErrLostClaim(t *testing.T) {
	clk := newClock()
	s, _ := newStore(t, idempotency.WithClock(clk.Now))
	key := idempotency.Key("src", "1")
	old := mustClaim(t, s, key, "slow", false)
	clk.Advance(2 * lease)
	mustClaim(t, s, key, "b", false)

	err := s.Complete(testCtx(t), old, idempotency.StatusCompleted, "credential.assigned", 1, 1)
	if !errors.Is(err, idempotency.ErrLostClaim) || !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		t.Fatalf("complete: err = %v, want ErrLostClaim wrapping ErrKeyRevisionMismatch", err)
	}
	if err := s.Renew(testCtx(t), old, lease); !errors.Is(err, idempotency.ErrLostClaim) {
		t.Fatalf("renew: err = %v, want ErrLostClaim", err)
	}
	if err := s.Release(testCtx(t), old, 1, clk.Now(), clk.Now()); !errors.Is(err, idempotency.ErrLostClaim) {
		t.Fatalf("release: err = %v, want ErrLostClaim", err)
	}
	got, _, err := s.Get(testCtx(t), key)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != idempotency.StatusInProgress || got.Owner != "b" {
		t.Fatalf("record = %+v, want b's claim untouched", got)
	}
}

func TestRenew_ExtendsLeaseAndKeepsTheClaimUsable(t *testing.T) {
	clk := newClock()
	s, _ := newStore(t, idempotency.WithClock(clk.Now))
	key := idempotency.Key("src", "1")
	c := mustClaim(t, s, key, "a", false)

	clk.Advance(lease / 2)
	if err := s.Renew(testCtx(t), c, lease); err != nil {
		t.Fatal(err)
	}
	clk.Advance(lease - time.Second) // past the first lease, inside the renewed one
	if _, err := s.Claim(testCtx(t), key, "b", lease, false); !errors.Is(err, idempotency.ErrAlreadyClaimed) {
		t.Fatalf("claim during renewed lease: err = %v, want ErrAlreadyClaimed", err)
	}
	if err := s.Complete(testCtx(t), c, idempotency.StatusCompleted, "credential.unassigned", 9, 1); err != nil {
		t.Fatalf("complete after renew: %v", err)
	}
}

func TestComplete_RejectsNonFinalStatus(t *testing.T) {
	s, _ := newStore(t)
	c := mustClaim(t, s, idempotency.Key("src", "1"), "a", false)
	if err := s.Complete(testCtx(t), c, idempotency.StatusPending, "", 0, 1); err == nil {
		t.Fatal("complete with pending status succeeded")
	}
}

func TestClaim_RejectsNonPositiveLease(t *testing.T) {
	s, _ := newStore(t)
	if _, err := s.Claim(testCtx(t), idempotency.Key("src", "1"), "a", 0, false); err == nil {
		t.Fatal("claim with zero lease succeeded")
	}
}

func TestClaim_FiftyConcurrentClaimsHaveExactlyOneWinner(t *testing.T) {
	s, _ := newStore(t)
	key := idempotency.Key("src", "race")
	ctx := testCtx(t)

	const n = 50
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			_, errs[i] = s.Claim(ctx, key, fmt.Sprint("owner-", i), lease, false)
		})
	}
	close(start)
	wg.Wait()

	wins := 0
	for i, err := range errs {
		switch {
		case err == nil:
			wins++
		case errors.Is(err, idempotency.ErrAlreadyClaimed):
		default:
			t.Errorf("claim %d: unexpected error %v", i, err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d winners, want exactly 1", wins)
	}
}

func TestClaim_CreatesAgainAfterKeyDeletedOrPurged(t *testing.T) {
	s, kv := newStore(t)
	key := idempotency.Key("src", "1")
	mustClaim(t, s, key, "a", false)

	if err := kv.Delete(testCtx(t), key); err != nil {
		t.Fatal(err)
	}
	if c := mustClaim(t, s, key, "b", false); c.Record.Owner != "b" {
		t.Fatalf("claim after delete = %+v", c.Record)
	}
	if err := kv.Purge(testCtx(t), key); err != nil {
		t.Fatal(err)
	}
	if c := mustClaim(t, s, key, "c", false); c.Record.Owner != "c" {
		t.Fatalf("claim after purge = %+v", c.Record)
	}
}

func TestGet_MissingKeyIsErrNotFound(t *testing.T) {
	s, _ := newStore(t)
	_, _, err := s.Get(testCtx(t), idempotency.Key("src", "none"))
	if !errors.Is(err, idempotency.ErrNotFound) || !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("err = %v, want ErrNotFound wrapping jetstream.ErrKeyNotFound", err)
	}
}

func TestAddReplay_CreatesDeadLetteredRecordThenIncrements(t *testing.T) {
	s, _ := newStore(t)
	key := idempotency.Key("src", "expired")

	r, err := s.AddReplay(testCtx(t), key)
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != idempotency.StatusDeadLettered || r.Replays != 1 {
		t.Fatalf("first replay = %+v", r)
	}
	// The record it made lets the replayed delivery through, and only it.
	if _, err := s.Claim(testCtx(t), key, "a", lease, false); !errors.Is(err, idempotency.ErrDone) {
		t.Fatalf("non-replay claim: err = %v, want ErrDone", err)
	}
	c := mustClaim(t, s, key, "a", true)
	if c.Record.Replays != 1 {
		t.Fatalf("claim record = %+v", c.Record)
	}
	if err := s.Complete(testCtx(t), c, idempotency.StatusDeadLettered, "deadletter.guest.checked_out", 3, 1); err != nil {
		t.Fatal(err)
	}
	r, err = s.AddReplay(testCtx(t), key)
	if err != nil {
		t.Fatal(err)
	}
	if r.Replays != 2 || r.Status != idempotency.StatusDeadLettered || r.Outcome != "deadletter.guest.checked_out" {
		t.Fatalf("second replay = %+v", r)
	}
}

func TestAddReplay_ConcurrentIncrementsAreNotLost(t *testing.T) {
	s, _ := newStore(t)
	key := idempotency.Key("src", "1")
	ctx := testCtx(t)
	const n = 5
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if _, err := s.AddReplay(ctx, key); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	r, _, err := s.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if r.Replays != n {
		t.Fatalf("replays = %d, want %d", r.Replays, n)
	}
}

func TestCount_CountsKeysNotRevisions(t *testing.T) {
	js := newJetStream(t)
	for _, history := range []uint8{1, 5} {
		cfg := idempotency.BucketConfig(fmt.Sprint("count_", history), time.Hour, 1)
		cfg.History = history
		s := idempotency.NewStore(newBucket(t, js, cfg))

		if n, err := s.Count(testCtx(t)); err != nil || n != 0 {
			t.Fatalf("history %d: empty count = %d, %v", history, n, err)
		}
		for _, id := range []string{"1", "2", "3"} {
			c := mustClaim(t, s, idempotency.Key("src", id), "a", false)
			if err := s.Renew(testCtx(t), c, lease); err != nil { // a second revision
				t.Fatal(err)
			}
		}
		if n, err := s.Count(testCtx(t)); err != nil || n != 3 {
			t.Fatalf("history %d: count = %d, %v; want 3", history, n, err)
		}
	}
}
