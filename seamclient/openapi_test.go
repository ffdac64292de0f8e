package seamclient_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/keyworker/keyworker/seamclient"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

// referencePath finds ../shared/reference/seam-openapi-acs-credentials.json
// beside the repository root (the directory holding go.mod).
func referencePath(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
	p := filepath.Join(dir, "..", "shared", "reference", "seam-openapi-acs-credentials.json")
	if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
		t.Skipf("Seam's OpenAPI reference is not beside the repository (%s): %v", p, err)
	} else if err != nil {
		t.Fatalf("Seam's OpenAPI reference: %v", err)
	}
	return p
}

// validatingTransport checks every request against the reference before
// sending it, and every 200 answer after.
type validatingTransport struct {
	t      *testing.T
	router routers.Router
	next   http.RoundTripper

	mu        sync.Mutex
	requests  map[string]int // validated, by method and path
	responses map[string]int
	failures  []string
}

func (v *validatingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		b, err := io.ReadAll(req.Body)
		if err != nil {
			return nil, err
		}
		body = b
		req.Body = io.NopCloser(bytes.NewReader(b))
	}
	name := req.Method + " " + req.URL.Path
	check := req.Clone(req.Context())
	check.Body = io.NopCloser(bytes.NewReader(body))
	route, params, err := v.router.FindRoute(check)
	if err != nil {
		v.fail("%s: no route in the reference: %v", name, err)
		return v.next.RoundTrip(req)
	}
	in := &openapi3filter.RequestValidationInput{
		Request: check, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, MultiError: true},
	}
	if err := openapi3filter.ValidateRequest(req.Context(), in); err != nil {
		v.fail("request %s %s: %v", name, body, err)
	} else {
		v.count(v.requests, name)
	}
	resp, err := v.next.RoundTrip(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		return resp, err
	}
	rb, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(rb))
	out := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Body:    io.NopCloser(bytes.NewReader(rb)),
		Options: &openapi3filter.Options{MultiError: true, IncludeResponseStatus: true},
	}
	if err := openapi3filter.ValidateResponse(req.Context(), out); err != nil {
		v.fail("200 of %s: %v\n%s", name, err, rb)
	} else {
		v.count(v.responses, name)
	}
	return resp, nil
}

func (v *validatingTransport) fail(format string, args ...any) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.failures = append(v.failures, fmt.Sprintf(format, args...))
}

func (v *validatingTransport) count(m map[string]int, name string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	m[name]++
}

// TestReference_ClientRequestsAndFakeAnswersFollowSeamsOpenAPI sends the
// client's requests (assign and unassign by acs user and by user identity,
// get) and raw GET and PATCH calls to the fake in each sync state
// (pending, synced, failed; a card waiting to be issued) and validates
// every request and every 200 against Seam's OpenAPI. The {} success
// shape (WithEmptySuccess) is not in the reference, which requires
// acs_credential and ok, so it is not checked here.
func TestReference_ClientRequestsAndFakeAnswersFollowSeamsOpenAPI(t *testing.T) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromFile(referencePath(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		t.Fatalf("the reference does not validate: %v", err)
	}
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	var clockMu sync.Mutex
	clock := func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return now }
	advance := func(d time.Duration) { clockMu.Lock(); defer clockMu.Unlock(); now = now.Add(d) }

	srv := seamtest.NewServer(seamtest.WithAutoCreate(), seamtest.WithClock(clock), seamtest.WithSyncDelay(time.Second))
	t.Cleanup(srv.Close)
	doc.Servers = openapi3.Servers{{URL: srv.URL}}
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	vt := &validatingTransport{t: t, router: router, next: http.DefaultTransport, requests: map[string]int{}, responses: map[string]int{}}
	c, err := seamclient.New(srv.URL, "test-key", seamclient.WithHTTPClient(&http.Client{Transport: vt}))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const (
		cred     = "66666666-6666-4666-8666-666666666666"
		card     = "77777777-6666-4666-8666-666666666666"
		user     = "33333333-3333-4333-8333-333333333333"
		identity = "44444444-3333-4333-8333-333333333333"
	)
	if err := srv.AddCredential(json.RawMessage(`{"acs_credential_id":"` + card + `","acs_system_id":"` + user +
		`","connected_account_id":"` + user + `","workspace_id":"` + user + `","display_name":"Room 101","access_method":"card",` +
		`"external_type":"visionline_card","is_issued":false,"issued_at":null,"created_at":"2026-12-01T00:00:00.000Z",` +
		`"errors":[],"warnings":[],"is_managed":true,"visionline_metadata":{"card_function_type":"guest","joiner_acs_credential_ids":[]}}`)); err != nil {
		t.Fatal(err)
	}
	srv.AddUser(user)
	step := func(name string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	_, err = c.Assign(ctx, seamclient.Request{ACSCredentialID: cred, ACSUserID: user}) // pending
	step("assign", err)
	_, err = c.Get(ctx, cred)
	step("get pending", err)
	advance(time.Second)
	_, err = c.Get(ctx, cred) // synced
	step("get synced", err)
	_, err = c.Assign(ctx, seamclient.Request{ACSCredentialID: card, ACSUserID: user}) // waiting_to_be_issued
	step("assign card", err)
	_, err = c.Unassign(ctx, seamclient.Request{ACSCredentialID: cred, ACSUserID: user})
	step("unassign", err)
	srv.SetSyncFailure("provider_rejected", "The lock system refused the change.")
	_, err = c.Assign(ctx, seamclient.Request{ACSCredentialID: cred, UserIdentityID: identity})
	step("assign by identity", err)
	advance(time.Second)
	_, err = c.Get(ctx, cred) // failed: an error on the credential
	step("get failed", err)
	_, err = c.Get(ctx, card) // synced, still waiting to be issued
	step("get card", err)
	_, err = c.Unassign(ctx, seamclient.Request{ACSCredentialID: cred, UserIdentityID: identity})
	step("unassign by identity", err)

	// Seam also takes GET for get and PATCH for assign and unassign.
	hc := &http.Client{Transport: vt}
	for _, r := range []struct{ method, path, body string }{
		{http.MethodGet, seamclient.PathGet + "?acs_credential_id=" + cred, ""},
		{http.MethodPatch, seamclient.PathAssign, `{"acs_credential_id":"` + cred + `","acs_user_id":"` + user + `"}`},
		{http.MethodPatch, seamclient.PathUnassign, `{"acs_credential_id":"` + cred + `","acs_user_id":"` + user + `"}`},
	} {
		req, err := http.NewRequestWithContext(ctx, r.method, srv.URL+r.path, strings.NewReader(r.body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer test-key")
		if r.body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s %s: %d", r.method, r.path, resp.StatusCode)
		}
	}

	for _, f := range vt.failures {
		t.Error(f)
	}
	for _, name := range []string{
		"POST " + seamclient.PathAssign, "POST " + seamclient.PathUnassign, "POST " + seamclient.PathGet,
		"GET " + seamclient.PathGet, "PATCH " + seamclient.PathAssign, "PATCH " + seamclient.PathUnassign,
	} {
		if vt.requests[name] == 0 || vt.responses[name] == 0 {
			t.Errorf("%s: %d requests and %d answers validated, want some of each", name, vt.requests[name], vt.responses[name])
		}
	}
	// The checks must be able to fail: a 200 without ok is refused.
	bad := &openapi3filter.ResponseValidationInput{Status: 200, Header: http.Header{"Content-Type": {"application/json"}},
		Body: io.NopCloser(strings.NewReader(`{}`)), Options: &openapi3filter.Options{IncludeResponseStatus: true}}
	breq, _ := http.NewRequest(http.MethodPost, srv.URL+seamclient.PathAssign, strings.NewReader(`{}`))
	route, params, err := router.FindRoute(breq)
	if err != nil {
		t.Fatal(err)
	}
	bad.RequestValidationInput = &openapi3filter.RequestValidationInput{Request: breq, PathParams: params, Route: route}
	var se *openapi3filter.ResponseError
	if err := openapi3filter.ValidateResponse(ctx, bad); !errors.As(err, &se) {
		t.Errorf("an answer {} passed the reference's check: %v", err)
	}
}
