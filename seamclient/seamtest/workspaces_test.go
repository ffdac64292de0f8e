package seamtest

import (
	"context"
	"errors"
	"testing"

	"github.com/keyworker/keyworker/seamclient"
)

func TestWorkspaces_EachKeyReachesItsOwnStateAndAPATNamesTheWorkspace(t *testing.T) {
	m := NewWorkspaces()
	grand, harbour := New(WithAutoCreate()), New(WithAutoCreate())
	m.Add("ws_grand", "key_grand", grand)
	m.Add("ws_harbour", "key_harbour", harbour)
	m.AddPersonalAccessToken("seam_at_pat")
	url, stop, err := m.Serve(t.Context(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stop(context.Background()) })
	client := func(key, ws string) *seamclient.Client {
		c, err := seamclient.New(url, key, seamclient.WithWorkspaceID(ws))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	req := seamclient.Request{ACSCredentialID: "11111111-1111-4111-8111-111111111111", ACSUserID: "22222222-2222-4222-8222-222222222222"}
	if _, err := client("key_grand", "").Assign(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	if !grand.IsAssigned(req.ACSCredentialID, req.ACSUserID) || harbour.IsAssigned(req.ACSCredentialID, req.ACSUserID) {
		t.Fatal("the grand's key did not change the grand's state alone")
	}
	if _, err := client("seam_at_pat", "ws_harbour").Assign(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	if !harbour.IsAssigned(req.ACSCredentialID, req.ACSUserID) || harbour.Calls("") != 1 {
		t.Fatal("a personal access token with seam-workspace ws_harbour did not reach the harbour")
	}
	for _, tc := range []struct {
		name, key, ws string
		status        int
	}{
		{"unknown key", "key_nobody", "", 401},
		{"key of another workspace than the header's", "key_grand", "ws_harbour", 401},
		{"personal access token without the header", "seam_at_pat", "", 400},
		{"personal access token naming no workspace", "seam_at_pat", "ws_nowhere", 401},
	} {
		_, err := client(tc.key, tc.ws).Get(t.Context(), req.ACSCredentialID)
		var api *seamclient.APIError
		if !errors.As(err, &api) || api.StatusCode != tc.status {
			t.Errorf("%s: %v, want %d", tc.name, err, tc.status)
		}
	}
}
