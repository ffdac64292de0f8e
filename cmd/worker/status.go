package main

import (
	"context"
	"errors"
	"io"
)

// runStatus is not built yet.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("status: not built yet")
}
