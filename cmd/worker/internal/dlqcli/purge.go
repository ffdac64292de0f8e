package dlqcli

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/keyworker/keyworker/cmd/worker/internal/cli"
)

const purgeUsage = `Usage: worker dlq purge [filters] --yes

Deletes the matching dead letters from the dead-letter stream, for good.
Without filters it deletes every dead letter. Without --yes it only says how
many match.

Example:
  worker dlq purge --error-kind invalid_event --until 7d --yes

Flags:
`

// purge is `worker dlq purge`.
func purge(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dlq purge", flag.ContinueOnError)
	cf := registerConfig(fs)
	var ff filterFlags
	ff.register(fs)
	yes := fs.Bool("yes", false, "delete the matching dead letters")
	rest, err := parseArgs(fs, cf, args)
	if err != nil {
		return cli.HelpOr(err, fs, purgeUsage, stdout)
	}
	s, f, err := open(ctx, "dlq purge", "keyworker-dlq-purge", &ff, cf, rest, stderr)
	if err != nil {
		return err
	}
	defer s.Close()
	entries, err := s.q.List(ctx, f)
	if err != nil {
		return err
	}
	if !*yes {
		return &cli.UsageError{Msg: fmt.Sprintf("dlq purge: %d dead letters match; pass --yes to delete them", len(entries))}
	}
	n, err := s.q.Purge(ctx, entries)
	fmt.Fprintf(stdout, "deleted %d dead letters\n", n)
	return err
}
