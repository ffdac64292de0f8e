package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/keyworker/keyworker/consumer/embedded"
)

// urlFile, in the data directory, holds the client URL of the embedded
// server of a running worker, so operator commands reach the same store.
const urlFile = "nats.url"

// Conn is an open connection and, with no NATS_URL, the embedded
// server behind it.
type Conn struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	server *server.Server
	urlAt  string
}

// NC is the connection.
func (c *Conn) NC() *nats.Conn { return c.nc }

// JS is JetStream on the connection.
func (c *Conn) JS() jetstream.JetStream { return c.js }

// Close drains the connection and stops the embedded server, if any.
func (c *Conn) Close() {
	if c.nc != nil {
		_ = c.nc.Drain()
		for c.nc.IsDraining() {
			time.Sleep(10 * time.Millisecond)
		}
		c.nc.Close()
	}
	if c.server != nil {
		if c.urlAt != "" {
			_ = os.Remove(c.urlAt)
		}
		c.server.Shutdown()
		c.server.WaitForShutdown()
	}
}

// Connect connects as configured. With no NATS_URL it first tries the
// embedded server of a worker already running on the same data directory,
// and otherwise starts one there (serve: advertise it for operator commands).
func Connect(ctx context.Context, cfg *Config, log zerolog.Logger, name string, serve bool, extra ...nats.Option) (*Conn, error) {
	c := &Conn{}
	url := cfg.NATSURL
	if url == "" {
		if !serve {
			if b, err := os.ReadFile(filepath.Join(cfg.DataDir, urlFile)); err == nil {
				if nc, err := nats.Connect(strings.TrimSpace(string(b)), nats.Name(name), nats.Timeout(2*time.Second)); err == nil {
					return finishConn(ctx, c, nc)
				}
			}
		}
		if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
			return nil, fmt.Errorf("KEYWORKER_DATA_DIR: %w", err)
		}
		s, err := embedded.Start(embedded.Options{DataDir: filepath.Join(cfg.DataDir, "jetstream")})
		if err != nil {
			return nil, err
		}
		c.server = s
		url = s.ClientURL()
		if serve {
			c.urlAt = filepath.Join(cfg.DataDir, urlFile)
			if err := os.WriteFile(c.urlAt, []byte(url+"\n"), 0o640); err != nil {
				c.Close()
				return nil, fmt.Errorf("KEYWORKER_DATA_DIR: %w", err)
			}
		}
		log.Info().Str("nats_url", url).Str("data_dir", cfg.DataDir).Msg("NATS_URL not set: started an embedded JetStream server")
	}
	opts, err := natsOptions(cfg, log, name)
	if err != nil {
		c.Close()
		return nil, err
	}
	nc, err := nats.Connect(url, append(opts, extra...)...)
	if err != nil {
		c.Close()
		return nil, describeConnectError(err, cfg)
	}
	return finishConn(ctx, c, nc)
}

func finishConn(ctx context.Context, c *Conn, nc *nats.Conn) (*Conn, error) {
	c.nc = nc
	js, err := jetstream.New(nc)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	c.js = js
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := js.AccountInfo(actx); err != nil {
		c.Close()
		return nil, fmt.Errorf("NATS_URL: JetStream not available on the server: %w", err)
	}
	return c, nil
}

// natsOptions builds authentication, TLS and reconnect options. Secrets go
// to nats.go only, never to a log.
func natsOptions(cfg *Config, log zerolog.Logger, name string) ([]nats.Option, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.Timeout(5 * time.Second),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: our own Close or Drain
				log.Warn().Err(err).Msg("NATS disconnected: reconnecting")
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info().Str("nats_url", nc.ConnectedUrlRedacted()).Msg("NATS reconnected")
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Warn().Err(err).Msg("NATS error")
		}),
	}
	if cfg.NATSCreds != "" {
		opts = append(opts, nats.UserCredentials(cfg.NATSCreds))
	}
	if cfg.NATSNKey != "" {
		o, err := nats.NkeyOptionFromSeed(cfg.NATSNKey)
		if err != nil {
			return nil, fmt.Errorf("NATS_NKEY: %w", err)
		}
		opts = append(opts, o)
	}
	if cfg.NATSToken != "" {
		opts = append(opts, nats.Token(cfg.NATSToken))
	}
	if cfg.NATSUser != "" {
		opts = append(opts, nats.UserInfo(cfg.NATSUser, cfg.NATSPassword))
	}
	if cfg.TLSCA != "" {
		opts = append(opts, nats.RootCAs(cfg.TLSCA))
	}
	if cfg.TLSCert != "" {
		opts = append(opts, nats.ClientCert(cfg.TLSCert, cfg.TLSKey))
	}
	return opts, nil
}

// describeConnectError turns a failed connect into one line that names the
// setting to look at.
func describeConnectError(err error, cfg *Config) error {
	switch {
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired), errors.Is(err, nats.ErrAuthRevoked):
		return fmt.Errorf("NATS refused the credentials (check NATS_USER/NATS_PASSWORD, NATS_TOKEN, NATS_CREDS or NATS_NKEY): %w", err)
	case isTLSError(err):
		return fmt.Errorf("NATS TLS handshake failed (check NATS_TLS_CA, NATS_TLS_CERT and NATS_TLS_KEY): %w", err)
	case errors.Is(err, nats.ErrNoServers):
		return fmt.Errorf("NATS_URL: no server reachable at %s: %w", redactURL(cfg.NATSURL), err)
	}
	return fmt.Errorf("NATS_URL: connecting to %s: %w", redactURL(cfg.NATSURL), err)
}

// redactURL hides passwords embedded in server URLs.
func redactURL(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		if at := strings.LastIndex(p, "@"); at >= 0 {
			if scheme := strings.Index(p, "://"); scheme >= 0 && scheme < at {
				parts[i] = p[:scheme+3] + "***" + p[at:]
			}
		}
	}
	return strings.Join(parts, ",")
}

// isTLSError reports a failed certificate check or handshake, on either side.
func isTLSError(err error) bool {
	var (
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		verify    *tls.CertificateVerificationError
		alert     tls.AlertError
		recordHdr tls.RecordHeaderError
	)
	return errors.As(err, &unknownCA) || errors.As(err, &hostname) || errors.As(err, &invalid) ||
		errors.As(err, &verify) || errors.As(err, &alert) || errors.As(err, &recordHdr)
}
