// Package embedded runs a NATS server with JetStream inside the process: the
// worker's default when no NATS_URL is given, and the fast path of tests.
package embedded

import (
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Options configure an embedded server. The zero value listens on a random
// loopback port and keeps JetStream data in a fresh temporary directory.
type Options struct {
	// Host defaults to 127.0.0.1: the embedded server is never reachable from
	// other machines unless asked.
	Host string
	// Port defaults to a random free port (server.RANDOM_PORT).
	Port int
	// DataDir holds JetStream's file store. Empty means a new temporary directory.
	DataDir string
	// MaxPayload overrides the server's 1 MiB default when positive.
	MaxPayload int32
	// ReadyTimeout bounds the wait for the server to accept connections (default 10 s).
	ReadyTimeout time.Duration
}

// Start starts a JetStream-enabled server and waits until it accepts
// connections. The caller shuts it down with Shutdown and WaitForShutdown.
func Start(o Options) (*server.Server, error) {
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.Port == 0 {
		o.Port = server.RANDOM_PORT
	}
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = 10 * time.Second
	}
	if o.DataDir == "" {
		dir, err := os.MkdirTemp("", "keyworker-nats-*")
		if err != nil {
			return nil, fmt.Errorf("embedded: data dir: %w", err)
		}
		o.DataDir = dir
	}
	sopts := &server.Options{
		ServerName: "keyworker-embedded",
		Host:       o.Host,
		Port:       o.Port,
		JetStream:  true,
		StoreDir:   o.DataDir,
		NoSigs:     true,
		NoLog:      true,
		MaxPayload: o.MaxPayload,
	}
	s, err := server.NewServer(sopts)
	if err != nil {
		return nil, fmt.Errorf("embedded: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(o.ReadyTimeout) {
		s.Shutdown()
		return nil, errors.New("embedded: server not ready for connections in time")
	}
	return s, nil
}

// StartTest starts a server for a test, with its data in tb.TempDir, and
// shuts it down in tb.Cleanup. It returns the server and its client URL.
func StartTest(tb testing.TB) (*server.Server, string) {
	tb.Helper()
	s, err := Start(Options{DataDir: tb.TempDir()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s, s.ClientURL()
}

// ConnectTest connects to url for a test and closes the connection in
// tb.Cleanup: each caller is its own client, as a replica would be.
func ConnectTest(tb testing.TB, url string) (*nats.Conn, jetstream.JetStream) {
	tb.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	return nc, js
}

// WaitFor polls check until it returns nil, failing the test with the last
// error after within. It is for conditions outside the test's reach (a
// stream's state, another process, a probe), like nats.go's checkFor.
func WaitFor(tb testing.TB, within time.Duration, check func() error) {
	tb.Helper()
	deadline := time.Now().Add(within)
	wait := 5 * time.Millisecond
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("after %s: %v", within, err)
		}
		time.Sleep(wait)
		wait = min(2*wait, 100*time.Millisecond)
	}
}
