package cli

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The example in deploy/ is a file the worker accepts, read the way it documents.
func TestLoadWorkspaces_TheDeployExampleLoads(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "..", "..", "deploy", "workspaces.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "harbour")
	if err := os.WriteFile(keyFile, []byte("seam_key_harbour\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "workspaces.yaml")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(raw), "/run/secrets/seam/harbour", keyFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"SEAM_KEY_GRAND": "seam_key_grand", "SEAM_PAT": "seam_at_pat"}
	specs, err := LoadWorkspaces(path, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if len(specs) != 3 {
		t.Fatalf("%d workspaces, want 3", len(specs))
	}
	want := []struct {
		id, key string
		rps     float64
		props   int
		def     bool
	}{
		{"ws_grand_hotel", "seam_key_grand", 0, 2, false},
		{"ws_harbour_inn", "seam_key_harbour", 5, 1, false},
		{"ws_group", "seam_at_pat", 0, 0, true},
	}
	for i, w := range want {
		s := specs[i]
		if s.ID != w.id || s.APIKey != w.key || s.SeamRPS != w.rps || len(s.Properties) != w.props || s.Default != w.def {
			t.Errorf("workspace %d: %+v, want %+v", i+1, s, w)
		}
	}
}

// A routed workspace's key is held to SEAM_ENDPOINT's rule: no plain http
// to another host unless allowed, whether the endpoint is its own or
// SEAM_ENDPOINT.
func TestLoadRouting_PlainHTTPOffLoopbackIsRefusedUnlessAllowed(t *testing.T) {
	const key = "seam_test_Zq81xxRouted"
	env := func(string) string { return key }
	file := func(endpoint string) string {
		path := filepath.Join(t.TempDir(), "workspaces.yaml")
		doc := "workspaces:\n  - workspace_id: ws_a\n    api_key_env: KEY_A\n    default: true\n"
		if endpoint != "" {
			doc += "    endpoint: " + endpoint + "\n"
		}
		if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	for _, tc := range []struct {
		name, own, seamEndpoint string
		allow, refused          bool
	}{
		{"its own endpoint in clear", "http://seam.lan", "", false, true},
		{"SEAM_ENDPOINT in clear", "", "http://10.0.0.7:8080", false, true},
		{"allowed", "http://seam.lan", "", true, false},
		{"loopback", "http://127.0.0.1:8080", "", false, false},
		{"https", "https://seam.example.com", "http://10.0.0.7", false, false},
		{"the default endpoint", "", "", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Config{Workspaces: file(tc.own), SeamEndpoint: tc.seamEndpoint, AllowInsecureSeam: tc.allow}
			_, err := c.LoadRouting(env)
			var usage *UsageError
			if got := errors.As(err, &usage); got != tc.refused || (err != nil && !tc.refused) {
				t.Fatalf("err = %v, want refused %v", err, tc.refused)
			}
			if tc.refused && (!strings.Contains(err.Error(), "ws_a") || strings.Contains(err.Error(), key)) {
				t.Fatalf("refusal %q: want the workspace named, the key not shown", err)
			}
		})
	}
}
