package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"
)

// WorkspaceSpec is one entry of the routing file KEYWORKER_WORKSPACES
// names, with its API key read. APIKey is a secret: never print it.
type WorkspaceSpec struct {
	ID         string
	APIKey     string
	Endpoint   string // empty: SEAM_ENDPOINT
	SeamRPS    float64
	Properties []string
	Default    bool
}

// workspaceEntry is an entry as written in the file.
type workspaceEntry struct {
	WorkspaceID string   `json:"workspace_id"`
	APIKeyEnv   string   `json:"api_key_env"`
	APIKeyFile  string   `json:"api_key_file"`
	Endpoint    string   `json:"endpoint"`
	SeamRPS     float64  `json:"seam_rps"`
	Properties  []string `json:"properties"`
	Default     bool     `json:"default"`
}

// inlineSecrets are keys that would hold a secret in the file itself.
var inlineSecrets = []string{"api_key", "apikey", "key", "token", "secret", "password", "seam_api_key"}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// LoadWorkspaces reads the routing file at path (YAML or JSON: a list
// under "workspaces") and each workspace's API key from the variable or
// file the entry names. Errors are one line naming the entry and never
// quote a value that could be a secret.
func LoadWorkspaces(path string, getenv func(string) string) ([]WorkspaceSpec, error) {
	bad := func(format string, a ...any) error {
		return &UsageError{Msg: "KEYWORKER_WORKSPACES: " + path + ": " + fmt.Sprintf(format, a...)}
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, bad("cannot read the file (%s)", fsReason(err))
	}
	// YAML is a superset of JSON: read either into plain values, then
	// decode strictly as JSON, so unknown keys are refused the same way.
	var doc any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, bad("not YAML or JSON (%s)", yamlReason(err))
	}
	top, ok := doc.(map[string]any)
	if !ok {
		return nil, bad(`want a mapping with a "workspaces" list`)
	}
	for k := range top {
		if k != "workspaces" {
			return nil, bad("unknown key %q (want only \"workspaces\")", k)
		}
	}
	list, ok := top["workspaces"].([]any)
	if !ok || len(list) == 0 {
		return nil, bad(`"workspaces" must be a non-empty list`)
	}
	var specs []WorkspaceSpec
	ids, props := map[string]int{}, map[string]string{}
	def := ""
	for i, item := range list {
		name := fmt.Sprintf("workspace %d", i+1)
		fields, ok := item.(map[string]any)
		if !ok {
			return nil, bad("%s: want a mapping", name)
		}
		if id, ok := fields["workspace_id"].(string); ok && id != "" {
			name = fmt.Sprintf("workspace %d (%s)", i+1, id)
		}
		for k := range fields {
			for _, s := range inlineSecrets {
				if strings.EqualFold(k, s) {
					return nil, bad("%s: %q holds a secret in the file: refused; name an environment variable (api_key_env) or a file (api_key_file) instead", name, k)
				}
			}
		}
		b, _ := json.Marshal(fields)
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		var e workspaceEntry
		if err := dec.Decode(&e); err != nil {
			return nil, bad("%s: %s", name, jsonReason(err))
		}
		switch {
		case e.WorkspaceID == "":
			return nil, bad("%s: workspace_id is missing", name)
		case strings.ContainsFunc(e.WorkspaceID, func(r rune) bool { return r < 0x21 || r == 0x7f }):
			return nil, bad("%s: workspace_id has spaces or control characters", name)
		case ids[e.WorkspaceID] != 0:
			return nil, bad("%s: workspace_id is also workspace %d's", name, ids[e.WorkspaceID])
		case (e.APIKeyEnv == "") == (e.APIKeyFile == ""):
			return nil, bad("%s: give exactly one of api_key_env and api_key_file", name)
		case e.SeamRPS < 0:
			return nil, bad("%s: seam_rps %v must not be negative", name, e.SeamRPS)
		case len(e.Properties) == 0 && !e.Default:
			return nil, bad("%s: no properties and not the default: it would get no event", name)
		case e.Default && def != "":
			return nil, bad("%s: %s is the default already", name, def)
		}
		if e.Endpoint != "" {
			if u, err := url.Parse(e.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
				return nil, bad("%s: endpoint is not an http(s) URL without credentials", name)
			}
		}
		ids[e.WorkspaceID] = i + 1
		if e.Default {
			def = name
		}
		for _, p := range e.Properties {
			if p == "" {
				return nil, bad("%s: an empty property", name)
			}
			if other, dup := props[p]; dup {
				return nil, bad("%s: property %q is also routed by %s", name, p, other)
			}
			props[p] = name
		}
		key, err := readKey(e, getenv)
		if err != nil {
			return nil, bad("%s: %s", name, err)
		}
		specs = append(specs, WorkspaceSpec{ID: e.WorkspaceID, APIKey: key, Endpoint: e.Endpoint, SeamRPS: e.SeamRPS, Properties: e.Properties, Default: e.Default})
	}
	return specs, nil
}

// readKey reads the entry's API key. A value that is not a variable name
// may be a key pasted in by mistake: it is not quoted.
func readKey(e workspaceEntry, getenv func(string) string) (string, error) {
	if e.APIKeyEnv != "" {
		if !envName.MatchString(e.APIKeyEnv) {
			return "", errors.New("api_key_env is not an environment variable name (is a key pasted in? it must not be)")
		}
		k := strings.TrimSpace(getenv(e.APIKeyEnv))
		if k == "" {
			return "", fmt.Errorf("api_key_env: variable %s is not set", e.APIKeyEnv)
		}
		return k, nil
	}
	b, err := os.ReadFile(e.APIKeyFile)
	if err != nil {
		return "", fmt.Errorf("api_key_file: cannot read it (%s)", fsReason(err))
	}
	k := strings.TrimSpace(string(b))
	if k == "" || strings.ContainsAny(k, "\r\n") {
		return "", errors.New("api_key_file: want one key on one line")
	}
	return k, nil
}

// fsReason says why a file cannot be read without its path, which might
// be a pasted secret.
func fsReason(err error) string {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "no such file"
	case errors.Is(err, fs.ErrPermission):
		return "permission denied"
	}
	return "read error"
}

// yamlReason keeps the parser's line number, never the text it quotes.
func yamlReason(err error) string {
	msg := err.Error()
	if i := strings.Index(msg, "line "); i >= 0 {
		j := i + len("line ")
		for j < len(msg) && msg[j] >= '0' && msg[j] <= '9' {
			j++
		}
		return msg[i:j]
	}
	return "syntax error"
}

// jsonReason describes a strict decoding error without a value in it.
func jsonReason(err error) string {
	var typ *json.UnmarshalTypeError
	if errors.As(err, &typ) {
		return fmt.Sprintf("%s must be a %s", typ.Field, typ.Type)
	}
	if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return "unknown key " + f
	}
	return "malformed entry"
}
