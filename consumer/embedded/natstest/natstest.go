// Package natstest holds test helpers around the embedded NATS server: a
// server per test, a client per caller, and a poll for conditions outside
// the test's reach. It is kept apart from package embedded so that the
// worker binary does not link package testing.
package natstest

import (
	"testing"
	"time"

	"github.com/keyworker/keyworker/consumer/embedded"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// StartTest starts a server for a test, with its data in tb.TempDir, and
// shuts it down in tb.Cleanup. It returns the server and its client URL.
func StartTest(tb testing.TB) (*server.Server, string) {
	tb.Helper()
	s, err := embedded.Start(embedded.Options{DataDir: tb.TempDir()})
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

// JetStream starts a server for the test and connects to it: the shortest
// way to a JetStream of one's own.
func JetStream(tb testing.TB) jetstream.JetStream {
	tb.Helper()
	_, url := StartTest(tb)
	_, js := ConnectTest(tb, url)
	return js
}
