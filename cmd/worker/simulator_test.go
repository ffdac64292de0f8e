package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keyworker/keyworker/cmd/worker/internal/cli"
	"github.com/keyworker/keyworker/cmd/worker/internal/simulator"
	"github.com/keyworker/keyworker/seamclient"
)

const (
	simCred = "6f3c1a52-8d4e-4b7a-9c21-3e5f7a9b1c77"
	simUser = "2b7e9d14-5a3c-4f8e-b1d2-7c9a0e4f6a77"
)

// simulatorProcess is a `worker seam-simulator` running in a goroutine.
type simulatorProcess struct {
	url   string
	lines chan string   // stdout after the first line
	done  chan struct{} // closed when the command returned
	err   error         // what it returned, once done
	stop  context.CancelFunc
}

// wait waits up to d for the command to return and gives its error.
func (p *simulatorProcess) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		t.Fatalf("simulator did not stop within %s", d)
		return nil
	}
}

// startSimulatorCmd runs the seam-simulator command on a free loopback port
// and waits for the line announcing its URL.
func startSimulatorCmd(t *testing.T, args ...string) *simulatorProcess {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	pr, pw := io.Pipe()
	p := &simulatorProcess{lines: make(chan string, 16), done: make(chan struct{}), stop: cancel}
	go func() {
		p.err = run(ctx, append([]string{"seam-simulator", "--addr", "127.0.0.1:0"}, args...), nil, pw, io.Discard)
		_ = pw.Close()
		close(p.done)
	}()
	first := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for n := 0; sc.Scan(); n++ {
			if n == 0 {
				first <- sc.Text()
				continue
			}
			p.lines <- sc.Text()
		}
		close(first)
		close(p.lines)
	}()
	t.Cleanup(func() {
		cancel()
		<-p.done
	})
	select {
	case line, ok := <-first:
		if !ok {
			t.Fatalf("simulator exited before listening: %v", p.wait(t, time.Second))
		}
		_, rest, found := strings.Cut(line, "http://")
		if !found {
			t.Fatalf("first line names no URL: %q", line)
		}
		p.url = "http://" + strings.Fields(rest)[0]
	case <-time.After(10 * time.Second):
		t.Fatal("simulator did not announce its URL within 10 s")
	}
	return p
}

// inspect GETs an inspection path with key as bearer token and decodes the JSON answer into v.
func (p *simulatorProcess) inspect(t *testing.T, path, key string, v any) int {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, p.url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if v != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, v); err != nil {
			t.Fatalf("GET %s: %v: %s", path, err, body)
		}
	}
	return resp.StatusCode
}

func TestSeamSimulator_AppliesAssignAndReportsStateToInspection(t *testing.T) {
	p := startSimulatorCmd(t, "--api-key", "sim-key", "--inspect", "--latency", "1ms")
	c, err := seamclient.New(p.url, "sim-key")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Assign(t.Context(), seamclient.Request{ACSCredentialID: simCred, ACSUserID: simUser})
	if err != nil {
		t.Fatalf("assign: %v", err)
	}
	if !strings.Contains(string(resp.Credential), simUser) {
		t.Fatalf("assign answer does not name the holder: %s", resp.Credential)
	}

	var assigned struct {
		Assigned bool `json:"assigned"`
		Effects  int  `json:"effects"`
	}
	if code := p.inspect(t, "/_fake/assigned?credential="+simCred+"&user="+simUser, "sim-key", &assigned); code != http.StatusOK {
		t.Fatalf("/_fake/assigned: status %d", code)
	}
	if !assigned.Assigned || assigned.Effects != 1 {
		t.Fatalf("/_fake/assigned = %+v, want assigned with 1 effect", assigned)
	}
	var cred map[string]any
	if code := p.inspect(t, "/_fake/credentials/"+simCred, "sim-key", &cred); code != http.StatusOK {
		t.Fatalf("/_fake/credentials: status %d", code)
	}
	if cred["acs_user_id"] != simUser || cred["is_latest_desired_state_synced_with_provider"] != true {
		t.Fatalf("credential = %v, want held by %s and synced", cred, simUser)
	}
	if code := p.inspect(t, "/_fake/credentials/00000000-0000-4000-8000-000000000000", "sim-key", nil); code != http.StatusNotFound {
		t.Fatalf("unknown credential: status %d, want 404", code)
	}
	var stats simulator.Stats
	p.inspect(t, "/_fake/stats", "sim-key", &stats)
	if stats.Calls["assign"] != 1 || stats.Calls["total"] != 1 || stats.Effects != 1 {
		t.Fatalf("stats = %+v, want one assign call and one effect", stats)
	}

	p.stop()
	if err := p.wait(t, 10*time.Second); err != nil {
		t.Fatalf("simulator ended with %v, want nil on interrupt", err)
	}
	if last, ok := <-p.lines; !ok || !strings.Contains(last, "stopped") {
		t.Fatalf("last line %q, want the simulator to say it stopped", last)
	}
}

func TestSeamSimulator_RefusesOtherAPIKeysOnSeamAndInspectionEndpoints(t *testing.T) {
	p := startSimulatorCmd(t, "--api-key", "sim-key", "--inspect")
	c, err := seamclient.New(p.url, "not-the-key")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Assign(t.Context(), seamclient.Request{ACSCredentialID: simCred, ACSUserID: simUser})
	var api *seamclient.APIError
	if !errors.As(err, &api) || api.StatusCode != http.StatusUnauthorized {
		t.Fatalf("assign with another key: %v, want a 401 APIError", err)
	}
	if code := p.inspect(t, "/_fake/stats", "not-the-key", nil); code != http.StatusUnauthorized {
		t.Fatalf("inspection with another key: status %d, want 401", code)
	}
}

func TestSeamSimulator_TakesTheAPIKeyFromSEAM_API_KEY(t *testing.T) {
	t.Setenv("SEAM_API_KEY", "env-key")
	p := startSimulatorCmd(t)
	c, err := seamclient.New(p.url, "other")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Get(t.Context(), simCred)
	var api *seamclient.APIError
	if !errors.As(err, &api) || api.StatusCode != http.StatusUnauthorized {
		t.Fatalf("get with a key other than $SEAM_API_KEY: %v, want 401", err)
	}
}

func TestSeamSimulator_ServesNoInspectionUnlessAsked(t *testing.T) {
	p := startSimulatorCmd(t)
	if code := p.inspect(t, "/_fake/stats", "", nil); code != http.StatusNotFound {
		t.Fatalf("/_fake/stats without --inspect: status %d, want 404", code)
	}
}

func TestSeamSimulator_InjectsPermanentFaultsAtRateOne(t *testing.T) {
	p := startSimulatorCmd(t, "--permanent-rate", "1")
	c, err := seamclient.New(p.url, "any")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Assign(t.Context(), seamclient.Request{ACSCredentialID: simCred, ACSUserID: simUser})
	var api *seamclient.APIError
	if !errors.As(err, &api) || api.StatusCode != http.StatusBadRequest || api.Type != "invalid_input" {
		t.Fatalf("assign at permanent rate 1: %v, want 400 invalid_input", err)
	}
}

func TestSeamSimulator_PlaysProviderSync(t *testing.T) {
	synced := func(t *testing.T, raw []byte) (string, string) {
		t.Helper()
		var c struct {
			Synced *bool `json:"is_latest_desired_state_synced_with_provider"`
			Errors []struct {
				Code string `json:"error_code"`
			} `json:"errors"`
		}
		if err := json.Unmarshal(raw, &c); err != nil || c.Synced == nil {
			t.Fatalf("credential %s: %v", raw, err)
		}
		code := ""
		if len(c.Errors) > 0 {
			code = c.Errors[0].Code
		}
		return fmt.Sprint(*c.Synced), code
	}
	req := seamclient.Request{ACSCredentialID: simCred, ACSUserID: simUser}
	t.Run("delay", func(t *testing.T) {
		p := startSimulatorCmd(t, "--sync-delay", "1h")
		c, _ := seamclient.New(p.url, "any")
		resp, err := c.Assign(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		if s, _ := synced(t, resp.Credential); s != "false" {
			t.Fatalf("assign answer synced=%s with --sync-delay 1h", s)
		}
		got, err := c.Get(t.Context(), simCred)
		if err != nil {
			t.Fatal(err)
		}
		if s, _ := synced(t, got.Credential); s != "false" {
			t.Fatalf("get synced=%s with --sync-delay 1h", s)
		}
	})
	t.Run("failure", func(t *testing.T) {
		p := startSimulatorCmd(t, "--sync-fail", "provider_rejected", "--empty-success")
		c, _ := seamclient.New(p.url, "any")
		resp, err := c.Assign(t.Context(), req)
		if err != nil || resp.Credential != nil {
			t.Fatalf("assign with --empty-success: %v, credential %s, want {}", err, resp.Credential)
		}
		got, err := c.Get(t.Context(), simCred)
		if err != nil {
			t.Fatal(err)
		}
		if s, code := synced(t, got.Credential); s != "false" || code != "provider_rejected" {
			t.Fatalf("get: synced=%s error %q, want unsynced with provider_rejected", s, code)
		}
	})
}

func TestSeamSimulator_BadFlagIsAUsageErrorNamingIt(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--transient-rate", "1.5"}, "--transient-rate"},
		{[]string{"--permanent-rate", "-0.1"}, "--permanent-rate"},
		{[]string{"--transient-rate", "0.6", "--applied-then-drop-rate", "0.6"}, "add up to"},
		{[]string{"--addr", "no-port"}, "--addr"},
		{[]string{"--latency", "-1s"}, "--latency"},
		{[]string{"--sync-delay", "-1s"}, "--sync-delay"},
		{[]string{"--latency", "soon"}, "latency"},
		{[]string{"extra"}, "extra"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			err := run(t.Context(), append([]string{"seam-simulator"}, tc.args...), nil, io.Discard, io.Discard)
			var u *cli.UsageError
			if !errors.As(err, &u) || cli.ExitCode(err) != 2 {
				t.Fatalf("err = %v, want a usage error (exit 2)", err)
			}
			if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("err = %q, want one line naming %s", err, tc.want)
			}
		})
	}
}

func TestSeamSimulator_HelpPrintsUsageAndExitsZero(t *testing.T) {
	var out strings.Builder
	if err := run(t.Context(), []string{"seam-simulator", "--help"}, nil, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Usage: worker seam-simulator", "-transient-rate", "-inspect"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, out.String())
		}
	}
}

func TestSeamSimulator_RehearsesSeamsBadDays(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		status int
	}{
		{[]string{"--down", "503"}, http.StatusServiceUnavailable},
		{[]string{"--refuse-key"}, http.StatusUnauthorized},
	} {
		p := startSimulatorCmd(t, tc.args...)
		c, err := seamclient.New(p.url, "any")
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Assign(t.Context(), seamclient.Request{ACSCredentialID: simCred, ACSUserID: simUser})
		var api *seamclient.APIError
		if !errors.As(err, &api) || api.StatusCode != tc.status {
			t.Errorf("%v: assign: %v, want %d", tc.args, err, tc.status)
		}
	}
	p := startSimulatorCmd(t, "--rate-limit", "1")
	c, err := seamclient.New(p.url, "any")
	if err != nil {
		t.Fatal(err)
	}
	limited := 0
	for range 5 {
		_, err := c.Get(t.Context(), simCred)
		if after, ok := seamclient.RetryAfter(err); ok && after >= time.Second {
			limited++
		}
	}
	if limited < 3 {
		t.Errorf("%d of 5 calls at once answered 429 with Retry-After under --rate-limit 1, want at least 3", limited)
	}
}

func TestSeamSimulator_ServesEachWorkspaceWithItsOwnKeyAndState(t *testing.T) {
	p := startSimulatorCmd(t, "--workspace", "ws_grand=sim-grand", "--workspace", "ws_harbour=sim-harbour", "--pat", "seam_at_group")
	client := func(key, ws string) *seamclient.Client {
		c, err := seamclient.New(p.url, key, seamclient.WithWorkspaceID(ws))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	req := seamclient.Request{ACSCredentialID: simCred, ACSUserID: simUser}
	if _, err := client("sim-grand", "ws_grand").Assign(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	held := func(key, ws string) string {
		resp, err := client(key, ws).Get(t.Context(), simCred)
		if err != nil {
			t.Fatalf("get in %s: %v", ws, err)
		}
		cred, _ := seamclient.ParseCredential(resp.Credential)
		return cred.ACSUserID
	}
	if got := held("sim-grand", "ws_grand"); got != simUser {
		t.Errorf("ws_grand: held by %q, want %s", got, simUser)
	}
	if got := held("seam_at_group", "ws_harbour"); got != "" {
		t.Errorf("ws_harbour shares ws_grand's state: held by %q", got)
	}
	var api *seamclient.APIError
	if _, err := client("sim-grand", "ws_harbour").Get(t.Context(), simCred); !errors.As(err, &api) || api.StatusCode != 401 {
		t.Errorf("ws_grand's key for ws_harbour: %v, want 401", err)
	}
}
