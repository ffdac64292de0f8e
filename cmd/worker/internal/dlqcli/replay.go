package dlqcli

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/term"

	"github.com/keyworker/keyworker/cmd/worker/internal/cli"
	"github.com/keyworker/keyworker/consumer/dlq"
)

const replayUsage = `Usage: worker dlq replay [filters] [--dry-run] [--rate N] [--yes] [--force]

Re-publishes the original event of each matching dead letter, byte for byte,
to its original subject with the header Keyworker-Replay-Of: <dead-letter
sequence>. The worker then handles it again. Dead letters are kept; delete
them with dlq purge once the replay has worked.

An event whose idempotency record says it completed is skipped. An event
replayed 3 times already is skipped unless --force. Without --yes the command
asks for confirmation on a terminal and refuses otherwise.

Example:
  worker dlq replay --error-kind retries_exhausted --since 2h --dry-run
  worker dlq replay --error-kind retries_exhausted --since 2h --rate 5 --yes

Flags:
`

// progressEvery is how often a replay reports progress when stderr is
// not a terminal.
const progressEvery = 5 * time.Second

// replay is `worker dlq replay`.
func replay(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dlq replay", flag.ContinueOnError)
	cf := registerConfig(fs)
	var ff filterFlags
	ff.register(fs)
	dryRun := fs.Bool("dry-run", false, "print what would be replayed; publish nothing")
	rate := fs.Float64("rate", 0, "events per second, e.g. 5 (0: as fast as NATS takes them)")
	yes := fs.Bool("yes", false, "replay without asking")
	force := fs.Bool("force", false, "replay events past the loop guard (replayed 3 times already)")
	rest, err := parseArgs(fs, cf, args)
	if err != nil {
		return cli.HelpOr(err, fs, replayUsage, stdout)
	}
	if *rate < 0 {
		return &cli.UsageError{Msg: fmt.Sprintf("dlq replay: --rate %v must not be negative", *rate)}
	}
	s, f, err := open(ctx, "dlq replay", "keyworker-dlq-replay", &ff, cf, rest, stderr)
	if err != nil {
		return err
	}
	defer s.Close()
	entries, err := s.q.List(ctx, f)
	if err != nil {
		return err
	}
	if len(entries) == 0 {
		fmt.Fprintln(stdout, "no dead letters match: nothing to replay")
		return nil
	}
	if !*dryRun && !*yes {
		ok, err := confirm(stdin, stderr, fmt.Sprintf("Replay %d dead letters?", len(entries)))
		if err != nil {
			return &cli.UsageError{Msg: fmt.Sprintf("dlq replay: %d dead letters match; %v", len(entries), err)}
		}
		if !ok {
			fmt.Fprintln(stdout, "nothing replayed")
			return nil
		}
	}

	prog := newProgress(stdout, stderr, s.log, len(entries), *dryRun)
	opts := dlq.ReplayOptions{DryRun: *dryRun, Rate: *rate, Force: *force, OnResult: prog.result}
	rep, err := s.q.Replay(ctx, entries, opts)
	prog.finish()
	if *dryRun {
		fmt.Fprintf(stdout, "dry run: would replay %d, skip %d, fail %d; nothing was published\n", rep.WouldReplay, rep.Skipped, rep.Failed)
	} else {
		fmt.Fprintf(stdout, "replayed %d, skipped %d, failed %d\n", rep.Replayed, rep.Skipped, rep.Failed)
	}
	if err != nil {
		return fmt.Errorf("dlq replay: stopped after %d of %d: %w", len(rep.Results), len(entries), err)
	}
	if rep.Failed > 0 {
		return fmt.Errorf("dlq replay: %d dead letters could not be replayed (see above)", rep.Failed)
	}
	return nil
}

// confirm asks a yes/no question on a terminal. When stdin is not a
// terminal it refuses: a script must say --yes.
func confirm(stdin io.Reader, stderr io.Writer, question string) (bool, error) {
	if !isTerminal(stdin) {
		return false, errors.New("pass --yes to go ahead (stdin is not a terminal to ask)")
	}
	fmt.Fprintf(stderr, "%s [y/N] ", question)
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && line == "" {
		return false, nil
	}
	answer := strings.ToLower(strings.TrimSpace(line))
	return answer == "y" || answer == "yes", nil
}

// progress reports a replay as it goes. With stderr on a terminal it
// keeps one progress line there, and when stdout is on the terminal too it
// prints only the dead letters that were not replayed; otherwise it prints
// a line per dead letter and logs progress every few seconds.
type progress struct {
	stdout, stderr io.Writer
	log            zerolog.Logger
	tty            bool // stderr is a terminal
	quietReplayed  bool // stdout is that terminal too: replayed ones only count
	dryRun         bool
	total, done    int
	counts         map[dlq.Action]int
	every          time.Duration // between progress logs when not on a terminal
	last           time.Time
}

func newProgress(stdout, stderr io.Writer, log zerolog.Logger, total int, dryRun bool) *progress {
	tty := isTerminal(stderr)
	return &progress{
		stdout: stdout, stderr: stderr, log: log,
		tty: tty, quietReplayed: tty && isTerminal(stdout),
		dryRun: dryRun, total: total,
		counts: map[dlq.Action]int{},
		every:  progressEvery,
		last:   time.Now(),
	}
}

// isTerminal reports whether v is a terminal.
func isTerminal(v any) bool {
	f, ok := v.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func (p *progress) result(r dlq.Result) {
	p.done++
	p.counts[r.Action]++
	quiet := p.quietReplayed && r.Action == dlq.ActionReplayed
	if !quiet {
		if p.tty {
			fmt.Fprint(p.stderr, "\r\033[K")
		}
		fmt.Fprintln(p.stdout, resultLine(r))
	}
	now := time.Now()
	switch {
	case p.tty && (now.Sub(p.last) >= 100*time.Millisecond || p.done == p.total || !quiet):
		fmt.Fprintf(p.stderr, "\r\033[K%s", p.line())
		p.last = now
	case !p.tty && now.Sub(p.last) >= p.every:
		p.log.Info().Int("done", p.done).Int("total", p.total).Int("replayed", p.counts[dlq.ActionReplayed]).
			Int("skipped", p.counts[dlq.ActionSkipped]).Int("failed", p.counts[dlq.ActionFailed]).Msg("replay progress")
		p.last = now
	}
}

func (p *progress) line() string {
	verb := "replayed"
	n := p.counts[dlq.ActionReplayed]
	if p.dryRun {
		verb, n = "would replay", p.counts[dlq.ActionWouldReplay]
	}
	return fmt.Sprintf("%d/%d: %s %d, skipped %d, failed %d", p.done, p.total, verb, n, p.counts[dlq.ActionSkipped], p.counts[dlq.ActionFailed])
}

func (p *progress) finish() {
	if p.tty && p.done > 0 {
		fmt.Fprint(p.stderr, "\r\033[K")
	}
}

// resultLine is one dead letter's fate, for people.
func resultLine(r dlq.Result) string {
	id := r.SourceEventID
	if id == "" {
		id = "(no event id)"
	}
	head := fmt.Sprintf("%-12s %6d  %s  %s", strings.ReplaceAll(string(r.Action), "_", " "), r.Sequence, dash(r.OriginalSubject), id)
	switch r.Action {
	case dlq.ActionReplayed:
		return fmt.Sprintf("%s  -> input sequence %d", head, r.InputSequence)
	case dlq.ActionWouldReplay:
		return head
	}
	reason := strings.TrimPrefix(r.Err.Error(), "dlq: ")
	if errors.Is(r.Err, dlq.ErrReplayLimit) {
		reason += "; --force replays it anyway"
	}
	return fmt.Sprintf("%s  %s", head, reason)
}
