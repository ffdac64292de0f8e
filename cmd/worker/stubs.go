package main

import (
	"context"
	"errors"
	"io"
)

func runDLQ(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	return errors.New("dlq: not built yet")
}
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("status: not built yet")
}
func runSimulator(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("seam-simulator: not built yet")
}
func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("bench: not built yet")
}
