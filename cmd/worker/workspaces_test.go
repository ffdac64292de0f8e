package main

import (
	"bytes"
	"context"
	"encoding/json"
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

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/consumer/consumertest"
	"github.com/keyworker/keyworker/consumer/dlq"
	"github.com/keyworker/keyworker/consumer/embedded/natstest"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

func TestWorkspaces_BadRoutingFileIsRefusedWithOneLine(t *testing.T) {
	bin := procWorkerBin.build(t)
	const secret = "seam_live_Zq8xSECRETsecret42"
	for _, tc := range []struct {
		name, file string
		want       []string
	}{
		{"inline secret", `{"workspaces": [{"workspace_id": "ws_grand", "api_key": "` + secret + `", "properties": ["grand-hotel"]}]}`,
			[]string{"ws_grand", `"api_key"`, "api_key_env"}},
		{"secret pasted as the variable", `{"workspaces": [{"workspace_id": "ws_grand", "api_key_env": "` + secret + `-x", "properties": ["grand-hotel"]}]}`,
			[]string{"ws_grand", "api_key_env"}},
		{"duplicate property", "workspaces:\n  - workspace_id: ws_grand\n    api_key_env: KEY_GRAND\n    properties: [grand-hotel]\n  - workspace_id: ws_harbour\n    api_key_env: KEY_GRAND\n    properties: [harbour-inn, grand-hotel]\n",
			[]string{"ws_harbour", `"grand-hotel"`, "ws_grand"}},
		{"missing variable", `{"workspaces": [{"workspace_id": "ws_grand", "api_key_env": "KEY_NOBODY_SET", "default": true}]}`,
			[]string{"ws_grand", "KEY_NOBODY_SET", "not set"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "workspaces.yaml")
			if err := os.WriteFile(path, []byte(tc.file), 0o600); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(bin, "run")
			cmd.Env = append(os.Environ(), "KEYWORKER_WORKSPACES="+path, "KEY_GRAND="+secret, "KEY_NOBODY_SET=",
				"SEAM_API_KEY=", "SEAM_WORKSPACE_ID=", "NATS_URL=", "KEYWORKER_DATA_DIR="+t.TempDir(), "KEYWORKER_HTTP_ADDR="+consumertest.FreeAddr(t))
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 2 {
				t.Fatalf("exit %v, want code 2\n%s", err, out)
			}
			text := strings.TrimSpace(string(out))
			if strings.Contains(text, "\n") || !strings.Contains(text, "KEYWORKER_WORKSPACES") {
				t.Fatalf("want one line naming KEYWORKER_WORKSPACES, got:\n%s", text)
			}
			for _, w := range tc.want {
				if !strings.Contains(text, w) {
					t.Errorf("%q does not say %s", text, w)
				}
			}
			if strings.Contains(text, "Zq8x") {
				t.Fatalf("the secret is printed: %s", text)
			}
		})
	}
}

// TestWorkspaces_UnknownPropertyIsReplayedOnceTheReloadedFileHasIt is the
// operator's path: an event of a property the routing lacks is
// dead-lettered naming it; a bad new file is refused and the old routing
// stays; a good one is picked up on SIGHUP; dlq replay --property then
// assigns the credential in the new workspace.
func TestWorkspaces_UnknownPropertyIsReplayedOnceTheReloadedFileHasIt(t *testing.T) {
	_, url := natstest.StartTest(t)
	_, js := natstest.ConnectTest(t, url)
	grand := seamtest.NewServer(seamtest.WithAutoCreate(), seamtest.WithAPIKey("seam_key_grand"))
	t.Cleanup(grand.Close)
	lodge := seamtest.NewServer(seamtest.WithAutoCreate(), seamtest.WithAPIKey("seam_key_lodge"))
	t.Cleanup(lodge.Close)

	entry := func(id, env, endpoint, property string) string {
		return fmt.Sprintf(`{"workspace_id": %q, "api_key_env": %q, "endpoint": %q, "properties": [%q]}`, id, env, endpoint, property)
	}
	path := filepath.Join(t.TempDir(), "workspaces.json")
	write := func(entries ...string) {
		t.Helper()
		if err := os.WriteFile(path+".new", []byte(`{"workspaces": [`+strings.Join(entries, ", ")+`]}`), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".new", path); err != nil {
			t.Fatal(err)
		}
	}
	write(entry("ws_grand", "KEY_GRAND", grand.URL, "grand-hotel"))

	w := procNewWorker(t, "NATS_URL="+url, "KEYWORKER_WORKSPACES="+path,
		"KEY_GRAND=seam_key_grand", "KEY_LODGE=seam_key_lodge", "SEAM_API_KEY=", "SEAM_WORKSPACE_ID=", "LOG_LEVEL=info")
	w.start()
	logged := func(what string, n int) {
		t.Helper()
		natstest.WaitFor(t, 30*time.Second, func() error {
			logs := strings.Join(w.logLines(), "\n")
			if got := strings.Count(logs, what); got < n {
				return fmt.Errorf("%d log lines %q, want %d:\n%s", got, what, n, logs)
			}
			return nil
		})
	}
	logged("keyworker ready", 1)

	d := schemas.GuestData{
		ACSCredentialID: "66666666-6666-4666-8666-000000000007",
		ACSUserID:       "33333333-3333-4333-8333-000000000007",
		PropertyID:      "seaside-lodge",
	}
	doc, err := schemas.NewEnvelope(schemas.SubjectCheckedIn, "pms://group", "evt-lodge-1", "", time.Now(), d)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(t.Context(), schemas.SubjectCheckedIn, doc); err != nil {
		t.Fatal(err)
	}
	dl := waitStreamMsg(t, js, consumer.DefaultDeadLetterStream, 1)
	_, letter, err := schemas.DecodeDeadLetterEvent(dl.Data)
	if err != nil {
		t.Fatal(err)
	}
	if letter.Error.Kind != schemas.ErrorKindPermanent || !strings.Contains(letter.Error.Message, `"seaside-lodge"`) {
		t.Fatalf("dead letter %s %q, want permanent naming the property", letter.Error.Kind, letter.Error.Message)
	}

	// A bad file keeps the old routing, and says why.
	write(entry("ws_grand", "KEY_GRAND", grand.URL, "grand-hotel"), entry("ws_lodge", "KEY_LODGE", lodge.URL, "grand-hotel"))
	if err := w.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	logged("routing file refused", 1)
	write(entry("ws_grand", "KEY_GRAND", grand.URL, "grand-hotel"), entry("ws_lodge", "KEY_LODGE", lodge.URL, "seaside-lodge"))
	if err := w.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	logged("workspace routing loaded", 2)

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := run(ctx, []string{"dlq", "replay", "--property", "seaside-lodge", "--yes", "--nats-url", url}, nil, io.Discard, io.Discard); err != nil {
		t.Fatalf("dlq replay --property: %v", err)
	}
	res := waitStreamMsg(t, js, consumer.DefaultResultsStream, 1)
	if res.Subject != schemas.SubjectAssigned || !strings.Contains(string(res.Data), `"workspace_id":"ws_lodge"`) {
		t.Fatalf("after the replay: %s %s, want credential.assigned in ws_lodge", res.Subject, res.Data)
	}
	if !lodge.IsAssigned(d.ACSCredentialID, d.ACSUserID) || grand.Calls("") != 0 {
		t.Fatalf("lodge assigned %v, grand got %d calls", lodge.IsAssigned(d.ACSCredentialID, d.ACSUserID), grand.Calls(""))
	}
	for _, r := range lodge.Requests() {
		if r.Header.Get("seam-workspace") != "ws_lodge" {
			t.Errorf("request to the lodge with seam-workspace %q", r.Header.Get("seam-workspace"))
		}
	}

	var out bytes.Buffer
	if err := run(ctx, []string{"status", "--by-workspace", "--json", "--nats-url", url}, nil, &out, io.Discard); err != nil {
		t.Fatalf("status: %v", err)
	}
	var st dlq.Status
	if err := json.Unmarshal(out.Bytes(), &st); err != nil {
		t.Fatal(err)
	}
	if st.DeadLetters.ByWorkspace["none"] != 1 || st.Results == nil || st.Results.ByWorkspace["ws_lodge"] != 1 || st.Results.Total != 1 {
		t.Errorf("status by workspace: dead letters %v, results %+v; want the unrouted dead letter and ws_lodge's result", st.DeadLetters.ByWorkspace, st.Results)
	}

	// One workspace refusing its key: still ready, the other one named.
	grand.SetRefuseKey(true)
	g := schemas.GuestData{ACSCredentialID: "66666666-6666-4666-8666-000000000008", ACSUserID: d.ACSUserID, PropertyID: "grand-hotel"}
	doc, err = schemas.NewEnvelope(schemas.SubjectCheckedIn, "pms://group", "evt-grand-1", "", time.Now(), g)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(t.Context(), schemas.SubjectCheckedIn, doc); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 30*time.Second, func() error {
		resp, err := http.Get("http://" + w.httpAddr + "/readyz")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"unhealthy_workspaces":["seam_unauthorized: workspace ws_grand:`) {
			return fmt.Errorf("/readyz %d %s, want 200 naming ws_grand unauthorized", resp.StatusCode, body)
		}
		return nil
	})
	grand.SetRefuseKey(false)
	if res := waitStreamMsg(t, js, consumer.DefaultResultsStream, 2); !strings.Contains(string(res.Data), `"workspace_id":"ws_grand"`) {
		t.Fatalf("after ws_grand took its key again: %s", res.Data)
	}
}

// waitStreamMsg waits for the stream's seq-th message and returns it.
func waitStreamMsg(t *testing.T, js jetstream.JetStream, stream string, seq uint64) *jetstream.RawStreamMsg {
	t.Helper()
	var m *jetstream.RawStreamMsg
	natstest.WaitFor(t, 30*time.Second, func() error {
		s, err := js.Stream(context.Background(), stream)
		if err != nil {
			return err
		}
		m, err = s.GetMsg(context.Background(), seq)
		return err
	})
	return m
}
