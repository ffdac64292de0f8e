package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/schemas"
)

const publishUsage = `Usage: worker publish checkin|checkout --credential ID (--user ID | --user-identity ID) [flags]

Publishes one valid guest event, for smoke tests and demos.

Example:
  worker publish checkin --credential 66666666-6666-6666-6666-666666666666 \
      --user 33333333-3333-3333-3333-333333333333 --reservation R-1001

Flags:
`

func runPublish(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "checkin" && args[0] != "checkout") {
		if len(args) > 0 && (args[0] == "--help" || args[0] == "-h") {
			fmt.Fprint(stdout, publishUsage)
			return nil
		}
		return &usageError{msg: "publish: say checkin or checkout (worker publish --help)"}
	}
	kind, args := args[0], args[1:]
	fs := flag.NewFlagSet("publish", flag.ContinueOnError)
	cf := registerConfig(fs, false)
	var g guestFlags
	fs.StringVar(&g.Credential, "credential", "", "acs_credential_id (uuid)")
	fs.StringVar(&g.User, "user", "", "acs_user_id (uuid)")
	fs.StringVar(&g.Identity, "user-identity", "", "user_identity_id (uuid)")
	fs.StringVar(&g.Reservation, "reservation", "", "reservation id, copied into the result")
	fs.StringVar(&g.Property, "property", "", "property id, copied into the result")
	fs.StringVar(&g.ID, "id", "", "event id (default: random)")
	fs.StringVar(&g.Source, "source", "worker-publish", "event source")
	if err := parseFlags(fs, cf, args, os.Getenv); err != nil {
		return helpOr(err, fs, publishUsage, stdout)
	}
	subject := schemas.SubjectCheckedIn
	if kind == "checkout" {
		subject = schemas.SubjectCheckedOut
	}
	doc, err := g.event(subject, time.Now().UTC())
	if err != nil {
		return err
	}
	v, err := schemas.NewValidator()
	if err != nil {
		return err
	}
	if _, err := v.DecodeGuestEvent(subject, doc); err != nil {
		return &usageError{msg: err.Error()}
	}
	conn, err := connectNATS(ctx, &cf.cfg, newLogger(&cf.cfg, io.Discard), "keyworker-publish", false)
	if err != nil {
		return err
	}
	defer conn.Close()
	ack, err := publishEvent(ctx, conn.js, subject, doc, "")
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "published %s id=%s to stream %s seq %d\n", subject, g.ID, ack.Stream, ack.Sequence)
	return nil
}

type guestFlags struct {
	Credential, User, Identity, Reservation, Property, ID, Source string
}

// event builds a guest event document; ID is filled in when empty.
func (g *guestFlags) event(subject string, t time.Time) ([]byte, error) {
	if g.ID == "" {
		g.ID = newUUID()
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

// publishEvent publishes a guest event and waits for the stream's ack.
// msgID, when set, is the Nats-Msg-Id for deduplication.
func publishEvent(ctx context.Context, js jetstream.JetStream, subject string, doc []byte, msgID string, hdr ...string) (*jetstream.PubAck, error) {
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

// newUUID returns a random version 4 UUID.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
