package dlqcli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/keyworker/keyworker/cmd/worker/internal/cli"
	"github.com/keyworker/keyworker/consumer/dlq"
)

const statusUsage = `Usage: worker status [--by-workspace] [--json]

Prints the sizes of the input, results and dead-letter streams, the durable
consumer's pending, ack-pending and redelivered counts, the dead letters by
error kind and by Seam workspace, and the number of idempotency records.
--by-workspace also counts the outcome events by workspace (it reads the
whole results stream).

Example:
  NATS_URL=nats://127.0.0.1:4222 worker status
  worker status --json | jq .consumer.pending

Flags:
`

// RunStatus is `worker status`.
func RunStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	cf := registerConfig(fs)
	asJSON := fs.Bool("json", false, "print one JSON object")
	byWorkspace := fs.Bool("by-workspace", false, "count the outcome events by workspace (reads the whole results stream)")
	rest, err := parseArgs(fs, cf, args)
	if err != nil {
		return cli.HelpOr(err, fs, statusUsage, stdout)
	}
	if len(rest) > 0 {
		return &cli.UsageError{Msg: fmt.Sprintf("status: unexpected argument %q", rest[0])}
	}
	s, err := connect(ctx, cf, stderr, "keyworker-status")
	if err != nil {
		return err
	}
	defer s.Close()
	st, err := s.q.Status(ctx)
	if err != nil {
		return err
	}
	if *byWorkspace {
		if st.Results, err = s.q.Results(ctx); err != nil {
			return err
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	return statusWrite(stdout, st)
}

// statusWrite renders a status for people.
func statusWrite(w io.Writer, st *dlq.Status) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STREAM\tROLE\tMESSAGES\tBYTES")
	for _, s := range st.Streams {
		if !s.Found {
			fmt.Fprintf(tw, "%s\t%s\tnot found\t\n", s.Name, s.Role)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", s.Name, s.Role, s.Messages, statusBytes(s.Bytes))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	c := st.Consumer
	fmt.Fprintln(w)
	if c.Found {
		fmt.Fprintf(w, "Consumer %s on %s: %d pending, %d awaiting ack, %d redelivered, %d pull requests waiting\n",
			c.Name, c.Stream, c.Pending, c.AckPending, c.Redelivered, c.Waiting)
	} else {
		fmt.Fprintf(w, "Consumer %s on %s: not found (no worker has started against this NATS)\n", c.Name, c.Stream)
	}
	fmt.Fprintf(w, "Dead letters: %d", st.DeadLetters.Total)
	if len(st.DeadLetters.ByErrorKind) > 0 {
		fmt.Fprintf(w, " (%s)", countsLine(st.DeadLetters.ByErrorKind))
	}
	fmt.Fprintln(w)
	if len(st.DeadLetters.ByWorkspace) > 1 || st.DeadLetters.ByWorkspace["none"] == 0 && st.DeadLetters.Total > 0 {
		fmt.Fprintf(w, "Dead letters by workspace: %s\n", countsLine(st.DeadLetters.ByWorkspace))
	}
	if st.Results != nil {
		fmt.Fprintf(w, "Outcome events: %d (%s)\n", st.Results.Total, countsLine(st.Results.ByWorkspace))
	}
	if st.Idempotency.Found {
		fmt.Fprintf(w, "Idempotency records: %d in %s\n", st.Idempotency.Records, st.Idempotency.Bucket)
	} else {
		fmt.Fprintf(w, "Idempotency records: bucket %s not found\n", st.Idempotency.Bucket)
	}
	return nil
}

// countsLine renders counts by name, sorted: "ws_a 3, ws_b 1".
func countsLine(m map[string]int) string {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	slices.Sort(names)
	parts := make([]string, len(names))
	for i, k := range names {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// statusBytes renders a byte count in binary units.
func statusBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
