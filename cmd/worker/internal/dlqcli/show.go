package dlqcli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/keyworker/keyworker/cmd/worker/internal/cli"
	"github.com/keyworker/keyworker/consumer/dlq"
	"github.com/keyworker/keyworker/seamclient"
)

const showUsage = `Usage: worker dlq show SEQ [--reveal] [--json]

Prints one dead letter in full: the error, the original event, the Seam
request and the last known credential. Credential codes (PINs) and card
numbers are masked unless --reveal is given, also where a message quotes them. --json prints the stored
document, masked the same way.

Example:
  worker dlq show 42
  worker dlq show 42 --reveal

Flags:
`

// show is `worker dlq show`.
func show(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dlq show", flag.ContinueOnError)
	cf := registerConfig(fs)
	reveal := fs.Bool("reveal", false, "show credential codes and card numbers")
	asJSON := fs.Bool("json", false, "print the stored dead-letter document")
	rest, err := parseArgs(fs, cf, args)
	if err != nil {
		return cli.HelpOr(err, fs, showUsage, stdout)
	}
	if len(rest) != 1 {
		return &cli.UsageError{Msg: "dlq show: give exactly one dead-letter sequence, e.g. worker dlq show 42"}
	}
	seq, err := strconv.ParseUint(rest[0], 10, 64)
	if err != nil || seq == 0 {
		return &cli.UsageError{Msg: fmt.Sprintf("dlq show: %q is not a dead-letter sequence (a positive number from dlq list)", rest[0])}
	}
	s, err := connect(ctx, cf, stderr, "keyworker-dlq")
	if err != nil {
		return err
	}
	defer s.Close()
	e, err := s.q.Get(ctx, seq)
	if errors.Is(err, dlq.ErrNotFound) {
		return fmt.Errorf("dlq show: no dead letter at sequence %d", seq)
	}
	if err != nil {
		return err
	}
	if *asJSON {
		doc, err := dlq.Pretty(e.Raw, *reveal)
		if err != nil {
			return fmt.Errorf("dlq show: dead letter %d is not JSON; show it without --json", seq)
		}
		_, err = fmt.Fprintf(stdout, "%s\n", doc)
		return err
	}
	original, origErr := s.q.Original(ctx, e)
	return writeDeadLetter(stdout, e, original, origErr, *reveal)
}

// writeDeadLetter renders one dead letter for people.
func writeDeadLetter(w io.Writer, e dlq.Entry, original []byte, origErr error, reveal bool) error {
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	p("Dead letter %d on %s, stored %s\n", e.Sequence, e.Subject, e.Time.Format(time.RFC3339Nano))
	// Free text may quote a code: an older worker's dead letter, or a
	// message from outside Seam's client, which redacts its own.
	text := func(s string) string {
		if reveal {
			return s
		}
		return seamclient.RedactCodes(s)
	}
	if e.Err != nil {
		p("  does not decode: %s\n\nStored message:\n", text(e.Err.Error()))
		writeJSONOrText(w, e.Raw, reveal)
		return nil
	}
	dl := e.DeadLetter
	p("  error:       %s: %s\n", dl.Error.Kind, text(dl.Error.Message))
	if dl.Error.HTTPStatus != 0 || dl.Error.SeamErrorType != "" || dl.Error.SeamRequestID != "" {
		p("  seam:        HTTP %s, error type %s, request id %s\n", dashInt(dl.Error.HTTPStatus), dash(dl.Error.SeamErrorType), dash(dl.Error.SeamRequestID))
	}
	p("  attempts:    %d Seam attempts over %d deliveries", dl.Attempts, dl.Deliveries)
	if dl.FirstAttemptAt != nil && dl.LastAttemptAt != nil {
		p(", first %s, last %s", dl.FirstAttemptAt.Format(time.RFC3339), dl.LastAttemptAt.Format(time.RFC3339))
	}
	p("\n")
	if dl.SourceEventID != "" {
		p("  event:       id %s from %s\n", dl.SourceEventID, dl.SourceEventSource)
	} else {
		p("  event:       undecodable: no id or source\n")
	}
	if r := e.Reservation(); r != "" {
		p("  reservation: %s\n", r)
	}
	p("  original:    %s, input stream sequence %d, %d bytes, sha256 %s, carried as %s\n",
		dl.OriginalSubject, dl.OriginalStreamSequence, dl.OriginalSize, dl.OriginalSHA256, dl.OriginalEventEncoding)
	if dl.ReplayOf != 0 {
		p("  replay of:   dead letter %d\n", dl.ReplayOf)
	}
	p("  published:   %s by %s, id %s\n", e.Envelope.Time.Format(time.RFC3339Nano), e.Envelope.Source, e.Envelope.ID)

	p("\nOriginal event:\n")
	if origErr != nil {
		p("  (unavailable: %v)\n", origErr)
	} else {
		writeJSONOrText(w, original, reveal)
	}
	if len(dl.Request) > 0 {
		p("\nSeam request:\n")
		writeJSONOrText(w, dl.Request, reveal)
	}
	if len(dl.ACSCredential) > 0 {
		if reveal {
			p("\nLast known credential:\n")
		} else {
			p("\nLast known credential (codes masked; --reveal shows them):\n")
		}
		writeJSONOrText(w, dl.ACSCredential, reveal)
	}
	return nil
}

// writeJSONOrText prints b as indented JSON with secrets masked, or, when
// it is not JSON, as quoted text.
func writeJSONOrText(w io.Writer, b []byte, reveal bool) {
	if doc, err := dlq.Pretty(b, reveal); err == nil {
		fmt.Fprintf(w, "%s\n", doc)
		return
	}
	if !reveal {
		b = []byte(seamclient.RedactCodes(string(b)))
	}
	if utf8.Valid(b) {
		fmt.Fprintf(w, "(not JSON) %q\n", b)
		return
	}
	fmt.Fprintf(w, "(not JSON, not UTF-8) %q\n", b)
}

func dashInt(n int) string {
	if n == 0 {
		return "-"
	}
	return strconv.Itoa(n)
}
