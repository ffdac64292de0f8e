package seamclient_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keyworker/keyworker/seamclient"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

const (
	apiKey   = "seam_testkey_Zq8xW2vN5mR7"
	credID   = "6f1c2a4e-8b3d-4c5e-9f70-1a2b3c4d5e6f"
	userID   = "3b9d7e21-0c4f-4a8b-b6d5-2e1f0a9c8b7d"
	otherID  = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
	identity = "c0ffee00-1234-4abc-8def-0123456789ab"
)

// newFake starts a fake that knows the test key and returns a client for it.
func newFake(t *testing.T, fopts []seamtest.Option, copts ...seamclient.Option) (*seamtest.Server, *seamclient.Client) {
	t.Helper()
	srv := seamtest.NewServer(append([]seamtest.Option{seamtest.WithAPIKey(apiKey)}, fopts...)...)
	t.Cleanup(srv.Close)
	c, err := seamclient.New(srv.URL, apiKey, copts...)
	if err != nil {
		t.Fatal(err)
	}
	return srv, c
}

func autoCreate() []seamtest.Option { return []seamtest.Option{seamtest.WithAutoCreate()} }

// asAPIError fails the test unless err holds an *APIError.
func asAPIError(t *testing.T, err error) *seamclient.APIError {
	t.Helper()
	var ae *seamclient.APIError
	if !errors.As(err, &ae) {
		t.Fatalf("error %v (%T) is not an *APIError", err, err)
	}
	return ae
}

func TestAssign_FullEnvelopeReturnsTheAssignedCredential(t *testing.T) {
	srv, c := newFake(t, autoCreate())
	req := seamclient.Request{ACSCredentialID: credID, ACSUserID: userID}

	resp, err := c.Assign(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.RequestID == "" {
		t.Errorf("status %d, request id %q", resp.StatusCode, resp.RequestID)
	}
	cred, err := seamclient.ParseCredential(resp.Credential)
	if err != nil {
		t.Fatal(err)
	}
	if !cred.AssignedTo(req) || cred.ACSCredentialID != credID {
		t.Errorf("credential %+v is not assigned to %s", cred, userID)
	}
	if !srv.IsAssigned(credID, userID) || srv.Effects(credID, userID) != 1 {
		t.Errorf("fake: assigned %v, effects %d", srv.IsAssigned(credID, userID), srv.Effects(credID, userID))
	}
	want, _ := srv.Credential(credID)
	if !bytes.Equal(resp.Credential, want) {
		t.Errorf("credential bytes differ from the fake's object:\n got %s\nwant %s", resp.Credential, want)
	}
}

func TestAssign_EmptySuccessGivesNilCredentialAndGetFetchesIt(t *testing.T) {
	srv, c := newFake(t, append(autoCreate(), seamtest.WithEmptySuccess()))
	req := seamclient.Request{ACSCredentialID: credID, UserIdentityID: identity}

	resp, err := c.Assign(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Credential != nil {
		t.Fatalf("credential %s, want nil for {}", resp.Credential)
	}
	got, err := c.Get(t.Context(), credID)
	if err != nil {
		t.Fatal(err)
	}
	cred, err := seamclient.ParseCredential(got.Credential)
	if err != nil {
		t.Fatal(err)
	}
	if !cred.AssignedTo(req) || cred.ACSUserID != seamtest.DerivedACSUserID(identity) {
		t.Errorf("credential %+v is not held by identity %s", cred, identity)
	}

	if _, err := c.Unassign(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	if srv.IsAssigned(credID, identity) || srv.Effects(credID, identity) != 2 {
		t.Errorf("after unassign: assigned %v, effects %d", srv.IsAssigned(credID, identity), srv.Effects(credID, identity))
	}
}

func TestCredential_BytesPassThroughVerbatimWithManufacturerMetadata(t *testing.T) {
	// Odd spacing inside values and fields unknown to the schema must survive.
	obj := `{"acs_credential_id":"` + credID + `","acs_user_id":"` + otherID + `",` +
		`"display_name":"Room 101","code":null,"access_method":"card","external_type":"visionline_card",` +
		`"visionline_metadata":{ "card_function_type" : "guest", "joiner_acs_credential_ids":[ ],"is_valid":true ,"future_flag":1.50},` +
		`"brand_new_field":{"nested":[1, 2 ,3]},"errors":[],"warnings":[],"is_managed":true}`
	srv, c := newFake(t, nil)
	if err := srv.AddCredential(json.RawMessage(obj)); err != nil {
		t.Fatal(err)
	}
	srv.AddUser(userID)

	got, err := c.Get(t.Context(), credID)
	if err != nil {
		t.Fatal(err)
	}
	if string(got.Credential) != obj {
		t.Errorf("get changed the credential:\n got %s\nwant %s", got.Credential, obj)
	}

	resp, err := c.Assign(t.Context(), seamclient.Request{ACSCredentialID: credID, ACSUserID: userID})
	if err != nil {
		t.Fatal(err)
	}
	wantMeta := `"visionline_metadata":{ "card_function_type" : "guest", "joiner_acs_credential_ids":[ ],"is_valid":true ,"future_flag":1.50}`
	if !bytes.Contains(resp.Credential, []byte(wantMeta)) || !bytes.Contains(resp.Credential, []byte(`"brand_new_field":{"nested":[1, 2 ,3]}`)) {
		t.Errorf("assign response lost metadata bytes: %s", resp.Credential)
	}
	if cred, _ := seamclient.ParseCredential(resp.Credential); cred.ACSUserID != userID {
		t.Errorf("holder %q, want %q", cred.ACSUserID, userID)
	}
}

func TestAPIError_FieldsComeFromEnvelopeAndHeader(t *testing.T) {
	srv, c := newFake(t, nil)

	_, err := c.Assign(t.Context(), seamclient.Request{ACSCredentialID: credID, ACSUserID: userID})
	ae := asAPIError(t, err)
	if ae.StatusCode != 404 || ae.Type != "acs_credential_not_found" || ae.Message == "" || ae.RequestID == "" {
		t.Fatalf("APIError %+v", ae)
	}
	want := fmt.Sprintf("seamclient: 404 acs_credential_not_found: %s (seam-request-id %s)", ae.Message, ae.RequestID)
	if ae.Error() != want {
		t.Errorf("Error() = %q, want %q", ae.Error(), want)
	}
	if got := seamclient.Classify(fmt.Errorf("wrapped: %w", err)); got != seamclient.Permanent {
		t.Errorf("class %v, want permanent", got)
	}

	srv.FailNext(1, seamclient.PathGet, seamtest.SeamError(http.StatusConflict, "credential_busy"))
	_, err = c.Get(t.Context(), credID)
	if ae := asAPIError(t, err); ae.StatusCode != 409 || ae.Type != "credential_busy" || seamclient.Classify(err) != seamclient.Transient {
		t.Errorf("409: %+v, class %v", ae, seamclient.Classify(err))
	}
}

func TestAPIError_HTMLGatewayPageIsTransientWithBodySnippet(t *testing.T) {
	srv, c := newFake(t, autoCreate())
	srv.FailNext(1, "assign", seamtest.HTML(http.StatusBadGateway))

	_, err := c.Assign(t.Context(), seamclient.Request{ACSCredentialID: credID, ACSUserID: userID})
	ae := asAPIError(t, err)
	if ae.StatusCode != 502 || ae.Type != "" || !strings.Contains(ae.Body, "502 Bad Gateway") || len(ae.Body) > 256 {
		t.Errorf("APIError %+v", ae)
	}
	if seamclient.Classify(err) != seamclient.Transient {
		t.Errorf("class %v, want transient", seamclient.Classify(err))
	}
	if !strings.HasPrefix(err.Error(), "seamclient: 502 bad gateway") || strings.Contains(err.Error(), "<html>") {
		t.Errorf("Error() = %q", err)
	}
	if srv.IsAssigned(credID, userID) {
		t.Error("a 502 fault applied the change")
	}
}

func TestRetryAfter_SecondsAndHTTPDate(t *testing.T) {
	srv, c := newFake(t, autoCreate())
	req := seamclient.Request{ACSCredentialID: credID, ACSUserID: userID}

	srv.FailNext(1, "assign", seamtest.Status429("7"))
	_, err := c.Assign(t.Context(), req)
	if d, ok := seamclient.RetryAfter(err); !ok || d != 7*time.Second {
		t.Errorf("RetryAfter = %v, %v; want 7s", d, ok)
	}
	if ae := asAPIError(t, err); ae.StatusCode != 429 || seamclient.Classify(err) != seamclient.Transient {
		t.Errorf("429: %+v", ae)
	}

	date := time.Now().Add(30 * time.Second).UTC().Format(http.TimeFormat)
	srv.FailNext(1, "assign", seamtest.Status429(date))
	_, err = c.Assign(t.Context(), req)
	if d, ok := seamclient.RetryAfter(err); !ok || d < 28*time.Second || d > 31*time.Second {
		t.Errorf("RetryAfter = %v, %v; want about 30s", d, ok)
	}

	srv.FailNext(1, "assign", seamtest.SeamError(503, "service_unavailable"))
	_, err = c.Assign(t.Context(), req)
	if d, ok := seamclient.RetryAfter(err); ok {
		t.Errorf("RetryAfter without header = %v, true", d)
	}
}

func TestAPIError_BadInputWrongKeyAndUnknownIDsArePermanent(t *testing.T) {
	srv, c := newFake(t, nil)
	if err := srv.AddCredential(json.RawMessage(`{"acs_credential_id":"` + credID + `","display_name":"x","access_method":"code","errors":[],"warnings":[],"is_managed":true}`)); err != nil {
		t.Fatal(err)
	}
	wrongKey, err := seamclient.New(srv.URL, "seam_wrong_key")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		client   *seamclient.Client
		req      seamclient.Request
		status   int
		wantType string
	}{
		{"malformed uuid", c, seamclient.Request{ACSCredentialID: "not-a-uuid", ACSUserID: userID}, 400, "invalid_input"},
		{"wrong api key", wrongKey, seamclient.Request{ACSCredentialID: credID, ACSUserID: userID}, 401, "unauthorized"},
		{"unknown credential", c, seamclient.Request{ACSCredentialID: otherID, ACSUserID: userID}, 404, "acs_credential_not_found"},
		{"unknown user", c, seamclient.Request{ACSCredentialID: credID, ACSUserID: userID}, 404, "acs_user_not_found"},
		{"unknown user identity", c, seamclient.Request{ACSCredentialID: credID, UserIdentityID: identity}, 404, "user_identity_not_found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.client.Assign(t.Context(), tc.req)
			ae := asAPIError(t, err)
			if ae.StatusCode != tc.status || ae.Type != tc.wantType {
				t.Errorf("got %d %s, want %d %s", ae.StatusCode, ae.Type, tc.status, tc.wantType)
			}
			if seamclient.Classify(err) != seamclient.Permanent {
				t.Errorf("class %v, want permanent", seamclient.Classify(err))
			}
		})
	}
	if srv.TotalEffects() != 0 {
		t.Errorf("refused calls changed state: %d effects", srv.TotalEffects())
	}
}

func TestTransport_ResetBeforeApplyIsRetryableAndChangesNothing(t *testing.T) {
	srv, c := newFake(t, autoCreate())
	srv.FailNext(1, "assign", seamtest.Reset())

	_, err := c.Assign(t.Context(), seamclient.Request{ACSCredentialID: credID, ACSUserID: userID})
	var te *seamclient.TransportError
	if !errors.As(err, &te) {
		t.Fatalf("error %v (%T) is not a *TransportError", err, err)
	}
	want := seamclient.Transient
	if te.Sent {
		want = seamclient.OutcomeUnknown
	}
	if got := seamclient.Classify(err); got != want || te.Path != seamclient.PathAssign {
		t.Errorf("class %v (sent %v, path %s), want %v", got, te.Sent, te.Path, want)
	}
	if srv.IsAssigned(credID, userID) || srv.TotalEffects() != 0 {
		t.Error("a reset before applying changed the fake's state")
	}
}

func TestTransport_AppliedThenDropIsOutcomeUnknownAndApplied(t *testing.T) {
	srv, c := newFake(t, autoCreate())
	srv.FailNext(1, "", seamtest.AppliedThenDrop())
	req := seamclient.Request{ACSCredentialID: credID, ACSUserID: userID}

	_, err := c.Assign(t.Context(), req)
	var te *seamclient.TransportError
	if !errors.As(err, &te) || !te.Sent {
		t.Fatalf("error %v (%T), want a sent *TransportError", err, err)
	}
	if got := seamclient.Classify(err); got != seamclient.OutcomeUnknown {
		t.Errorf("class %v, want outcome_unknown", got)
	}
	if !srv.IsAssigned(credID, userID) || srv.Effects(credID, userID) != 1 {
		t.Fatal("applied-then-drop did not apply the change")
	}
	// What a caller does next: read the credential, find it applied.
	got, err := c.Get(t.Context(), credID)
	if err != nil {
		t.Fatal(err)
	}
	if cred, err := seamclient.ParseCredential(got.Credential); err != nil || !cred.AssignedTo(req) {
		t.Errorf("get after the drop: %+v, %v", cred, err)
	}
}

func TestTransport_TimeoutAfterSendIsOutcomeUnknown(t *testing.T) {
	srv, c := newFake(t, autoCreate(), seamclient.WithTimeout(150*time.Millisecond))
	srv.FailNext(1, "unassign", seamtest.Timeout(0))

	start := time.Now()
	_, err := c.Unassign(t.Context(), seamclient.Request{ACSCredentialID: credID, ACSUserID: userID})
	var te *seamclient.TransportError
	if !errors.As(err, &te) {
		t.Fatalf("error %v (%T) is not a *TransportError", err, err)
	}
	if !te.Sent || !te.Timeout() || seamclient.Classify(err) != seamclient.OutcomeUnknown {
		t.Errorf("sent %v, timeout %v, class %v; want sent timeout outcome_unknown", te.Sent, te.Timeout(), seamclient.Classify(err))
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("timeout took %v", elapsed)
	}
	if srv.TotalEffects() != 0 {
		t.Error("a timed-out call changed the fake's state")
	}
}

func TestTransport_CallerCancelBeforeSendIsTransient(t *testing.T) {
	_, c := newFake(t, autoCreate())
	ctx, cancel := context.WithCancel(t.Context())
	cancel()

	_, err := c.Assign(ctx, seamclient.Request{ACSCredentialID: credID, ACSUserID: userID})
	var te *seamclient.TransportError
	if !errors.As(err, &te) || te.Sent || !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v (%T), want an unsent *TransportError wrapping context.Canceled", err, err)
	}
	if got := seamclient.Classify(err); got != seamclient.Transient {
		t.Errorf("class %v, want transient", got)
	}
}

func TestTransport_ConnectionRefusedIsTransient(t *testing.T) {
	srv, c := newFake(t, autoCreate())
	srv.Close()

	_, err := c.Get(t.Context(), credID)
	var te *seamclient.TransportError
	if !errors.As(err, &te) || te.Sent || te.Timeout() {
		t.Fatalf("error %v (%T), want an unsent *TransportError", err, err)
	}
	if got := seamclient.Classify(err); got != seamclient.Transient {
		t.Errorf("class %v, want transient", got)
	}
}

func TestRequest_SendsHeadersAndBodyOfTheContract(t *testing.T) {
	srv, c := newFake(t, autoCreate(), seamclient.WithWorkspaceID("ws_1234"), seamclient.WithUserAgent("keyworker/test"))
	if _, err := c.Assign(t.Context(), seamclient.Request{ACSCredentialID: credID, UserIdentityID: identity}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(t.Context(), credID); err != nil {
		t.Fatal(err)
	}

	reqs := srv.Requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests recorded, want 2", len(reqs))
	}
	for _, r := range reqs {
		if r.Method != http.MethodPost {
			t.Errorf("%s %s, want POST", r.Method, r.Path)
		}
		for h, want := range map[string]string{
			"Seam-Workspace": "ws_1234",
			"User-Agent":     "keyworker/test",
			"Content-Type":   "application/json",
			"Accept":         "application/json",
		} {
			if got := r.Header.Get(h); got != want {
				t.Errorf("%s: header %s = %q, want %q", r.Path, h, got, want)
			}
		}
		if _, ok := r.Header["Idempotency-Key"]; ok {
			t.Error("Idempotency-Key sent: net/http would then retry POSTs on its own")
		}
	}
	if got, want := string(reqs[0].Body), `{"acs_credential_id":"`+credID+`","user_identity_id":"`+identity+`"}`; got != want {
		t.Errorf("assign body %s, want %s", got, want)
	}
	if got, want := string(reqs[1].Body), `{"acs_credential_id":"`+credID+`"}`; got != want || reqs[1].Path != seamclient.PathGet {
		t.Errorf("get %s body %s, want %s", reqs[1].Path, got, want)
	}
}

func TestRequest_DefaultUserAgentNamesKeyworkerAndNoWorkspaceHeader(t *testing.T) {
	srv, c := newFake(t, autoCreate())
	if _, err := c.Get(t.Context(), credID); err != nil {
		t.Fatal(err)
	}
	h := srv.Requests()[0].Header
	if ua := h.Get("User-Agent"); !strings.HasPrefix(ua, "keyworker/") {
		t.Errorf("User-Agent %q", ua)
	}
	if _, ok := h["Seam-Workspace"]; ok {
		t.Error("seam-workspace sent without WithWorkspaceID")
	}
}

func TestRequest_InvalidArgumentsAreRefusedWithoutACall(t *testing.T) {
	srv, c := newFake(t, autoCreate())
	for _, r := range []seamclient.Request{
		{ACSUserID: userID},
		{ACSCredentialID: credID},
		{ACSCredentialID: credID, ACSUserID: userID, UserIdentityID: identity},
	} {
		_, err := c.Assign(t.Context(), r)
		if !errors.Is(err, seamclient.ErrInvalidRequest) || seamclient.Classify(err) != seamclient.Permanent {
			t.Errorf("Assign(%+v) = %v", r, err)
		}
		if _, err := c.Unassign(t.Context(), r); !errors.Is(err, seamclient.ErrInvalidRequest) {
			t.Errorf("Unassign(%+v) = %v", r, err)
		}
	}
	if _, err := c.Get(t.Context(), ""); !errors.Is(err, seamclient.ErrInvalidRequest) {
		t.Errorf("Get(\"\") = %v", err)
	}
	if n := srv.Calls(""); n != 0 {
		t.Errorf("%d calls reached the fake", n)
	}
}

func TestErrors_NeverContainTheAPIKeyOrACode(t *testing.T) {
	const code = "482913"
	// A misbehaving proxy that echoes the Authorization header and leaks codes.
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization")
		w.Header().Set("seam-request-id", "req-1")
		switch r.URL.Query().Get("case") {
		case "json":
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprintf(w, `{"error":{"type":"internal","message":"bad token %s"},"ok":false}`, auth)
		case "html":
			w.WriteHeader(http.StatusBadGateway)
			fmt.Fprintf(w, "<html>%s %s</html>", strings.Repeat("x", 240), auth)
		case "code-string":
			fmt.Fprintf(w, `{"acs_credential":"%s","ok":true}`, code)
		case "code-trailing":
			fmt.Fprintf(w, `{"ok":true} %s`, code)
		case "code-type":
			fmt.Fprintf(w, `{"acs_credential":{"acs_credential_id":"%s","code":"%s"},"ok":%s}`, credID, code, code)
		}
	}))
	t.Cleanup(echo.Close)

	var errs []error
	for _, kase := range []string{"json", "html", "code-string", "code-trailing", "code-type"} {
		c, err := seamclient.New(echo.URL, apiKey, seamclient.WithHTTPClient(&http.Client{
			Transport: rewriteQuery{kase},
		}))
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Assign(t.Context(), seamclient.Request{ACSCredentialID: credID, ACSUserID: userID})
		if err == nil {
			t.Fatalf("case %s: no error", kase)
		}
		errs = append(errs, err)
	}
	if _, err := seamclient.ParseCredential(json.RawMessage(`{"acs_credential_id":` + code + `}`)); err != nil {
		errs = append(errs, err)
	} else {
		t.Error("ParseCredential accepted a numeric id")
	}

	// Seam's own refusals and transport failures.
	srv := seamtest.NewServer(seamtest.WithAPIKey("the_right_key"))
	t.Cleanup(srv.Close)
	c, err := seamclient.New(srv.URL, apiKey, seamclient.WithTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Assign(t.Context(), seamclient.Request{ACSCredentialID: credID, ACSUserID: userID})
	errs = append(errs, err)
	srv.FailNext(1, "", seamtest.Timeout(0))
	_, err = c.Get(t.Context(), credID)
	errs = append(errs, err)
	srv.Close()
	_, err = c.Get(t.Context(), credID)
	errs = append(errs, err)
	_, err = seamclient.New(srv.URL, "bad\n"+apiKey)
	errs = append(errs, err)

	for _, err := range errs {
		for _, s := range []string{err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err)} {
			if strings.Contains(s, apiKey) || strings.Contains(s, apiKey[:12]) || strings.Contains(s, code) {
				t.Errorf("error leaks a secret: %s", s)
			}
		}
	}
}

// rewriteQuery sends every request to the echo server with ?case=kase.
type rewriteQuery struct{ kase string }

func (rq rewriteQuery) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.URL.RawQuery = "case=" + rq.kase
	return http.DefaultTransport.RoundTrip(r)
}

func TestNew_RejectsBadArgumentsAndOptions(t *testing.T) {
	cases := map[string]struct {
		base, key string
		opts      []seamclient.Option
	}{
		"relative url":    {"connect.getseam.com", apiKey, nil},
		"ftp url":         {"ftp://connect.getseam.com", apiKey, nil},
		"url with user":   {"https://u:p@connect.getseam.com", apiKey, nil},
		"url with query":  {"https://connect.getseam.com/?a=b", apiKey, nil},
		"empty key":       {"", " ", nil},
		"key with CR":     {"", apiKey + "\r", nil},
		"zero timeout":    {"", apiKey, []seamclient.Option{seamclient.WithTimeout(0)}},
		"nil http client": {"", apiKey, []seamclient.Option{seamclient.WithHTTPClient(nil)}},
		"empty agent":     {"", apiKey, []seamclient.Option{seamclient.WithUserAgent("")}},
		"workspace LF":    {"", apiKey, []seamclient.Option{seamclient.WithWorkspaceID("ws\nx")}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := seamclient.New(tc.base, tc.key, tc.opts...)
			if !errors.Is(err, seamclient.ErrInvalidOption) {
				t.Fatalf("err %v, want ErrInvalidOption", err)
			}
			if strings.Contains(err.Error(), apiKey) {
				t.Errorf("error quotes the key: %v", err)
			}
		})
	}
	if _, err := seamclient.New("", apiKey, seamclient.WithWorkspaceID("")); err != nil {
		t.Errorf("default endpoint with empty workspace: %v", err)
	}
}

func TestClassify_FollowsTheWrappedType(t *testing.T) {
	cases := []struct {
		err  error
		want seamclient.Class
	}{
		{&seamclient.APIError{StatusCode: 408}, seamclient.Transient},
		{&seamclient.APIError{StatusCode: 500}, seamclient.Transient},
		{&seamclient.APIError{StatusCode: 403}, seamclient.Permanent},
		{fmt.Errorf("x: %w", &seamclient.TransportError{Err: errors.New("reset")}), seamclient.Transient},
		{&seamclient.TransportError{Err: errors.New("eof"), Sent: true}, seamclient.OutcomeUnknown},
		{&seamclient.ResponseError{StatusCode: 200, Err: seamclient.ErrNoCredential}, seamclient.OutcomeUnknown},
		{fmt.Errorf("shutdown: %w", context.Canceled), seamclient.Transient},
		{context.DeadlineExceeded, seamclient.Transient},
		{errors.New("something else"), seamclient.Permanent},
		{nil, 0},
	}
	for _, tc := range cases {
		if got := seamclient.Classify(tc.err); got != tc.want {
			t.Errorf("Classify(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
	if s := seamclient.OutcomeUnknown.String(); s != "outcome_unknown" {
		t.Errorf("String() = %q", s)
	}
}

func TestCredential_AssignedToComparesTheSetUserID(t *testing.T) {
	cred, err := seamclient.ParseCredential(json.RawMessage(
		`{"acs_credential_id":"` + credID + `","acs_user_id":"` + strings.ToUpper(userID) + `","user_identity_id":"` + identity + `"}`))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		r    seamclient.Request
		want bool
	}{
		{seamclient.Request{ACSUserID: userID}, true},
		{seamclient.Request{UserIdentityID: identity}, true},
		{seamclient.Request{ACSUserID: otherID}, false},
		{seamclient.Request{UserIdentityID: otherID}, false},
		{seamclient.Request{}, false},
	}
	for _, tc := range cases {
		if got := cred.AssignedTo(tc.r); got != tc.want {
			t.Errorf("AssignedTo(%+v) = %v", tc.r, got)
		}
	}
	unheld, _ := seamclient.ParseCredential(json.RawMessage(`{"acs_credential_id":"` + credID + `"}`))
	if unheld.AssignedTo(seamclient.Request{ACSUserID: userID}) {
		t.Error("a credential without holder is assigned")
	}
	for _, raw := range []string{"", "null", "[]", `{"acs_user_id":"` + userID + `"}`} {
		if _, err := seamclient.ParseCredential(json.RawMessage(raw)); err == nil {
			t.Errorf("ParseCredential(%q) accepted", raw)
		}
	}
}
