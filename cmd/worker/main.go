// Command worker turns guest check-in and check-out events on NATS
// JetStream into Seam credential assignments. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/keyworker/keyworker/cmd/worker/internal/bench"
	"github.com/keyworker/keyworker/cmd/worker/internal/cli"
	"github.com/keyworker/keyworker/cmd/worker/internal/dlqcli"
	"github.com/keyworker/keyworker/cmd/worker/internal/simulator"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, errQuiet) {
			fmt.Fprintln(os.Stderr, "worker:", err)
		}
		os.Exit(cli.ExitCode(err))
	}
}

// errQuiet marks an error already reported to the user.
var errQuiet = errors.New("already reported")

const topUsage = `worker: keyworker, guest events to Seam credential assignments

Usage:
  worker [run] [flags]          consume events (the default command)
  worker demo                   run an embedded demo and print each outcome
  worker publish checkin|checkout --credential ID (--user ID | --user-identity ID)
  worker dlq list|show|replay|purge [flags]
  worker status [--json]
  worker seam-simulator [--addr 127.0.0.1:8080]
  worker bench [--quick] [--json]

Every command takes --help. Configuration comes from environment variables,
each also a flag of the same meaning (see README.md).
`

// run dispatches the subcommand. stdin is read only by prompts.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	cmd := "run"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "run":
		return runWorker(ctx, args, stdout, stderr)
	case "demo":
		return runDemo(ctx, args, stdout, stderr)
	case "publish":
		return runPublish(ctx, args, stdout, stderr)
	case "dlq":
		return dlqcli.Run(ctx, args, stdin, stdout, stderr)
	case "status":
		return dlqcli.RunStatus(ctx, args, stdout, stderr)
	case "seam-simulator":
		return simulator.Run(ctx, args, stdout, stderr)
	case "bench":
		return bench.Run(ctx, args, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, topUsage)
		return nil
	}
	fmt.Fprint(stderr, topUsage)
	return &cli.UsageError{Msg: fmt.Sprintf("unknown command %q", cmd)}
}
