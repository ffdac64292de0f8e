package dlq

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/schemas"
)

// Original returns the exact bytes of e's original event. A dead letter
// that carries them gives them back (schemas.DeadLetter.Original); one that
// omits them, or whose copy does not match its original_sha256, is read from
// the input stream at original_stream_sequence and checked against
// original_sha256 and original_size. Errors match ErrUndecodable or
// ErrOriginalUnavailable.
func (q *Queue) Original(ctx context.Context, e Entry) ([]byte, error) {
	if e.Err != nil {
		return nil, e.Err
	}
	dl := e.DeadLetter
	b, err := dl.Original()
	if err == nil {
		return b, nil
	}
	if !errors.Is(err, schemas.ErrOriginalOmitted) && !errors.Is(err, schemas.ErrOriginalMismatch) {
		return nil, fmt.Errorf("%w: dead letter %d: %w", ErrOriginalUnavailable, e.Sequence, err)
	}
	carried := err
	if dl.OriginalStreamSequence == 0 || dl.OriginalSHA256 == "" {
		return nil, fmt.Errorf("%w: dead letter %d: %w, and no input stream sequence and sha256 to read it by", ErrOriginalUnavailable, e.Sequence, carried)
	}
	s, err := q.stream(ctx, q.cfg.InputStream)
	if err != nil {
		return nil, fmt.Errorf("%w: dead letter %d: %w", ErrOriginalUnavailable, e.Sequence, err)
	}
	m, err := s.GetMsg(ctx, dl.OriginalStreamSequence)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, fmt.Errorf("%w: dead letter %d: %s no longer holds sequence %d (past its max age?)",
			ErrOriginalUnavailable, e.Sequence, q.cfg.InputStream, dl.OriginalStreamSequence)
	}
	if err != nil {
		return nil, fmt.Errorf("dlq: dead letter %d: reading %s sequence %d: %w", e.Sequence, q.cfg.InputStream, dl.OriginalStreamSequence, err)
	}
	sum := sha256.Sum256(m.Data)
	if m.Subject != dl.OriginalSubject || hex.EncodeToString(sum[:]) != dl.OriginalSHA256 || len(m.Data) != dl.OriginalSize {
		return nil, fmt.Errorf("%w: dead letter %d: %s sequence %d is not the original (subject, sha256 or size differ)",
			ErrOriginalUnavailable, e.Sequence, q.cfg.InputStream, dl.OriginalStreamSequence)
	}
	return m.Data, nil
}
