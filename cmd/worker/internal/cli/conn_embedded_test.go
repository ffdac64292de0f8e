package cli

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

func embeddedConfig(t *testing.T) *Config {
	t.Helper()
	// A directory that does not exist yet: Connect creates it.
	return &Config{DataDir: filepath.Join(t.TempDir(), "data"), LogLevel: "error", LogFormat: "json", Replicas: 1}
}

func connectT(t *testing.T, cfg *Config, serve bool) *Conn {
	t.Helper()
	c, err := Connect(context.Background(), cfg, zerolog.New(io.Discard), "test", serve)
	if err != nil {
		t.Fatalf("connect (serve=%v): %v", serve, err)
	}
	return c
}

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func TestConnect_EmbeddedServerRequiresTheDataDirNKey(t *testing.T) {
	cfg := embeddedConfig(t)
	w := connectT(t, cfg, true)
	defer w.Close()

	b, err := os.ReadFile(filepath.Join(cfg.DataDir, urlFile))
	if err != nil {
		t.Fatal(err)
	}
	url := strings.TrimSpace(string(b))
	if nc, err := nats.Connect(url); err == nil {
		nc.Close()
		t.Fatal("a client without credentials was let in")
	} else if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("unauthenticated connect: %v, want an authorization violation", err)
	}
	auth, err := nats.NkeyOptionFromSeed(filepath.Join(cfg.DataDir, nkeyFile))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(url, auth)
	if err != nil {
		t.Fatalf("connect with the data directory's nkey: %v", err)
	}
	nc.Close()

	for path, want := range map[string]os.FileMode{
		cfg.DataDir:                          0o700,
		filepath.Join(cfg.DataDir, nkeyFile): 0o600,
		filepath.Join(cfg.DataDir, urlFile):  0o600,
		filepath.Join(cfg.DataDir, lockFile): 0o600,
	} {
		if got := fileMode(t, path); got != want {
			t.Errorf("%s: mode %o, want %o", filepath.Base(path), got, want)
		}
	}
}

func TestConnect_NKeyIsKeptAcrossStartsAndReplacedWhenOthersCouldRead(t *testing.T) {
	cfg := embeddedConfig(t)
	seedPath := filepath.Join(cfg.DataDir, nkeyFile)
	connectT(t, cfg, true).Close()
	first, err := os.ReadFile(seedPath)
	if err != nil {
		t.Fatal(err)
	}
	connectT(t, cfg, true).Close()
	if again, _ := os.ReadFile(seedPath); string(again) != string(first) {
		t.Fatal("the nkey changed between two starts")
	}

	if err := os.Chmod(seedPath, 0o644); err != nil {
		t.Fatal(err)
	}
	w := connectT(t, cfg, true)
	defer w.Close()
	if again, _ := os.ReadFile(seedPath); string(again) == string(first) {
		t.Fatal("a seed others could read was kept")
	}
	if got := fileMode(t, seedPath); got != 0o600 {
		t.Fatalf("replaced seed: mode %o, want 600", got)
	}
	// The server takes the new key only: the old seed no longer gets in.
	old := filepath.Join(t.TempDir(), "old.nkey")
	if err := os.WriteFile(old, first, 0o600); err != nil {
		t.Fatal(err)
	}
	auth, err := nats.NkeyOptionFromSeed(old)
	if err != nil {
		t.Fatal(err)
	}
	if nc, err := nats.Connect(w.NC().ConnectedUrl(), auth); err == nil {
		nc.Close()
		t.Fatal("the replaced seed still connects")
	}
}

func TestConnect_OneWorkerPerDataDirOperatorsAttach(t *testing.T) {
	cfg := embeddedConfig(t)
	w := connectT(t, cfg, true)

	_, err := Connect(context.Background(), cfg, zerolog.New(io.Discard), "second", true)
	var held *LockedError
	if !errors.As(err, &held) {
		t.Fatalf("second worker on the data dir: %v, want *LockedError", err)
	}
	if held.PID != os.Getpid() || held.Role != roleWorker || ExitCode(err) != 2 ||
		strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), strconv.Itoa(os.Getpid())) {
		t.Fatalf("refusal %+v, exit %d: %q; want one line naming pid %d, exit 2", held, ExitCode(err), err, os.Getpid())
	}

	op := connectT(t, cfg, false)
	if op.server != nil || op.NC().ConnectedUrl() != w.NC().ConnectedUrl() {
		t.Fatalf("operator command started its own server (%s) instead of attaching to %s", op.NC().ConnectedUrl(), w.NC().ConnectedUrl())
	}
	op.Close()
	w.Close()
	if _, err := os.Stat(filepath.Join(cfg.DataDir, urlFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("nats.url after the worker stopped: %v", err)
	}

	// No worker: a command holds the directory for its own short-lived server.
	op = connectT(t, cfg, false)
	if op.server == nil {
		t.Fatal("with no worker running the command has no server")
	}
	if _, err := lockDataDir(cfg.DataDir, roleWorker); !errors.As(err, &held) || held.Role != roleOperator ||
		!strings.Contains(err.Error(), "operator command") {
		t.Fatalf("lock while a command runs its own server: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, urlFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a short-lived server must not advertise itself: nats.url %v", err)
	}
	op.Close()
	connectT(t, cfg, true).Close()
}

func TestConnect_WorkerWaitsForAnOperatorCommandButNotForAWorker(t *testing.T) {
	cfg := embeddedConfig(t)
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		holder  string
		waits   bool
		message string
	}{
		{roleOperator, true, ""},
		{roleWorker, false, "in use by worker process " + strconv.Itoa(os.Getpid())},
	} {
		l, err := lockDataDir(cfg.DataDir, tc.holder)
		if err != nil {
			t.Fatal(err)
		}
		// Well under attachWait: a worker that waits runs into the deadline.
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		_, err = Connect(ctx, cfg, zerolog.New(io.Discard), "worker", true)
		cancel()
		l.release()
		var held *LockedError
		switch {
		case tc.waits && !errors.Is(err, context.DeadlineExceeded):
			t.Errorf("held by %s: %v, want the worker to wait (until its context ends)", tc.holder, err)
		case !tc.waits && (!errors.As(err, &held) || !strings.Contains(err.Error(), tc.message)):
			t.Errorf("held by %s: %v, want a refusal at once containing %q", tc.holder, err, tc.message)
		}
	}
}
