package dlq

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/schemas"
)

// Purge deletes the given dead letters from the dead-letter stream by
// sequence and returns how many it deleted. One already gone is not an
// error. It deletes exactly what was listed, never by subject or range, so
// a dead letter written after the listing survives. The original the
// worker kept in the originals object store for a dead letter that could
// not carry it goes with it, after the dead letter: a failure in between
// leaves an object without a dead letter, never a dead letter without its
// original.
func (q *Queue) Purge(ctx context.Context, entries []Entry) (int, error) {
	s, err := q.stream(ctx, q.cfg.DeadLetterStream)
	if err != nil {
		return 0, err
	}
	originals := &originalsStore{q: q}
	deleted := 0
	for _, e := range entries {
		err := s.DeleteMsg(ctx, e.Sequence)
		if err == nil {
			deleted++
		} else if _, gerr := s.GetMsg(ctx, e.Sequence); !errors.Is(gerr, jetstream.ErrMsgNotFound) {
			// The server reports a missing message only as text: look instead.
			return deleted, fmt.Errorf("dlq: delete dead letter %d: %w", e.Sequence, err)
		}
		if e.Err == nil && e.DeadLetter.OriginalEventEncoding == schemas.EncodingOmitted {
			if err := originals.delete(ctx, e.Envelope.ID); err != nil {
				return deleted, fmt.Errorf("dlq: delete the kept original of dead letter %d: %w", e.Sequence, err)
			}
		}
	}
	return deleted, nil
}

// originalsStore opens the originals object store on first use; a NATS
// where none exists has nothing to delete.
type originalsStore struct {
	q      *Queue
	obs    jetstream.ObjectStore
	absent bool
}

func (o *originalsStore) delete(ctx context.Context, name string) error {
	if o.obs == nil && !o.absent {
		obs, err := o.q.js.ObjectStore(ctx, o.q.cfg.OriginalsBucket)
		switch {
		case errors.Is(err, jetstream.ErrBucketNotFound):
			o.absent = true
		case err != nil:
			return err
		default:
			o.obs = obs
		}
	}
	if o.absent {
		return nil
	}
	if err := o.obs.Delete(ctx, name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return err
	}
	return nil
}
