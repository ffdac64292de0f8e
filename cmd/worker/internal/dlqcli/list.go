package dlqcli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/keyworker/keyworker/cmd/worker/internal/cli"
	"github.com/keyworker/keyworker/consumer/dlq"
)

const listUsage = `Usage: worker dlq list [filters] [--json]

Lists dead letters, oldest first: sequence, time, original subject, error
kind, Seam error type, reservation and Seam attempts. --json prints one JSON
array with more detail (event id, error message, HTTP status, ...).

Example:
  worker dlq list --error-kind permanent --seam-error-type acs_credential_not_found --since 24h
  worker dlq list --id 7f3c0d2e-1b4a-4c8e-9f00-5a6b7c8d9e0f --json

Flags:
`

// list is `worker dlq list`.
func list(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dlq list", flag.ContinueOnError)
	cf := registerConfig(fs)
	var ff filterFlags
	ff.register(fs)
	asJSON := fs.Bool("json", false, "print one JSON array")
	rest, err := parseArgs(fs, cf, args)
	if err != nil {
		return cli.HelpOr(err, fs, listUsage, stdout)
	}
	s, f, err := open(ctx, "dlq list", "keyworker-dlq", &ff, cf, rest, stderr)
	if err != nil {
		return err
	}
	defer s.Close()
	if *asJSON {
		return writeListJSON(ctx, s.q, f, stdout)
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
			dash(r.OriginalSubject), dash(kind), dash(r.SeamErrorType), dash(clip(r.Reservation, 40)), r.Attempts)
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

// writeListJSON writes the matching dead letters as one JSON array, as they
// are read, so a long list is not held in memory.
func writeListJSON(ctx context.Context, q *dlq.Queue, f dlq.Filter, w io.Writer) error {
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

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// clip shortens s to n runes for a table cell and keeps it on one line.
func clip(s string, n int) string {
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
