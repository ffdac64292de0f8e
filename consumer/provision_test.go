package consumer_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/consumer/embedded/natstest"
)

func newJetStream(t *testing.T) jetstream.JetStream {
	t.Helper()
	return natstest.JetStream(t)
}

func TestProvision_CreatesEverythingAndIsIdempotent(t *testing.T) {
	js := newJetStream(t)
	ctx := context.Background()
	for range 2 {
		if err := consumer.Provision(ctx, js, consumer.Config{}, false); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"GUEST_EVENTS", "CREDENTIAL_RESULTS", "DEAD_LETTERS"} {
		if _, err := js.Stream(ctx, name); err != nil {
			t.Errorf("stream %s: %v", name, err)
		}
	}
	c, err := js.Consumer(ctx, "GUEST_EVENTS", "keyworker")
	if err != nil {
		t.Fatal(err)
	}
	cfg := c.CachedInfo().Config
	if cfg.AckPolicy != jetstream.AckExplicitPolicy || cfg.MaxAckPending != 1024 || cfg.MaxDeliver != -1 {
		t.Fatalf("consumer config: %+v", cfg)
	}
	s, _ := js.Stream(ctx, "GUEST_EVENTS")
	if sc := s.CachedInfo().Config; sc.Duplicates != 2*time.Minute || sc.MaxAge != 14*24*time.Hour || sc.Storage != jetstream.FileStorage {
		t.Fatalf("input stream config: %+v", sc)
	}
	for _, b := range []string{"keyworker_idempotency", "keyworker_credential_state"} {
		if _, err := js.KeyValue(ctx, b); err != nil {
			t.Errorf("bucket %s: %v", b, err)
		}
	}
}

func TestProvision_RefusesAConflictingStreamUnlessToldToUpdate(t *testing.T) {
	js := newJetStream(t)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: "GUEST_EVENTS", Subjects: []string{"guest.checked_in", "guest.checked_out"},
		Storage: jetstream.MemoryStorage, MaxAge: time.Hour,
	}); err != nil {
		t.Fatal(err)
	}
	err := consumer.Provision(ctx, js, consumer.Config{}, false)
	if !errors.Is(err, consumer.ErrConflict) {
		t.Fatalf("want ErrConflict, got %v", err)
	}
	for _, want := range []string{"GUEST_EVENTS", "max_age is 1h0m0s, want 336h0m0s", "storage"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	s, _ := js.Stream(ctx, "GUEST_EVENTS")
	info, _ := s.Info(ctx)
	if info.Config.MaxAge != time.Hour {
		t.Fatal("a refused stream must be left as it was")
	}
	// Storage cannot be changed in place, so update only what can be: max age.
	if _, err := js.UpdateStream(ctx, jetstream.StreamConfig{
		Name: "GUEST_EVENTS", Subjects: []string{"guest.checked_in", "guest.checked_out"},
		Storage: jetstream.MemoryStorage, MaxAge: 2 * time.Hour,
	}); err != nil {
		t.Fatal(err)
	}
	err = consumer.Provision(ctx, js, consumer.Config{}, true)
	if err == nil {
		t.Fatal("updating a memory stream to file storage must fail loudly")
	}
}

func TestProvision_UpdatesADifferentMaxAgeWhenAllowed(t *testing.T) {
	js := newJetStream(t)
	ctx := context.Background()
	if err := consumer.Provision(ctx, js, consumer.Config{InputMaxAge: time.Hour}, false); err != nil {
		t.Fatal(err)
	}
	if err := consumer.Provision(ctx, js, consumer.Config{}, false); !errors.Is(err, consumer.ErrConflict) {
		t.Fatalf("want ErrConflict, got %v", err)
	}
	if err := consumer.Provision(ctx, js, consumer.Config{}, true); err != nil {
		t.Fatal(err)
	}
	s, _ := js.Stream(ctx, "GUEST_EVENTS")
	info, _ := s.Info(ctx)
	if info.Config.MaxAge != 14*24*time.Hour {
		t.Fatalf("max age %s after update", info.Config.MaxAge)
	}
}
