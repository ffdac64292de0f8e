package idempotency

import (
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

const (
	// DefaultBucket is the KV bucket holding one idempotency record per input event.
	DefaultBucket = "keyworker_idempotency"
	// DefaultStateBucket is the KV bucket holding the ordering state per credential.
	DefaultStateBucket = "keyworker_credential_state"
)

// BucketConfig is the configuration of the idempotency bucket: file storage
// (records must survive a restart), one value per key (only the latest
// record matters) and a TTL after which a redelivered event would be handled
// again; the TTL must outlast the input stream's redelivery horizon.
func BucketConfig(name string, ttl time.Duration, replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      name,
		Description: "keyworker: one idempotency record per input event",
		History:     1,
		TTL:         ttl,
		Storage:     jetstream.FileStorage,
		Replicas:    normReplicas(replicas),
	}
}

// StateBucketConfig is the configuration of the ordering state bucket. It
// has no TTL: forgetting a credential's newest check-in would let an older
// event through as if it were new. It needs none either: one key per
// credential, each bounded (see CredentialState), so it grows with the
// number of credentials, not with stays.
func StateBucketConfig(name string, replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      name,
		Description: "keyworker: ordering state and lease per credential",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    normReplicas(replicas),
	}
}

func normReplicas(r int) int {
	if r < 1 {
		return 1
	}
	return r
}
