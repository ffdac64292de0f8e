// Package embedded runs a NATS server with JetStream inside the process: the
// worker's default when no NATS_URL is given, and the fast path of tests
// (whose helpers are in package natstest).
package embedded

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
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
	// UserNKeys, when set, are the public user nkeys ("U…") the server
	// requires: a client without the seed of one of them is refused. Empty
	// accepts any client, which only tests on their own server should want.
	UserNKeys []string
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
	for _, k := range o.UserNKeys {
		if !nkeys.IsValidPublicUserKey(k) {
			return nil, errors.New("embedded: UserNKeys holds something that is not a public user nkey")
		}
		sopts.Nkeys = append(sopts.Nkeys, &server.NkeyUser{Nkey: k})
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
