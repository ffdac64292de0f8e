package dlq

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/schemas"
)

// OriginalMessage is the original of a dead letter as it came in.
type OriginalMessage struct {
	Data []byte
	// Header is the original's NATS headers (a binary-mode event's ce-
	// attributes among them); empty when it had none, nil when unknown: a
	// dead letter written before keyworker kept headers, carrying its
	// original inline.
	Header nats.Header
}

// Original returns the exact bytes of e's original event; see
// OriginalMessage.
func (q *Queue) Original(ctx context.Context, e Entry) ([]byte, error) {
	m, err := q.OriginalMessage(ctx, e)
	return m.Data, err
}

// OriginalMessage returns e's original message: its exact bytes and its
// headers. A dead letter that carries the bytes gives them back
// (schemas.DeadLetter.Original) with its original_headers. One that omits
// them, or whose copy does not match its original_sha256, is read from the
// input stream at original_stream_sequence, or, once the input stream no
// longer holds it, from the originals object store, where the worker keeps
// it under the dead letter's id; either copy is checked against
// original_sha256 and original_size. Errors match ErrUndecodable or
// ErrOriginalUnavailable.
func (q *Queue) OriginalMessage(ctx context.Context, e Entry) (OriginalMessage, error) {
	if e.Err != nil {
		return OriginalMessage{}, e.Err
	}
	dl := e.DeadLetter
	b, err := dl.Original()
	if err == nil {
		return OriginalMessage{Data: b, Header: headerOf(dl.OriginalHeaders)}, nil
	}
	if !errors.Is(err, schemas.ErrOriginalOmitted) && !errors.Is(err, schemas.ErrOriginalMismatch) {
		return OriginalMessage{}, fmt.Errorf("%w: dead letter %d: %w", ErrOriginalUnavailable, e.Sequence, err)
	}
	carried := err
	if dl.OriginalStreamSequence == 0 || dl.OriginalSHA256 == "" {
		return OriginalMessage{}, fmt.Errorf("%w: dead letter %d: %w, and no input stream sequence and sha256 to read it by", ErrOriginalUnavailable, e.Sequence, carried)
	}
	s, err := q.stream(ctx, q.cfg.InputStream)
	if err != nil {
		return OriginalMessage{}, fmt.Errorf("%w: dead letter %d: %w", ErrOriginalUnavailable, e.Sequence, err)
	}
	m, err := s.GetMsg(ctx, dl.OriginalStreamSequence)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return q.keptOriginal(ctx, e, fmt.Sprintf("%s no longer holds sequence %d (past its max age?)", q.cfg.InputStream, dl.OriginalStreamSequence))
	case err != nil:
		return OriginalMessage{}, fmt.Errorf("dlq: dead letter %d: reading %s sequence %d: %w", e.Sequence, q.cfg.InputStream, dl.OriginalStreamSequence, err)
	case m.Subject != dl.OriginalSubject || !matches(dl, m.Data):
		return q.keptOriginal(ctx, e, fmt.Sprintf("%s sequence %d is not the original (subject, sha256 or size differ)", q.cfg.InputStream, dl.OriginalStreamSequence))
	}
	h := headerOf(dl.OriginalHeaders)
	if h == nil {
		h = headerOf(m.Header)
	}
	return OriginalMessage{Data: m.Data, Header: h}, nil
}

// keptOriginal reads e's original from the originals object store, for
// when the input stream no longer has it; why says what the input stream
// lacked.
func (q *Queue) keptOriginal(ctx context.Context, e Entry, why string) (OriginalMessage, error) {
	unavailable := func(detail string) (OriginalMessage, error) {
		return OriginalMessage{}, fmt.Errorf("%w: dead letter %d: %s, and %s", ErrOriginalUnavailable, e.Sequence, why, detail)
	}
	obs, err := q.js.ObjectStore(ctx, q.cfg.OriginalsBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return unavailable("there is no object store " + q.cfg.OriginalsBucket)
	}
	if err != nil {
		return OriginalMessage{}, fmt.Errorf("dlq: dead letter %d: object store %s: %w", e.Sequence, q.cfg.OriginalsBucket, err)
	}
	res, err := obs.Get(ctx, e.Envelope.ID)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return unavailable(q.cfg.OriginalsBucket + " has no copy of it")
	}
	if err != nil {
		return OriginalMessage{}, fmt.Errorf("dlq: dead letter %d: reading its original from %s: %w", e.Sequence, q.cfg.OriginalsBucket, err)
	}
	defer res.Close()
	info, err := res.Info()
	if err != nil {
		return OriginalMessage{}, fmt.Errorf("dlq: dead letter %d: reading its original from %s: %w", e.Sequence, q.cfg.OriginalsBucket, err)
	}
	data, err := io.ReadAll(res)
	if err != nil {
		return OriginalMessage{}, fmt.Errorf("dlq: dead letter %d: reading its original from %s: %w", e.Sequence, q.cfg.OriginalsBucket, err)
	}
	if !matches(e.DeadLetter, data) {
		return unavailable(q.cfg.OriginalsBucket + "'s copy does not match its sha256 and size")
	}
	h := headerOf(e.DeadLetter.OriginalHeaders)
	if h == nil {
		h = headerOf(info.Headers)
	}
	if h == nil {
		h = nats.Header{} // the worker keeps headers with every copy
	}
	return OriginalMessage{Data: data, Header: h}, nil
}

// matches reports whether b is the original dl describes.
func matches(dl schemas.DeadLetter, b []byte) bool {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]) == dl.OriginalSHA256 && len(b) == dl.OriginalSize
}

// headerOf copies h as a nats.Header, keeping nil as nil.
func headerOf(h map[string][]string) nats.Header {
	if h == nil {
		return nil
	}
	out := make(nats.Header, len(h))
	for k, v := range h {
		out[k] = slices.Clone(v)
	}
	return out
}
