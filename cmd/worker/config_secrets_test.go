package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/keyworker/keyworker/consumer/consumertest"
)

// configRun is one start of the worker binary that ends at start-up.
type configRun struct {
	code           int
	stdout, stderr string
}

// runBinaryConfig starts the built worker with env on top of a clean
// base (no NATS_URL: nothing else is reachable) and waits for it to exit.
func runBinaryConfig(t *testing.T, env ...string) configRun {
	t.Helper()
	return runBinaryConfigArgs(t, nil, env...)
}

func runBinaryConfigArgs(t *testing.T, args []string, env ...string) configRun {
	t.Helper()
	cmd := exec.Command(procWorkerBin.build(t), append([]string{"run"}, args...)...)
	cmd.Dir = t.TempDir()
	base := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + cmd.Dir, "KEYWORKER_DATA_DIR=" + cmd.Dir, "KEYWORKER_HTTP_ADDR="}
	cmd.Env = append(base, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := configRun{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("running the worker: %v", err)
	}
	return r
}

// Start-up configuration errors name the variable and what is wrong, never
// the value: passwords in URLs, keys pasted into the wrong variable.
func TestConfig_ErrorsNeverEchoSecrets(t *testing.T) {
	procWorkerBin.build(t) // once here, so that -short skips the test rather than each case
	const (
		password = "Hunter2"
		key      = "seam_live_4f9aKq2Z7xWm"
		seed     = "SUAGMJH5XLGZKQQWAWKRZJIGMOU4HPFUYLXJMXOO5NLFEO2OOQJ5LPRDPM"
	)
	for _, tc := range []struct {
		name, variable string
		env            []string
	}{
		{"bad escape in the password", "NATS_URL", []string{"NATS_URL=nats://kw:" + password + "%zz@127.0.0.1:4222"}},
		{"comma in the password", "NATS_URL", []string{"NATS_URL=nats://kw:" + password + ",x@127.0.0.1:4222"}},
		{"second server bad", "NATS_URL", []string{"NATS_URL=nats://127.0.0.1:4222,kw:" + password + "@[::1"}},
		{"key as the endpoint", "SEAM_ENDPOINT", []string{"SEAM_ENDPOINT=" + key, "SEAM_API_KEY=" + key}},
		{"key as the endpoint, no key set", "SEAM_ENDPOINT", []string{"SEAM_ENDPOINT=" + key}},
		{"user info in the endpoint", "SEAM_ENDPOINT", []string{"SEAM_ENDPOINT=https://kw:" + password + "@connect.getseam.com", "SEAM_API_KEY=k"}},
		{"seed as the nkey file", "NATS_NKEY", []string{"NATS_NKEY=" + seed}},
		{"token as the creds file", "NATS_CREDS", []string{"NATS_CREDS=" + key}},
		{"key as the log level", "LOG_LEVEL", []string{"LOG_LEVEL=" + key}},
		{"key as the log format", "LOG_FORMAT", []string{"LOG_FORMAT=" + key}},
		{"key as the concurrency", "KEYWORKER_CONCURRENCY", []string{"KEYWORKER_CONCURRENCY=" + key}},
		{"key as the http address", "KEYWORKER_HTTP_ADDR", []string{"KEYWORKER_HTTP_ADDR=" + key}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runBinaryConfig(t, tc.env...)
			if r.code != 2 {
				t.Fatalf("exit code %d, want 2\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
			}
			for _, secret := range []string{password, key, seed, "4f9aKq2Z7xWm"} {
				if strings.Contains(r.stdout+r.stderr, secret) {
					t.Errorf("output shows the secret %q:\nstdout: %s\nstderr: %s", secret, r.stdout, r.stderr)
				}
			}
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], tc.variable+":") || r.stdout != "" {
				t.Errorf("want one line on stderr naming %s, got stdout %q stderr %q", tc.variable, r.stdout, r.stderr)
			}
		})
	}
}

// A password in a NATS URL that parses stays out of the connect error too.
func TestConfig_UnreachableNATSErrorHidesThePassword(t *testing.T) {
	r := runBinaryConfig(t, "NATS_URL=nats://kw:Hunter2@"+consumertest.FreeAddr(t))
	if r.code != 1 || !strings.Contains(r.stderr, "NATS_URL") || strings.Contains(r.stdout+r.stderr, "Hunter2") {
		t.Fatalf("exit %d, want 1 and an error naming NATS_URL without the password:\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// Plain http to a Seam that is not on loopback would send the key in clear.
func TestConfig_PlainHTTPSeamOffLoopbackIsRefusedUnlessAllowed(t *testing.T) {
	const key = "seam_test_Zq81xxPlain"
	// NATS at a closed loopback port: a configuration that passes fails
	// next at connecting, exit code 1, naming NATS_URL.
	nats := "NATS_URL=nats://" + consumertest.FreeAddr(t)

	r := runBinaryConfig(t, nats, "SEAM_ENDPOINT=http://seam.example.com", "SEAM_API_KEY="+key)
	if r.code != 2 || !strings.Contains(r.stderr, "SEAM_ENDPOINT:") || !strings.Contains(r.stderr, "KEYWORKER_ALLOW_INSECURE_SEAM") ||
		strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || strings.Contains(r.stderr, key) {
		t.Fatalf("http to a remote host: exit %d, want 2 and one line naming SEAM_ENDPOINT and the way to allow it:\n%s", r.code, r.stderr)
	}
	for _, allowed := range [][]string{
		{"SEAM_ENDPOINT=http://seam.example.com", "KEYWORKER_ALLOW_INSECURE_SEAM=true"},
		{"SEAM_ENDPOINT=http://10.0.0.7:8080", "--allow-insecure-seam"},
		{"SEAM_ENDPOINT=http://127.0.0.1:8080"},
		{"SEAM_ENDPOINT=http://localhost:8080"},
		{"SEAM_ENDPOINT=http://[::1]:8080"},
		{"SEAM_ENDPOINT=https://seam.example.com"},
	} {
		env := []string{nats, "SEAM_API_KEY=" + key}
		var args []string
		for _, a := range allowed {
			if strings.HasPrefix(a, "--") {
				args = append(args, a)
			} else {
				env = append(env, a)
			}
		}
		r := runBinaryConfigArgs(t, args, env...)
		if r.code != 1 || strings.Contains(r.stderr, "SEAM_ENDPOINT") || !strings.Contains(r.stderr, "NATS_URL") {
			t.Errorf("%v: exit %d, want 1 at connecting to NATS (the endpoint accepted):\n%s", allowed, r.code, r.stderr)
		}
	}
}
