package cli

import (
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
