package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyworker/keyworker/cmd/worker/internal/cli"
	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/consumer/consumertest"
	"github.com/keyworker/keyworker/consumer/embedded/natstest"
	"github.com/keyworker/keyworker/schemas"
)

func TestDemo_PrintsEveryOutcomeAndExitsZero(t *testing.T) {
	var out, errs bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := run(ctx, []string{"demo"}, nil, &out, &errs); err != nil {
		t.Fatalf("demo: %v\n%s\n%s", err, out.String(), errs.String())
	}
	text := out.String()
	for _, want := range []string{
		"credential.assigned",
		"credential.unassigned",
		"credential.skipped  reason=checked_out, superseded by evt-ana-out",
		"kind=invalid_event",
		"kind=permanent",
		"acs_credential_not_found",
		"changed hands 2 times",
		"provider_sync=synced",
		"provider_sync=failed (provider_rejected)",
		"provider_sync=pending",
		"[ws_harbour_inn]",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("demo output lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "no outcome") {
		t.Fatalf("an event had no outcome:\n%s", text)
	}
}

func TestConfig_BadValueIsOneLineNamingTheVariable(t *testing.T) {
	for _, tc := range []struct{ env, value, want string }{
		{"KEYWORKER_CONCURRENCY", "lots", "KEYWORKER_CONCURRENCY"},
		{"KEYWORKER_CONCURRENCY", "0", "KEYWORKER_CONCURRENCY"},
		{"LOG_FORMAT", "xml", "LOG_FORMAT"},
		{"NATS_URL", "::not a url", "NATS_URL"},
		{"SEAM_ENDPOINT", "ftp://x", "SEAM_ENDPOINT"},
		{"KEYWORKER_SEAM_RPS", "-1", "KEYWORKER_SEAM_RPS"},
		{"KEYWORKER_AWAIT_SYNC", "-1s", "KEYWORKER_AWAIT_SYNC"},
		{"KEYWORKER_AWAIT_SYNC", "soon", "KEYWORKER_AWAIT_SYNC"},
		{"NATS_CREDS", "/does/not/exist.creds", "NATS_CREDS"},
	} {
		t.Run(tc.env+"="+tc.value, func(t *testing.T) {
			t.Setenv(tc.env, tc.value)
			t.Setenv("KEYWORKER_DATA_DIR", t.TempDir())
			err := run(t.Context(), []string{"run"}, nil, io.Discard, io.Discard)
			var u *cli.UsageError
			if !errors.As(err, &u) {
				t.Fatalf("want a usage error, got %v", err)
			}
			if msg := err.Error(); !strings.Contains(msg, tc.want) || strings.Contains(msg, "\n") {
				t.Fatalf("error %q must be one line naming %s", msg, tc.want)
			}
			if cli.ExitCode(err) != 2 {
				t.Fatalf("exit code %d, want 2", cli.ExitCode(err))
			}
		})
	}
}

func TestConnect_UnreachableNATSIsOneClearLine(t *testing.T) {
	t.Setenv("NATS_URL", "nats://"+consumertest.FreeAddr(t))
	t.Setenv("KEYWORKER_HTTP_ADDR", "")
	err := run(t.Context(), []string{"run"}, nil, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "NATS_URL") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("want one line naming NATS_URL, got %v", err)
	}
}

func TestRun_EmbeddedDefaultsReadyThenStopsOnSIGTERM(t *testing.T) {
	bin := procWorkerBin.build(t)
	addr := consumertest.FreeAddr(t)
	cmd := exec.Command(bin)
	cmd.Dir = t.TempDir() // ./data is created here: the embedded default
	cmd.Env = append(os.Environ(), "KEYWORKER_HTTP_ADDR="+addr, "NATS_URL=", "SEAM_API_KEY=", "KEYWORKER_DATA_DIR=")
	var logs consumertest.LockedBuffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	natstest.WaitFor(t, 60*time.Second, func() error { // polling the probe, as a kubelet would
		select {
		case err := <-exited:
			t.Fatalf("worker exited before ready: %v\n%s", err, logs.String())
		default:
		}
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return fmt.Errorf("not ready: %w\n%s", err, logs.String())
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"ready":true`) {
			return fmt.Errorf("not ready: %d %s\n%s", resp.StatusCode, body, logs.String())
		}
		return nil
	})
	if !strings.Contains(logs.String(), "SIMULATOR") {
		t.Fatalf("the simulator must be announced at start:\n%s", logs.String())
	}
	if _, err := os.Stat(filepath.Join(cmd.Dir, "data", "jetstream")); err != nil {
		t.Fatalf("embedded store not under ./data: %v", err)
	}

	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("still running 30 s after SIGTERM:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "keyworker stopped") {
		t.Fatalf("no clean stop logged:\n%s", logs.String())
	}
	t.Logf("stopped %s after SIGTERM", time.Since(start).Round(time.Millisecond))
}

func TestPublish_PutsAValidEventOnTheStream(t *testing.T) {
	_, url := natstest.StartTest(t)
	t.Setenv("NATS_URL", url)
	_, js := natstest.ConnectTest(t, url)
	consumertest.Provision(t, js, consumer.Config{})
	var out bytes.Buffer
	err := run(t.Context(), []string{"publish", "checkout", "--credential", "66666666-6666-4666-8666-666666666666",
		"--user-identity", "44444444-4444-4444-8444-444444444444", "--reservation", "R-7"}, nil, &out, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := js.Stream(t.Context(), "GUEST_EVENTS")
	m, err := s.GetLastMsgForSubject(t.Context(), "guest.checked_out")
	if err != nil {
		t.Fatal(err)
	}
	v, _ := schemas.NewValidator()
	ev, err := v.DecodeGuestEvent("guest.checked_out", m.Data)
	if err != nil || ev.Data.UserIdentityID != "44444444-4444-4444-8444-444444444444" || ev.Subject != "R-7" {
		t.Fatalf("published event: %v %+v", err, ev)
	}
	if !strings.Contains(out.String(), "published guest.checked_out") {
		t.Fatalf("output: %s", out.String())
	}

	err = run(t.Context(), []string{"publish", "checkin", "--credential", "not-a-uuid", "--user", "x"}, nil, io.Discard, io.Discard)
	var u *cli.UsageError
	if !errors.As(err, &u) {
		t.Fatalf("an invalid event must be refused before publishing, got %v", err)
	}
}
