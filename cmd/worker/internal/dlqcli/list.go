package dlqcli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/keyworker/keyworker/cmd/worker/internal/cli"
	"github.com/keyworker/keyworker/consumer/dlq"
)

const dlqListUsage = `Usage: worker dlq list [filters] [--json]

Lists dead letters, oldest first: sequence, time, original subject, error
kind, Seam error type, reservation and Seam attempts. --json prints one JSON
array with more detail (event id, error message, HTTP status, ...).

Example:
  worker dlq list --error-kind permanent --seam-error-type acs_credential_not_found --since 24h
  worker dlq list --id 7f3c0d2e-1b4a-4c8e-9f00-5a6b7c8d9e0f --json

Flags:
`

const dlqShowUsage = `Usage: worker dlq show SEQ [--reveal] [--json]

Prints one dead letter in full: the error, the original event, the Seam
request and the last known credential. Credential codes (PINs) and card
numbers are masked unless --reveal is given. --json prints the stored
document, masked the same way.

Example:
  worker dlq show 42
  worker dlq show 42 --reveal

Flags:
`

func dlqList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dlq list", flag.ContinueOnError)
	cf := dlqRegisterConfig(fs)
	var ff dlqFilterFlags
	ff.register(fs)
	asJSON := fs.Bool("json", false, "print one JSON array")
	rest, err := dlqParse(fs, cf, args)
	if err != nil {
		return cli.HelpOr(err, fs, dlqListUsage, stdout)
	}
	s, f, err := dlqOpen(ctx, "dlq list", "keyworker-dlq", &ff, cf, rest, stderr)
	if err != nil {
		return err
	}
	defer s.Close()
	if *asJSON {
		return dlqListJSON(ctx, s.q, f, stdout)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	n := 0
	err = s.q.Scan(ctx, f, func(e dlq.Entry) error {
		if n == 0 {
			fmt.Fprintln(tw, "SEQ\tTIME\tSUBJECT\tERROR KIND\tSEAM ERROR\tRESERVATION\tATTEMPTS")
		}
		n++
		r := e.Summary()
		kind := r.ErrorKind
		if e.Err != nil {
			kind = "(undecodable)"
		}
		_, err := fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%d\n", r.Sequence, r.Time.Format(time.RFC3339),
			dlqDash(r.OriginalSubject), dlqDash(kind), dlqDash(r.SeamErrorType), dlqDash(dlqClip(r.Reservation, 40)), r.Attempts)
		return err
	})
	if ferr := tw.Flush(); err == nil {
		err = ferr
	}
	if err != nil {
		return err
	}
	if n == 0 {
		fmt.Fprintln(stdout, "no dead letters match")
		return nil
	}
	fmt.Fprintf(stderr, "%d dead letters\n", n)
	return nil
}

// dlqListJSON writes the matching dead letters as one JSON array, as they
// are read, so a long list is not held in memory.
func dlqListJSON(ctx context.Context, q *dlq.Queue, f dlq.Filter, w io.Writer) error {
	if _, err := io.WriteString(w, "["); err != nil {
		return err
	}
	n := 0
	err := q.Scan(ctx, f, func(e dlq.Entry) error {
		b, err := json.MarshalIndent(e.Summary(), "  ", "  ")
		if err != nil {
			return err
		}
		sep := ",\n  "
		if n == 0 {
			sep = "\n  "
		}
		n++
		_, err = fmt.Fprintf(w, "%s%s", sep, b)
		return err
	})
	if err != nil {
		return err
	}
	if n > 0 {
		_, err = io.WriteString(w, "\n]\n")
	} else {
		_, err = io.WriteString(w, "]\n")
	}
	return err
}

func dlqShow(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dlq show", flag.ContinueOnError)
	cf := dlqRegisterConfig(fs)
	reveal := fs.Bool("reveal", false, "show credential codes and card numbers")
	asJSON := fs.Bool("json", false, "print the stored dead-letter document")
	rest, err := dlqParse(fs, cf, args)
	if err != nil {
		return cli.HelpOr(err, fs, dlqShowUsage, stdout)
	}
	if len(rest) != 1 {
		return &cli.UsageError{Msg: "dlq show: give exactly one dead-letter sequence, e.g. worker dlq show 42"}
	}
	seq, err := strconv.ParseUint(rest[0], 10, 64)
	if err != nil || seq == 0 {
		return &cli.UsageError{Msg: fmt.Sprintf("dlq show: %q is not a dead-letter sequence (a positive number from dlq list)", rest[0])}
	}
	s, err := dlqConnect(ctx, cf, stderr, "keyworker-dlq")
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
	return dlqWriteDeadLetter(stdout, e, original, origErr, *reveal)
}

// dlqWriteDeadLetter renders one dead letter for people.
func dlqWriteDeadLetter(w io.Writer, e dlq.Entry, original []byte, origErr error, reveal bool) error {
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	p("Dead letter %d on %s, stored %s\n", e.Sequence, e.Subject, e.Time.Format(time.RFC3339Nano))
	if e.Err != nil {
		p("  does not decode: %v\n\nStored message:\n", e.Err)
		dlqWriteJSONOrText(w, e.Raw, reveal)
		return nil
	}
	dl := e.DeadLetter
	p("  error:       %s: %s\n", dl.Error.Kind, dl.Error.Message)
	if dl.Error.HTTPStatus != 0 || dl.Error.SeamErrorType != "" || dl.Error.SeamRequestID != "" {
		p("  seam:        HTTP %s, error type %s, request id %s\n", dlqDashInt(dl.Error.HTTPStatus), dlqDash(dl.Error.SeamErrorType), dlqDash(dl.Error.SeamRequestID))
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
		dlqWriteJSONOrText(w, original, reveal)
	}
	if len(dl.Request) > 0 {
		p("\nSeam request:\n")
		dlqWriteJSONOrText(w, dl.Request, reveal)
	}
	if len(dl.ACSCredential) > 0 {
		if reveal {
			p("\nLast known credential:\n")
		} else {
			p("\nLast known credential (codes masked; --reveal shows them):\n")
		}
		dlqWriteJSONOrText(w, dl.ACSCredential, reveal)
	}
	return nil
}

// dlqWriteJSONOrText prints b as indented JSON with secrets masked, or, when
// it is not JSON, as quoted text.
func dlqWriteJSONOrText(w io.Writer, b []byte, reveal bool) {
	if doc, err := dlq.Pretty(b, reveal); err == nil {
		fmt.Fprintf(w, "%s\n", doc)
		return
	}
	if utf8.Valid(b) {
		fmt.Fprintf(w, "(not JSON) %q\n", b)
		return
	}
	fmt.Fprintf(w, "(not JSON, not UTF-8) %q\n", b)
}

func dlqDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func dlqDashInt(n int) string {
	if n == 0 {
		return "-"
	}
	return strconv.Itoa(n)
}

// dlqClip shortens s to n runes for a table cell and keeps it on one line.
func dlqClip(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r < ' ' {
			return ' '
		}
		return r
	}, s)
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}
