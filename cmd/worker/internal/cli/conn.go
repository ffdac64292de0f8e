package cli

import (
	"bytes"
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
	"github.com/nats-io/nkeys"
	"github.com/rs/zerolog"

	"github.com/keyworker/keyworker/consumer/embedded"
)

// Files in the data directory. urlFile holds the client URL of the
// embedded server of a running worker, so operator commands reach the same
// store; nkeyFile the seed of the one user that server accepts.
const (
	urlFile  = "nats.url"
	nkeyFile = "nats.nkey"
)

// attachWait bounds how long an operator command waits for the process
// holding the data directory to serve NATS (a worker still starting) or to
// let go of it (another command's short-lived server).
const attachWait = 10 * time.Second

// Conn is an open connection and, with no NATS_URL, the embedded
// server behind it and the data directory's lock.
type Conn struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	server *server.Server
	urlAt  string
	lock   *dirLock
}

// NC is the connection.
func (c *Conn) NC() *nats.Conn { return c.nc }

// JS is JetStream on the connection.
func (c *Conn) JS() jetstream.JetStream { return c.js }

// Close drains the connection, stops the embedded server, if any, and
// releases the data directory.
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
	if c.lock != nil {
		c.lock.release() // last: the store is closed
	}
}

// Connect connects as configured. With no NATS_URL the data directory
// belongs to one process at a time (a lock): the worker (serve) takes it
// or fails with *LockedError; an operator command attaches to the server
// of the process holding it, or, when none does, takes it and starts a
// short-lived server of its own.
func Connect(ctx context.Context, cfg *Config, log zerolog.Logger, name string, serve bool, extra ...nats.Option) (*Conn, error) {
	if cfg.NATSURL == "" {
		return connectEmbedded(ctx, cfg, log, name, serve, extra)
	}
	opts, err := natsOptions(cfg, log, name)
	if err != nil {
		return nil, err
	}
	nc, err := nats.Connect(cfg.NATSURL, append(opts, extra...)...)
	if err != nil {
		return nil, describeConnectError(err, cfg)
	}
	return finishConn(ctx, &Conn{}, nc)
}

func connectEmbedded(ctx context.Context, cfg *Config, log zerolog.Logger, name string, serve bool, extra []nats.Option) (*Conn, error) {
	// 0700 for a directory we create; an existing one is left as it is (it
	// may be shared), the secrets in it are 0600 files and a 0700 store.
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("KEYWORKER_DATA_DIR: %w", err)
	}
	role := roleOperator
	if serve {
		role = roleWorker
	}
	deadline := time.Now().Add(attachWait)
	for {
		lock, err := lockDataDir(cfg.DataDir, role)
		if err == nil {
			return startEmbedded(ctx, cfg, log, name, lock, serve, extra)
		}
		var held *LockedError
		if !errors.As(err, &held) {
			return nil, err
		}
		var why error = held
		switch {
		case !serve:
			c, aerr := attach(ctx, cfg, name, extra)
			if aerr == nil {
				return c, nil
			}
			why = fmt.Errorf("%w; its NATS server is not reachable (%v)", held, aerr)
		case held.Role != roleOperator:
			return nil, held // a worker runs on it: refuse at once
		}
		// A worker still starting, or an operator command about to finish.
		if time.Now().After(deadline) {
			return nil, why
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// attach connects to the embedded server of the process holding the data
// directory, as the one user it accepts.
func attach(ctx context.Context, cfg *Config, name string, extra []nats.Option) (*Conn, error) {
	b, err := os.ReadFile(filepath.Join(cfg.DataDir, urlFile))
	if err != nil {
		return nil, err
	}
	auth, err := nats.NkeyOptionFromSeed(filepath.Join(cfg.DataDir, nkeyFile))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", nkeyFile, err)
	}
	opts := append([]nats.Option{nats.Name(name), nats.Timeout(2 * time.Second), auth}, extra...)
	nc, err := nats.Connect(strings.TrimSpace(string(b)), opts...)
	if err != nil {
		return nil, err
	}
	return finishConn(ctx, &Conn{}, nc)
}

// startEmbedded starts the embedded server on the locked data directory,
// requiring the data directory's nkey, and connects to it (serve:
// advertise it for operator commands). The Conn owns lock from here on.
func startEmbedded(ctx context.Context, cfg *Config, log zerolog.Logger, name string, lock *dirLock, serve bool, extra []nats.Option) (*Conn, error) {
	c := &Conn{lock: lock}
	seedPath := filepath.Join(cfg.DataDir, nkeyFile)
	pub, err := ensureNKey(seedPath, log)
	if err != nil {
		c.Close()
		return nil, err
	}
	s, err := embedded.Start(embedded.Options{DataDir: filepath.Join(cfg.DataDir, "jetstream"), UserNKeys: []string{pub}})
	if err != nil {
		c.Close()
		return nil, err
	}
	c.server = s
	url := s.ClientURL()
	if serve {
		c.urlAt = filepath.Join(cfg.DataDir, urlFile)
		if err := writeFileAtomic(c.urlAt, []byte(url+"\n")); err != nil {
			c.Close()
			return nil, fmt.Errorf("KEYWORKER_DATA_DIR: %w", err)
		}
	}
	log.Info().Str("nats_url", url).Str("data_dir", cfg.DataDir).Str("nkey_file", seedPath).
		Msg("NATS_URL not set: started an embedded JetStream server (clients need the nkey in nkey_file)")
	auth, err := nats.NkeyOptionFromSeed(seedPath)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("%s: %w", nkeyFile, err)
	}
	opts := append(baseOptions(log, name), auth)
	nc, err := nats.Connect(url, append(opts, extra...)...)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("embedded NATS server: %w", err)
	}
	return finishConn(ctx, c, nc)
}

// ensureNKey returns the public key of the user seed at path, creating it
// (0600) on first start. A seed file others could read is replaced: it may
// have leaked, and nothing else refers to the key (the server is given it
// at every start; clients read the file).
func ensureNKey(path string, log zerolog.Logger) (string, error) {
	if st, err := os.Stat(path); err == nil {
		if st.Mode().Perm()&0o077 == 0 {
			if pub, err := userPublicKey(path); err == nil {
				return pub, nil
			}
			log.Warn().Str("nkey_file", path).Msg("the embedded server's nkey file holds no valid user seed: replaced with a new one")
		} else {
			log.Warn().Str("nkey_file", path).Msg("the embedded server's nkey file was readable by other users: replaced with a new one")
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("KEYWORKER_DATA_DIR: %w", err)
	}
	kp, err := nkeys.CreateUser()
	if err != nil {
		return "", fmt.Errorf("KEYWORKER_DATA_DIR: creating the embedded server's nkey: %w", err)
	}
	defer kp.Wipe() // also clears seed, which is the pair's own slice
	pub, err := kp.PublicKey()
	if err != nil {
		return "", fmt.Errorf("KEYWORKER_DATA_DIR: creating the embedded server's nkey: %w", err)
	}
	seed, err := kp.Seed()
	if err != nil {
		return "", fmt.Errorf("KEYWORKER_DATA_DIR: creating the embedded server's nkey: %w", err)
	}
	line := append(append([]byte(nil), seed...), '\n')
	err = writeFileAtomic(path, line)
	clear(line)
	if err != nil {
		return "", fmt.Errorf("KEYWORKER_DATA_DIR: %w", err)
	}
	return pub, nil
}

func userPublicKey(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	defer clear(b)
	kp, err := nkeys.FromSeed(bytes.TrimSpace(b))
	if err != nil {
		return "", err
	}
	defer kp.Wipe()
	pub, err := kp.PublicKey()
	if err != nil {
		return "", err
	}
	if !nkeys.IsValidPublicUserKey(pub) {
		return "", errors.New("not a user seed")
	}
	return pub, nil
}

// writeFileAtomic writes a 0600 file that readers see whole or not at all.
func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o600) // CreateTemp's mode already, whatever the umask
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		_ = os.Remove(f.Name())
	}
	return err
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
	opts := baseOptions(log, name)
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

// baseOptions are the options of every connection: name, timeouts,
// reconnecting for good, and logging of connection events.
func baseOptions(log zerolog.Logger, name string) []nats.Option {
	return []nats.Option{
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
