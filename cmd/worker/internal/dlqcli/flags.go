package dlqcli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keyworker/keyworker/cmd/worker/internal/cli"
	"github.com/keyworker/keyworker/consumer/dlq"
	"github.com/keyworker/keyworker/schemas"
)

// registerConfig registers the NATS connection settings of an operator
// command (dlq, status).
func registerConfig(fs *flag.FlagSet) *cli.ConfigFlags {
	return cli.RegisterConfig(fs, false)
}

// parseArgs parses args, which may mix flags and positional arguments
// (`dlq show 12 --reveal`), and returns the positional ones.
func parseArgs(fs *flag.FlagSet, cf *cli.ConfigFlags, args []string) ([]string, error) {
	var flags, positional []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			positional = append(positional, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			positional = append(positional, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		if f := fs.Lookup(name); f != nil && !isBoolFlag(f) && i+1 < len(args) {
			i++
			flags = append(flags, args[i])
		}
	}
	if err := cli.ParseFlags(fs, cf, flags, os.Getenv); err != nil {
		return nil, err
	}
	return positional, nil
}

func isBoolFlag(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// filterFlags are the selection flags shared by list, replay and purge.
type filterFlags struct {
	subject, since, until, kind, seamType, id, property string
	limit                                               int
	fs                                                  *flag.FlagSet
	text                                                []string // names of the string filters, for refuseEmpty
}

func (f *filterFlags) register(fs *flag.FlagSet) {
	f.fs = fs
	text := func(p *string, name, usage string) {
		fs.StringVar(p, name, "", usage)
		f.text = append(f.text, name)
	}
	text(&f.subject, "subject", "original subject: guest.checked_in or guest.checked_out (checkin, checkout)")
	text(&f.since, "since", "dead-lettered at or after: RFC 3339 time, or a duration ago such as 2h or 7d")
	text(&f.until, "until", "dead-lettered at or before: RFC 3339 time, or a duration ago such as 30m")
	text(&f.kind, "error-kind", "invalid_event, permanent or retries_exhausted")
	text(&f.seamType, "seam-error-type", "error type Seam answered, e.g. acs_credential_not_found")
	text(&f.id, "id", "CloudEvents id of the original event")
	text(&f.property, "property", "property_id of the original event")
	fs.IntVar(&f.limit, "limit", 0, "at most this many dead letters, oldest first (0: all)")
}

// filter turns the flags into a dlq.Filter; errors are usage errors.
func (f *filterFlags) filter(cmd string, now time.Time) (dlq.Filter, error) {
	if err := f.refuseEmpty(cmd); err != nil {
		return dlq.Filter{}, err
	}
	out := dlq.Filter{ErrorKind: f.kind, SeamErrorType: f.seamType, SourceEventID: f.id, Property: f.property, Limit: f.limit}
	switch s := strings.TrimPrefix(f.subject, schemas.DeadLetterPrefix); s {
	case "checkin", "checked_in":
		out.Subject = schemas.SubjectCheckedIn
	case "checkout", "checked_out":
		out.Subject = schemas.SubjectCheckedOut
	default:
		out.Subject = s
	}
	if out.Subject == "" && f.subject != "" {
		return out, &cli.UsageError{Msg: cmd + ": --subject names no subject: give guest.checked_in or guest.checked_out"}
	}
	var err error
	if out.Since, err = parseWhen(f.since, now); err != nil {
		return out, &cli.UsageError{Msg: cmd + ": --since: " + err.Error()}
	}
	if out.Until, err = parseWhen(f.until, now); err != nil {
		return out, &cli.UsageError{Msg: cmd + ": --until: " + err.Error()}
	}
	if err := out.Validate(); err != nil {
		return out, &cli.UsageError{Msg: cmd + ": " + strings.TrimPrefix(err.Error(), "dlq: ")}
	}
	return out, nil
}

// refuseEmpty refuses a filter flag given with an empty value: an unset
// shell variable (--id "$ID") would otherwise select every dead letter,
// and purge would delete them all.
func (f *filterFlags) refuseEmpty(cmd string) error {
	var err error
	f.fs.Visit(func(fl *flag.Flag) {
		if err != nil {
			return
		}
		if slices.Contains(f.text, fl.Name) && strings.TrimSpace(fl.Value.String()) == "" {
			err = &cli.UsageError{Msg: fmt.Sprintf("%s: --%s is empty (an unset variable?); leave the flag out to select without it", cmd, fl.Name)}
		}
	})
	return err
}

// parseWhen reads an RFC 3339 time, or a duration meaning that long
// before now (Go syntax such as 90m or 2h, plus whole days such as 7d).
func parseWhen(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	var d time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil {
			return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time nor a duration such as 2h or 7d", s)
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time nor a duration such as 2h or 7d", s)
		}
	}
	if d < 0 {
		return time.Time{}, fmt.Errorf("%q: a duration means that long ago and must not be negative", s)
	}
	return now.Add(-d), nil
}

// open is the common start of list, replay and purge: no positional
// arguments, a valid filter, a connection.
func open(ctx context.Context, cmd, client string, ff *filterFlags, cf *cli.ConfigFlags, rest []string, stderr io.Writer) (*session, dlq.Filter, error) {
	if len(rest) > 0 {
		return nil, dlq.Filter{}, &cli.UsageError{Msg: fmt.Sprintf("%s: unexpected argument %q (filters are flags, see --help)", cmd, rest[0])}
	}
	f, err := ff.filter(cmd, time.Now())
	if err != nil {
		return nil, dlq.Filter{}, err
	}
	s, err := connect(ctx, cf, stderr, client)
	if err != nil {
		return nil, dlq.Filter{}, err
	}
	return s, f, nil
}
