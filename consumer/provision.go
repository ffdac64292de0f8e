package consumer

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/idempotency"
	"github.com/keyworker/keyworker/schemas"
)

// ErrConflict is wrapped when an existing stream, consumer or bucket has
// settings other than the worker's and updating was not allowed.
var ErrConflict = errors.New("consumer: existing NATS resource differs")

// StreamConfigs returns the input, results and dead-letter stream settings.
func (c *Config) StreamConfigs() []jetstream.StreamConfig {
	return []jetstream.StreamConfig{
		{
			Name:        c.InputStream,
			Description: "keyworker input: guest check-in and check-out events",
			Subjects:    schemas.InputSubjects(),
			Storage:     jetstream.FileStorage,
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      c.InputMaxAge,
			Duplicates:  c.DuplicateWindow,
			Replicas:    c.Replicas,
		},
		{
			Name:        c.ResultsStream,
			Description: "keyworker outcomes: credential assigned, unassigned, skipped",
			Subjects:    []string{"credential.>"},
			Storage:     jetstream.FileStorage,
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      c.ResultsMaxAge,
			Duplicates:  c.DuplicateWindow,
			Replicas:    c.Replicas,
		},
		{
			Name:        c.DeadLetterStream,
			Description: "keyworker dead letters: everything needed to replay an event",
			Subjects:    []string{schemas.DeadLetterPrefix + ">"},
			Storage:     jetstream.FileStorage,
			Retention:   jetstream.LimitsPolicy,
			Duplicates:  c.DuplicateWindow,
			Replicas:    c.Replicas,
		},
	}
}

// ConsumerConfig returns the durable pull consumer settings. MaxDeliver is
// unlimited on the server: the worker dead-letters at its own limit, so a
// message is never dropped silently.
func (c *Config) ConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       c.Durable,
		Description:   "keyworker: guest events to Seam credential assignments",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: c.MaxAckPending,
		Replicas:      c.Replicas,
	}
}

// Provision creates the streams, the durable consumer and the KV buckets
// when missing. An existing one with other settings is an ErrConflict naming
// each difference, unless update is true, in which case it is updated.
// Nothing is ever deleted.
func Provision(ctx context.Context, js jetstream.JetStream, c Config, update bool) error {
	if err := c.Validate(); err != nil {
		return err
	}
	for _, want := range c.StreamConfigs() {
		if err := provisionStream(ctx, js, want, update); err != nil {
			return err
		}
	}
	if err := provisionConsumer(ctx, js, c.InputStream, c.ConsumerConfig(), update); err != nil {
		return err
	}
	for _, want := range []jetstream.KeyValueConfig{
		idempotency.BucketConfig(c.IdempotencyBucket, c.IdempotencyTTL, c.Replicas),
		idempotency.StateBucketConfig(c.StateBucket, c.Replicas),
	} {
		if err := provisionBucket(ctx, js, want, update); err != nil {
			return err
		}
	}
	return provisionObjectStore(ctx, js, c.OriginalsConfig(), update)
}

// OriginalsConfig returns the settings of the object store that keeps
// originals too large for their dead letters: no TTL, since an object must
// live as long as its dead letter (the dead-letter stream has no age limit
// either); `worker dlq purge` deletes it with the dead letter.
func (c *Config) OriginalsConfig() jetstream.ObjectStoreConfig {
	return jetstream.ObjectStoreConfig{
		Bucket:      c.OriginalsBucket,
		Description: "keyworker: originals too large for their dead letters, by dead letter id",
		Storage:     jetstream.FileStorage,
		Replicas:    c.Replicas,
	}
}

func provisionObjectStore(ctx context.Context, js jetstream.JetStream, want jetstream.ObjectStoreConfig, update bool) error {
	obs, err := js.ObjectStore(ctx, want.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		if _, err := js.CreateObjectStore(ctx, want); err != nil {
			return fmt.Errorf("consumer: create object store %s: %w", want.Bucket, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("consumer: object store %s: %w", want.Bucket, err)
	}
	st, err := obs.Status(ctx)
	if err != nil {
		return fmt.Errorf("consumer: object store %s: %w", want.Bucket, err)
	}
	diffs := diff([]field{
		{"ttl", st.TTL(), want.TTL},
		{"replicas", st.Replicas(), want.Replicas},
	})
	if len(diffs) == 0 {
		return nil
	}
	if !update {
		return fmt.Errorf("%w: object store %s: %s (start with --update-streams to apply)", ErrConflict, want.Bucket, strings.Join(diffs, ", "))
	}
	if _, err := js.UpdateObjectStore(ctx, want); err != nil {
		return fmt.Errorf("consumer: update object store %s: %w", want.Bucket, err)
	}
	return nil
}

func provisionStream(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig, update bool) error {
	s, err := js.Stream(ctx, want.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		if _, err := js.CreateStream(ctx, want); err != nil {
			return fmt.Errorf("consumer: create stream %s: %w", want.Name, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("consumer: stream %s: %w", want.Name, err)
	}
	have := s.CachedInfo().Config
	diffs := diff([]field{
		{"subjects", sorted(have.Subjects), sorted(want.Subjects)},
		{"storage", have.Storage, want.Storage},
		{"retention", have.Retention, want.Retention},
		{"max_age", have.MaxAge, want.MaxAge},
		{"duplicate_window", have.Duplicates, want.Duplicates},
		{"replicas", have.Replicas, want.Replicas},
	})
	if len(diffs) == 0 {
		return nil
	}
	if !update {
		return fmt.Errorf("%w: stream %s: %s (start with --update-streams to apply)", ErrConflict, want.Name, strings.Join(diffs, ", "))
	}
	if _, err := js.UpdateStream(ctx, want); err != nil {
		return fmt.Errorf("consumer: update stream %s: %w", want.Name, err)
	}
	return nil
}

func provisionConsumer(ctx context.Context, js jetstream.JetStream, stream string, want jetstream.ConsumerConfig, update bool) error {
	cons, err := js.Consumer(ctx, stream, want.Durable)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		if _, err := js.CreateConsumer(ctx, stream, want); err != nil {
			return fmt.Errorf("consumer: create consumer %s: %w", want.Durable, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("consumer: consumer %s: %w", want.Durable, err)
	}
	have := cons.CachedInfo().Config
	diffs := diff([]field{
		{"ack_policy", have.AckPolicy, want.AckPolicy},
		{"ack_wait", have.AckWait, want.AckWait},
		{"max_deliver", have.MaxDeliver, want.MaxDeliver},
		{"max_ack_pending", have.MaxAckPending, want.MaxAckPending},
		{"filter_subject", have.FilterSubject, want.FilterSubject},
		{"filter_subjects", sorted(have.FilterSubjects), sorted(want.FilterSubjects)},
	})
	if len(diffs) == 0 {
		return nil
	}
	if !update {
		return fmt.Errorf("%w: consumer %s on %s: %s (start with --update-streams to apply)", ErrConflict, want.Durable, stream, strings.Join(diffs, ", "))
	}
	if _, err := js.UpdateConsumer(ctx, stream, want); err != nil {
		return fmt.Errorf("consumer: update consumer %s: %w", want.Durable, err)
	}
	return nil
}

func provisionBucket(ctx context.Context, js jetstream.JetStream, want jetstream.KeyValueConfig, update bool) error {
	kv, err := js.KeyValue(ctx, want.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		if _, err := js.CreateKeyValue(ctx, want); err != nil {
			return fmt.Errorf("consumer: create bucket %s: %w", want.Bucket, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("consumer: bucket %s: %w", want.Bucket, err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return fmt.Errorf("consumer: bucket %s: %w", want.Bucket, err)
	}
	diffs := diff([]field{
		{"ttl", st.TTL(), want.TTL},
		{"history", st.History(), int64(max(want.History, 1))},
	})
	if len(diffs) == 0 {
		return nil
	}
	if !update {
		return fmt.Errorf("%w: bucket %s: %s (start with --update-streams to apply)", ErrConflict, want.Bucket, strings.Join(diffs, ", "))
	}
	if _, err := js.UpdateKeyValue(ctx, want); err != nil {
		return fmt.Errorf("consumer: update bucket %s: %w", want.Bucket, err)
	}
	return nil
}

type field struct {
	name       string
	have, want any
}

func diff(fields []field) []string {
	var out []string
	for _, f := range fields {
		if !reflect.DeepEqual(f.have, f.want) {
			out = append(out, fmt.Sprintf("%s is %v, want %v", f.name, f.have, f.want))
		}
	}
	return out
}

func sorted(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
