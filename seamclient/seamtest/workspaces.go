package seamtest

import (
	"context"
	"crypto/subtle"
	"net/http"
	"strings"
	"sync"
)

// Workspaces serves several Seam workspaces on one address, each a Fake
// with its own state, as Seam does: an API key belongs to one workspace, so
// a request's workspace is its key's; a personal access token reaches any
// workspace and names it in the seam-workspace header. A key refused, or a
// header naming another workspace than the key's, is a 401; a personal
// access token without the header is a 400. The Fakes added should take
// any key (no WithAPIKey): Workspaces checks the key. It is safe for
// concurrent use: workspaces and tokens may be added while it serves.
type Workspaces struct {
	mu    sync.RWMutex
	byKey map[string]string // API key to workspace id
	byID  map[string]*Fake
	pats  []string
}

// NewWorkspaces returns a Workspaces serving none yet.
func NewWorkspaces() *Workspaces {
	return &Workspaces{byKey: map[string]string{}, byID: map[string]*Fake{}}
}

// Add serves f as workspace id, reached with apiKey (or a personal access token).
func (m *Workspaces) Add(id, apiKey string, f *Fake) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.byID[id] = f
	if apiKey != "" {
		m.byKey[apiKey] = id
	}
}

// AddPersonalAccessToken accepts token for every workspace, which the
// seam-workspace header names.
func (m *Workspaces) AddPersonalAccessToken(token string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pats = append(m.pats, token)
}

// Workspace returns the Fake serving workspace id, or nil.
func (m *Workspaces) Workspace(id string) *Fake {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.byID[id]
}

// ServeHTTP hands the request to its workspace's Fake.
func (m *Workspaces) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	token, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	header := r.Header.Get("seam-workspace")
	m.mu.RLock()
	id, byKey := m.byKey[token]
	pat := false
	for _, p := range m.pats {
		if subtle.ConstantTimeCompare([]byte(token), []byte(p)) == 1 {
			pat = true
		}
	}
	if pat {
		id = header
	}
	f := m.byID[id]
	m.mu.RUnlock()
	refuse := func(status int, typ, msg string) {
		requestID := newRequestID()
		w.Header().Set("seam-request-id", requestID)
		writeJSON(w, status, errorBody(typ, msg, requestID))
	}
	switch {
	case pat && header == "":
		refuse(http.StatusBadRequest, "missing_workspace_id", "A personal access token needs the seam-workspace header.")
	case !pat && !byKey, f == nil:
		refuse(http.StatusUnauthorized, "unauthorized", "Unauthorized.")
	case header != "" && header != id:
		refuse(http.StatusUnauthorized, "unauthorized", "The API key does not belong to the workspace the seam-workspace header names.")
	default:
		f.ServeHTTP(w, r)
	}
}

// Serve runs the workspaces as a stand-alone simulator; see Fake.Serve.
func (m *Workspaces) Serve(ctx context.Context, addr string) (url string, stop func(context.Context) error, err error) {
	return serveHandler(ctx, addr, m)
}
