package consumer_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keyworker/keyworker/consumer"
)

func TestProvision_OriginalsObjectStoreIsCreatedAndNeverChangedSilently(t *testing.T) {
	js := newJetStream(t)
	ctx := context.Background()
	var cfg consumer.Config
	if err := consumer.Provision(ctx, js, cfg, false); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	obs, err := js.ObjectStore(ctx, consumer.DefaultOriginalsBucket)
	if err != nil {
		t.Fatalf("no originals object store: %v", err)
	}
	if st, err := obs.Status(ctx); err != nil || st.TTL() != 0 || st.Replicas() != 1 {
		t.Fatalf("originals object store: %+v, %v; want no TTL (kept as long as its dead letter), 1 replica", st, err)
	}

	// An operator gave it a TTL: the worker refuses, and applies its own only when told.
	changed := cfg.OriginalsConfig()
	changed.TTL = time.Hour
	if _, err := js.UpdateObjectStore(ctx, changed); err != nil {
		t.Fatal(err)
	}
	err = consumer.Provision(ctx, js, cfg, false)
	if !errors.Is(err, consumer.ErrConflict) || !strings.Contains(err.Error(), "object store "+consumer.DefaultOriginalsBucket+": ttl is 1h0m0s, want 0s") {
		t.Fatalf("want a conflict naming the ttl, got %v", err)
	}
	if err := consumer.Provision(ctx, js, cfg, true); err != nil {
		t.Fatal(err)
	}
	if st, err := obs.Status(ctx); err != nil || st.TTL() != 0 {
		t.Fatalf("after --update-streams: %v, %v", st.TTL(), err)
	}
}
