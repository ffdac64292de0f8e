package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/keyworker/keyworker/cmd/worker/internal/cli"
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
		return &cli.UsageError{Msg: "publish: say checkin or checkout (worker publish --help)"}
	}
	kind, args := args[0], args[1:]
	fs := flag.NewFlagSet("publish", flag.ContinueOnError)
	cf := cli.RegisterConfig(fs, false)
	var g cli.Guest
	fs.StringVar(&g.Credential, "credential", "", "acs_credential_id (uuid)")
	fs.StringVar(&g.User, "user", "", "acs_user_id (uuid)")
	fs.StringVar(&g.Identity, "user-identity", "", "user_identity_id (uuid)")
	fs.StringVar(&g.Reservation, "reservation", "", "reservation id, copied into the result")
	fs.StringVar(&g.Property, "property", "", "property id, copied into the result")
	fs.StringVar(&g.ID, "id", "", "event id (default: random)")
	fs.StringVar(&g.Source, "source", "worker-publish", "event source")
	if err := cli.ParseFlags(fs, cf, args, os.Getenv); err != nil {
		return cli.HelpOr(err, fs, publishUsage, stdout)
	}
	subject := schemas.SubjectCheckedIn
	if kind == "checkout" {
		subject = schemas.SubjectCheckedOut
	}
	doc, err := g.Event(subject, time.Now().UTC())
	if err != nil {
		return err
	}
	v, err := schemas.NewValidator()
	if err != nil {
		return err
	}
	if _, err := v.DecodeGuestEvent(subject, doc); err != nil {
		return &cli.UsageError{Msg: err.Error()}
	}
	conn, err := cli.Connect(ctx, cf.Config(), cli.NewLogger(cf.Config(), io.Discard), "keyworker-publish", false)
	if err != nil {
		return err
	}
	defer conn.Close()
	ack, err := cli.PublishEvent(ctx, conn.JS(), subject, doc, "")
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "published %s id=%s to stream %s seq %d\n", subject, g.ID, ack.Stream, ack.Sequence)
	return nil
}
