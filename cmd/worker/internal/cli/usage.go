package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
)

// UsageError is a bad command line: exit code 2.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

// ExitCode is the exit status for err: 2 for a usage error, a bad tracing
// variable or a data directory in use, else 1.
func ExitCode(err error) int {
	var (
		u *UsageError
		l *LockedError
	)
	if errors.As(err, &u) || errors.As(err, &l) || errors.Is(err, ErrTracingConfig) {
		return 2
	}
	return 1
}

// HelpOr prints usage for --help and passes other errors on.
func HelpOr(err error, fs *flag.FlagSet, usage string, w io.Writer) error {
	if !errors.Is(err, flag.ErrHelp) {
		return err
	}
	fmt.Fprint(w, usage)
	fs.SetOutput(w)
	fs.PrintDefaults()
	return nil
}
