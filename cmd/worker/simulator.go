package main

import (
	"context"
	"errors"
	"io"
)

// runSimulator is not built yet.
func runSimulator(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("simulator: not built yet")
}
