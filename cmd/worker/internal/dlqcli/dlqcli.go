// Package dlqcli is the operator commands on keyworker's streams:
// `worker dlq list|show|replay|purge` and `worker status`.
package dlqcli

import (
	"context"
	"fmt"
	"io"

	"github.com/rs/zerolog"

	"github.com/keyworker/keyworker/cmd/worker/internal/cli"
	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/consumer/dlq"
)

const usage = `Usage: worker dlq list|show|replay|purge [flags]

Dead letters are events keyworker gave up on, kept in the DEAD_LETTERS
stream with everything needed to replay them.

  list      table of dead letters (or --json)
  show SEQ  one dead letter in full; credential codes masked unless --reveal
  replay    re-publish the original events to their original subjects
  purge     delete dead letters (only with --yes)

Filters (list, replay, purge): --subject, --since, --until, --error-kind,
--seam-error-type, --id, --limit. Each subcommand takes --help.

Example:
  worker dlq list --error-kind retries_exhausted --since 2h
  worker dlq replay --error-kind retries_exhausted --since 2h --rate 5 --yes
`

// Run dispatches `worker dlq` subcommands.
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return &cli.UsageError{Msg: "dlq: say list, show, replay or purge (worker dlq --help)"}
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "list":
		return list(ctx, args, stdout, stderr)
	case "show":
		return show(ctx, args, stdout, stderr)
	case "replay":
		return replay(ctx, args, stdin, stdout, stderr)
	case "purge":
		return purge(ctx, args, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return &cli.UsageError{Msg: fmt.Sprintf("dlq: unknown subcommand %q: say list, show, replay or purge", cmd)}
}

// session is an open connection and a dlq.Queue on the default layout.
type session struct {
	conn *cli.Conn
	q    *dlq.Queue
	log  zerolog.Logger
}

// connect connects as cf says and opens the dead-letter queue.
func connect(ctx context.Context, cf *cli.ConfigFlags, stderr io.Writer, name string) (*session, error) {
	log := cli.NewLogger(cf.Config(), stderr)
	conn, err := cli.Connect(ctx, cf.Config(), log, name, false)
	if err != nil {
		return nil, err
	}
	q, err := dlq.New(conn.JS(), consumer.Config{Replicas: cf.Config().Replicas})
	if err != nil {
		conn.Close()
		return nil, err
	}
	return &session{conn: conn, q: q, log: log}, nil
}

func (s *session) Close() { s.conn.Close() }
