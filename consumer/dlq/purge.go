package dlq

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// Purge deletes the given dead letters from the dead-letter stream by
// sequence and returns how many it deleted. One already gone is not an
// error. It deletes exactly what was listed, never by subject or range, so
// a dead letter written after the listing survives.
func (q *Queue) Purge(ctx context.Context, entries []Entry) (int, error) {
	s, err := q.stream(ctx, q.cfg.DeadLetterStream)
	if err != nil {
		return 0, err
	}
	deleted := 0
	for _, e := range entries {
		err := s.DeleteMsg(ctx, e.Sequence)
		if err == nil {
			deleted++
			continue
		}
		// The server reports a missing message only as text: look instead.
		if _, gerr := s.GetMsg(ctx, e.Sequence); errors.Is(gerr, jetstream.ErrMsgNotFound) {
			continue
		}
		return deleted, fmt.Errorf("dlq: delete dead letter %d: %w", e.Sequence, err)
	}
	return deleted, nil
}
