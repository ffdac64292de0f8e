package cli

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/schemas"
)

// Guest is what a guest event says: `worker publish` fills it from flags.
type Guest struct {
	Credential, User, Identity, Reservation, Property, ID, Source string
}

// Event builds a guest event document; ID is filled in when empty.
func (g *Guest) Event(subject string, t time.Time) ([]byte, error) {
	if g.ID == "" {
		g.ID = NewUUID()
	}
	data := schemas.GuestData{
		ACSCredentialID: g.Credential,
		ACSUserID:       g.User,
		UserIdentityID:  g.Identity,
		ReservationID:   g.Reservation,
		PropertyID:      g.Property,
	}
	return schemas.NewEnvelope(subject, g.Source, g.ID, g.Reservation, t, data)
}

// PublishEvent publishes a guest event and waits for the stream's ack.
// msgID, when set, is the Nats-Msg-Id for deduplication.
func PublishEvent(ctx context.Context, js jetstream.JetStream, subject string, doc []byte, msgID string, hdr ...string) (*jetstream.PubAck, error) {
	msg := &nats.Msg{Subject: subject, Data: doc, Header: nats.Header{}}
	msg.Header.Set("Content-Type", schemas.ContentType)
	for i := 0; i+1 < len(hdr); i += 2 {
		msg.Header.Set(hdr[i], hdr[i+1])
	}
	var opts []jetstream.PublishOpt
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ack, err := js.PublishMsg(pctx, msg, opts...)
	if err != nil {
		return nil, fmt.Errorf("publish %s: %w", subject, err)
	}
	return ack, nil
}

// NewUUID returns a random version 4 UUID.
func NewUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
