package seamtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyworker/keyworker/seamclient"
)

const (
	key     = "seam_test_fake_key"
	cred1   = "11111111-2222-4333-8444-555555555555"
	cred2   = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
	userA   = "33333333-3333-4333-8333-333333333333"
	userB   = "44444444-4444-4444-8444-444444444444"
	ident1  = "77777777-7777-4777-8777-777777777777"
	unknown = "00000000-0000-4000-8000-000000000000"
)

// answer is one raw HTTP exchange with the fake.
type answer struct {
	status int
	header http.Header
	body   []byte
	err    error
}

func (a answer) errorType() string {
	var env struct {
		Error struct {
			Type string `json:"type"`
		} `json:"error"`
	}
	_ = json.Unmarshal(a.body, &env)
	return env.Error.Type
}

func (a answer) credential(t *testing.T) *object {
	t.Helper()
	var env struct {
		ACSCredential json.RawMessage `json:"acs_credential"`
		OK            bool            `json:"ok"`
	}
	if err := json.Unmarshal(a.body, &env); err != nil || !env.OK {
		t.Fatalf("answer %d %s is not a success envelope", a.status, a.body)
	}
	o, err := parseObject(env.ACSCredential)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func send(ctx context.Context, c *http.Client, method, url, token, body string) answer {
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return answer{err: err}
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return answer{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, header: resp.Header, body: b, err: err}
}

// post sends a call with the test key and fails the test on a transport error.
func post(t *testing.T, s *Server, path, body string) answer {
	t.Helper()
	a := send(t.Context(), s.Client(), http.MethodPost, s.URL+path, key, body)
	if a.err != nil {
		t.Fatalf("POST %s: %v", path, a.err)
	}
	return a
}

func assignBody(cred, user string) string {
	return fmt.Sprintf(`{"acs_credential_id":%q,"acs_user_id":%q}`, cred, user)
}

func identityBody(cred, identity string) string {
	return fmt.Sprintf(`{"acs_credential_id":%q,"user_identity_id":%q}`, cred, identity)
}

// checkFor polls cond until it holds or the wait is over.
func checkFor(t *testing.T, wait time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", wait)
		}
		<-tick.C
	}
}

func TestFake_AssignTwiceToTheSameUserIsOneEffect(t *testing.T) {
	s := NewServer(WithAPIKey(key), WithAutoCreate())
	t.Cleanup(s.Close)
	for range 2 {
		if a := post(t, s, seamclient.PathAssign, assignBody(cred1, userA)); a.status != 200 || a.credential(t).str("acs_user_id") != userA {
			t.Fatalf("assign: %d %s", a.status, a.body)
		}
	}
	if !s.IsAssigned(cred1, userA) || s.Effects(cred1, userA) != 1 || s.TotalEffects() != 1 || s.Calls("assign") != 2 {
		t.Errorf("assigned %v, effects %d, total %d, calls %d",
			s.IsAssigned(cred1, userA), s.Effects(cred1, userA), s.TotalEffects(), s.Calls("assign"))
	}
}

func TestFake_AssignToAnotherUserReplacesTheHolder(t *testing.T) {
	s := NewServer(WithAPIKey(key), WithAutoCreate())
	t.Cleanup(s.Close)
	post(t, s, seamclient.PathAssign, assignBody(cred1, userA))
	a := post(t, s, seamclient.PathAssign, assignBody(cred1, userB))
	// Assigning encodes no card: is_issued stays as it was.
	if got := a.credential(t); got.str("acs_user_id") != userB || string(got.vals["is_issued"]) != "false" {
		t.Errorf("credential after reassign: %s", got.marshal())
	}
	if s.IsAssigned(cred1, userA) || !s.IsAssigned(cred1, userB) || s.Effects(cred1, userB) != 1 {
		t.Error("the credential did not move to the new holder")
	}
}

func TestFake_UnassignClearsOnlyTheHolder(t *testing.T) {
	s := NewServer(WithAPIKey(key), WithAutoCreate())
	t.Cleanup(s.Close)
	post(t, s, seamclient.PathAssign, assignBody(cred1, userA))

	if a := post(t, s, seamclient.PathUnassign, assignBody(cred1, userB)); a.status != 200 || !s.IsAssigned(cred1, userA) {
		t.Fatalf("unassign from a non-holder: %d, still held %v", a.status, s.IsAssigned(cred1, userA))
	}
	if s.Effects(cred1, userB) != 0 {
		t.Error("a no-op unassign counted as an effect")
	}
	for range 2 {
		a := post(t, s, seamclient.PathUnassign, assignBody(cred1, userA))
		if got := a.credential(t); got.str("acs_user_id") != "" || string(got.vals["is_issued"]) != "false" {
			t.Errorf("credential after unassign: %s", got.marshal())
		}
	}
	if s.IsAssigned(cred1, userA) || s.Effects(cred1, userA) != 2 {
		t.Errorf("assigned %v, effects %d; want unassigned after assign + one unassign", s.IsAssigned(cred1, userA), s.Effects(cred1, userA))
	}
}

func TestFake_IdentityAssignLinksADerivedACSUser(t *testing.T) {
	s := NewServer(WithAPIKey(key))
	t.Cleanup(s.Close)
	s.AddUserIdentity(ident1)
	if err := s.AddCredential(json.RawMessage(`{"acs_credential_id":"` + cred1 + `","access_method":"code","code":"1234"}`)); err != nil {
		t.Fatal(err)
	}
	got := post(t, s, seamclient.PathAssign, identityBody(cred1, ident1)).credential(t)
	derived := DerivedACSUserID(ident1)
	if got.str("user_identity_id") != ident1 || got.str("acs_user_id") != derived || !isUUID(derived) {
		t.Fatalf("credential %s", got.marshal())
	}
	if DerivedACSUserID(strings.ToUpper(ident1)) != derived {
		t.Error("the derived id depends on the case of the identity")
	}
	if !s.IsAssigned(cred1, ident1) || !s.IsAssigned(cred1, derived) || s.Effects(cred1, ident1) != 1 {
		t.Error("identity assign not visible")
	}
	// Assigning the linked ACS user directly is the same holder: no effect.
	post(t, s, seamclient.PathAssign, assignBody(cred1, derived))
	post(t, s, seamclient.PathUnassign, identityBody(cred1, ident1))
	if s.IsAssigned(cred1, ident1) || s.TotalEffects() != 2 {
		t.Errorf("after identity unassign: assigned %v, effects %d", s.IsAssigned(cred1, ident1), s.TotalEffects())
	}
}

func TestFake_ValidatesCallsLikeTheOpenAPI(t *testing.T) {
	s := NewServer(WithAPIKey(key), WithAutoCreate())
	t.Cleanup(s.Close)
	cases := []struct {
		name, method, path, body string
		status                   int
		typ                      string
	}{
		{"not json", "POST", seamclient.PathAssign, `acs_credential_id=1`, 400, "invalid_input"},
		{"json array", "POST", seamclient.PathAssign, `[]`, 400, "invalid_input"},
		{"no credential id", "POST", seamclient.PathAssign, `{"acs_user_id":"` + userA + `"}`, 400, "invalid_input"},
		{"credential id not uuid", "POST", seamclient.PathGet, `{"acs_credential_id":"abc"}`, 400, "invalid_input"},
		{"both user ids", "POST", seamclient.PathAssign, `{"acs_credential_id":"` + cred1 + `","acs_user_id":"` + userA + `","user_identity_id":"` + ident1 + `"}`, 400, "invalid_input"},
		{"neither user id", "POST", seamclient.PathUnassign, `{"acs_credential_id":"` + cred1 + `"}`, 400, "invalid_input"},
		{"user id a number", "POST", seamclient.PathAssign, `{"acs_credential_id":"` + cred1 + `","acs_user_id":7}`, 400, "invalid_input"},
		{"unknown endpoint", "POST", "/acs/credentials/delete", `{}`, 404, "not_found"},
		{"PUT", "PUT", seamclient.PathAssign, assignBody(cred1, userA), 405, "method_not_allowed"},
		{"PATCH assign", "PATCH", seamclient.PathAssign, assignBody(cred1, userA), 200, ""},
		{"GET get with query", "GET", seamclient.PathGet + "?acs_credential_id=" + cred1, ``, 200, ""},
		{"POST get ignores user ids", "POST", seamclient.PathGet, assignBody(cred1, "x"), 200, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := send(t.Context(), s.Client(), tc.method, s.URL+tc.path, key, tc.body)
			if a.err != nil || a.status != tc.status || a.errorType() != tc.typ {
				t.Errorf("got %d %s (%v), want %d %s", a.status, a.body, a.err, tc.status, tc.typ)
			}
			if !regexp.MustCompile(`^[0-9a-f-]{36}$`).MatchString(a.header.Get("seam-request-id")) {
				t.Errorf("seam-request-id %q", a.header.Get("seam-request-id"))
			}
		})
	}
}

func TestFake_RequiresABearerTokenAndTheConfiguredKey(t *testing.T) {
	s := NewServer(WithAPIKey(key), WithAutoCreate())
	t.Cleanup(s.Close)
	body := `{"acs_credential_id":"` + cred1 + `"}`
	for token, want := range map[string]int{"": 401, "other": 401, key: 200} {
		a := send(t.Context(), s.Client(), "POST", s.URL+seamclient.PathGet, token, body)
		if a.status != want || want == 401 && a.errorType() != "unauthorized" {
			t.Errorf("token %q: %d %s, want %d", token, a.status, a.body, want)
		}
	}
	open := NewServer(WithAutoCreate())
	t.Cleanup(open.Close)
	if a := send(t.Context(), open.Client(), "POST", open.URL+seamclient.PathGet, "anything", body); a.status != 200 {
		t.Errorf("without WithAPIKey any token should pass: %d", a.status)
	}
	if a := send(t.Context(), open.Client(), "POST", open.URL+seamclient.PathGet, "", body); a.status != 401 {
		t.Errorf("without a token: %d, want 401", a.status)
	}
}

func TestFake_UnknownCredentialAndUsersAre404WithoutAutoCreate(t *testing.T) {
	s := NewServer(WithAPIKey(key))
	t.Cleanup(s.Close)
	s.AddUser(userA)
	if err := s.AddCredential(json.RawMessage(`{"acs_credential_id":"` + cred1 + `"}`)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, body, typ string }{
		{seamclient.PathAssign, assignBody(unknown, userA), "acs_credential_not_found"},
		{seamclient.PathGet, `{"acs_credential_id":"` + unknown + `"}`, "acs_credential_not_found"},
		{seamclient.PathAssign, assignBody(cred1, userB), "acs_user_not_found"},
		{seamclient.PathUnassign, assignBody(cred1, userB), "acs_user_not_found"},
		{seamclient.PathAssign, identityBody(cred1, ident1), "user_identity_not_found"},
	} {
		if a := post(t, s, tc.path, tc.body); a.status != 404 || a.errorType() != tc.typ {
			t.Errorf("%s %s: %d %s, want 404 %s", tc.path, tc.body, a.status, a.body, tc.typ)
		}
	}
	if a := post(t, s, seamclient.PathAssign, assignBody(cred1, userA)); a.status != 200 {
		t.Errorf("known credential and user: %d %s", a.status, a.body)
	}
}

func TestFake_AutoCreatedCredentialIsARealisticCodeCredential(t *testing.T) {
	s := NewServer(WithAPIKey(key), WithAutoCreate())
	t.Cleanup(s.Close)
	got := post(t, s, seamclient.PathGet, `{"acs_credential_id":"`+cred1+`"}`).credential(t)
	if !regexp.MustCompile(`^[0-9]{4,6}$`).MatchString(got.str("code")) || got.str("access_method") != "code" {
		t.Errorf("code credential: %s", got.marshal())
	}
	for _, k := range []string{"acs_system_id", "connected_account_id", "workspace_id"} {
		if !isUUID(got.str(k)) {
			t.Errorf("%s = %q", k, got.str(k))
		}
	}
	for k, want := range map[string]string{"errors": "[]", "warnings": "[]", "is_managed": "true", "is_issued": "false"} {
		if string(got.vals[k]) != want {
			t.Errorf("%s = %s, want %s", k, got.vals[k], want)
		}
	}
	if _, err := time.Parse(time.RFC3339, got.str("created_at")); err != nil || got.str("display_name") == "" {
		t.Errorf("created_at %q, display_name %q", got.str("created_at"), got.str("display_name"))
	}
	if _, ok := got.vals["acs_user_id"]; ok {
		t.Error("a new credential already has a holder")
	}
	again := New(WithAutoCreate())
	again.mu.Lock()
	code := again.lookupCredential(cred1).str("code")
	again.mu.Unlock()
	if code != got.str("code") {
		t.Error("the code of an auto-created credential is not repeatable")
	}
}

func TestFake_KeepsUnknownFieldsVerbatimThroughAssign(t *testing.T) {
	meta := `{ "card_function_type": "guest", "joiner_acs_credential_ids": [],"card_id" :"42" }`
	obj := `{"acs_credential_id":"` + cred2 + `","access_method":"card","visionline_metadata":` + meta + `,"x_future":[1,2.50]}`
	s := NewServer(WithAPIKey(key))
	t.Cleanup(s.Close)
	s.AddUser(userA)
	if err := s.AddCredential(json.RawMessage(obj)); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Credential(cred2); string(got) != obj {
		t.Errorf("stored %s, want %s", got, obj)
	}
	a := post(t, s, seamclient.PathAssign, assignBody(cred2, userA))
	stored, _ := s.Credential(cred2)
	if !bytes.Contains(a.body, stored) {
		t.Errorf("assign answer %s does not carry the stored object %s", a.body, stored)
	}
	if !bytes.Contains(stored, []byte(`"visionline_metadata":`+meta+`,"x_future":[1,2.50]`)) {
		t.Errorf("metadata changed: %s", stored)
	}
	if g := post(t, s, seamclient.PathGet, `{"acs_credential_id":"`+cred2+`"}`); !bytes.Equal(g.body, []byte(`{"acs_credential":`+string(stored)+`,"ok":true}`)) {
		t.Errorf("get answer %s", g.body)
	}
	for _, bad := range []string{`[]`, `{"acs_credential_id":"nope"}`, `{"acs_credential_id":"` + cred1 + `"} x`} {
		if err := s.AddCredential(json.RawMessage(bad)); err == nil {
			t.Errorf("AddCredential(%s) accepted", bad)
		}
	}
}

func TestFake_EmptySuccessAnswersAnEmptyObjectForChangesOnly(t *testing.T) {
	s := NewServer(WithAPIKey(key), WithAutoCreate(), WithEmptySuccess())
	t.Cleanup(s.Close)
	if a := post(t, s, seamclient.PathAssign, assignBody(cred1, userA)); string(a.body) != `{}` || a.status != 200 {
		t.Errorf("assign: %d %s", a.status, a.body)
	}
	if !s.IsAssigned(cred1, userA) {
		t.Error("an empty success did not apply")
	}
	if a := post(t, s, seamclient.PathGet, `{"acs_credential_id":"`+cred1+`"}`); a.credential(t).str("acs_user_id") != userA {
		t.Error("get must always carry the credential")
	}
	s.SetEmptySuccess(false)
	post(t, s, seamclient.PathUnassign, assignBody(cred1, userA)).credential(t)
}

func TestFake_FailNextFollowsThePathAndComesBeforeTheChange(t *testing.T) {
	s := NewServer(WithAPIKey(key), WithAutoCreate())
	t.Cleanup(s.Close)
	s.FailNext(2, "unassign", Status429("3"))
	s.FailNext(1, "", HTML(503))

	if a := post(t, s, seamclient.PathAssign, assignBody(cred1, userA)); a.status != 503 || !bytes.Contains(a.body, []byte("<html>")) {
		t.Errorf("any-path fault on assign: %d %s", a.status, a.body)
	}
	if s.IsAssigned(cred1, userA) {
		t.Error("a 503 fault applied the change")
	}
	post(t, s, seamclient.PathAssign, assignBody(cred1, userA))
	for range 2 {
		a := post(t, s, seamclient.PathUnassign, assignBody(cred1, userA))
		if a.status != 429 || a.header.Get("Retry-After") != "3" || a.errorType() != "rate_limited" {
			t.Errorf("unassign fault: %d %s retry-after %q", a.status, a.body, a.header.Get("Retry-After"))
		}
	}
	if a := post(t, s, seamclient.PathUnassign, assignBody(cred1, userA)); a.status != 200 || s.IsAssigned(cred1, userA) {
		t.Errorf("third unassign: %d", a.status)
	}
	s.FailNext(1, seamclient.PathGet, SeamError(409, ""))
	if a := post(t, s, seamclient.PathGet, `{"acs_credential_id":"`+cred1+`"}`); a.status != 409 || a.errorType() != "conflict" {
		t.Errorf("409 without a type: %d %s", a.status, a.body)
	}
}

func TestFake_DropFaultsCloseTheConnection(t *testing.T) {
	s := NewServer(WithAPIKey(key), WithAutoCreate())
	t.Cleanup(s.Close)

	s.FailNext(1, "assign", Reset())
	if a := send(t.Context(), s.Client(), "POST", s.URL+seamclient.PathAssign, key, assignBody(cred1, userA)); a.err == nil {
		t.Fatalf("reset answered %d", a.status)
	}
	if s.IsAssigned(cred1, userA) {
		t.Error("reset applied the change")
	}

	s.FailNext(1, "assign", AppliedThenDrop())
	if a := send(t.Context(), s.Client(), "POST", s.URL+seamclient.PathAssign, key, assignBody(cred1, userA)); a.err == nil {
		t.Fatalf("applied-then-drop answered %d", a.status)
	}
	if !s.IsAssigned(cred1, userA) || s.Effects(cred1, userA) != 1 {
		t.Error("applied-then-drop did not apply the change")
	}

	s.FailNext(1, "unassign", Timeout(20*time.Millisecond))
	if a := send(t.Context(), s.Client(), "POST", s.URL+seamclient.PathUnassign, key, assignBody(cred1, userA)); a.err == nil {
		t.Fatalf("timeout fault answered %d", a.status)
	}
	if !s.IsAssigned(cred1, userA) {
		t.Error("a timeout fault applied the change")
	}
}

func TestFake_TimeoutFaultHangsUntilTheClientGivesUp(t *testing.T) {
	s := NewServer(WithAPIKey(key), WithAutoCreate())
	t.Cleanup(s.Close)
	s.FailNext(1, "", Timeout(0))
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	a := send(ctx, s.Client(), "POST", s.URL+seamclient.PathAssign, key, assignBody(cred1, userA))
	if a.err == nil || time.Since(start) < 100*time.Millisecond {
		t.Errorf("answer %d after %v, want the client's timeout", a.status, time.Since(start))
	}
	if s.TotalEffects() != 0 {
		t.Error("a timed-out call applied")
	}
}

func TestFake_RandomFaultsAreRepeatableAndMatchTheirEffects(t *testing.T) {
	run := func() (outcomes []string, f *Server) {
		s := NewServer(WithAPIKey(key), WithAutoCreate(),
			WithRandomFaults(RandomFaults{Transient: 0.4, Permanent: 0.1, AppliedThenDrop: 0.1, Seed: 7}))
		t.Cleanup(s.Close)
		ok := 0
		for i := range 200 {
			cred := fmt.Sprintf("%08x-0000-4000-8000-000000000000", i)
			a := send(t.Context(), s.Client(), "POST", s.URL+seamclient.PathAssign, key, assignBody(cred, userA))
			switch {
			case a.err != nil:
				outcomes = append(outcomes, "dropped")
			case a.status == 200:
				ok++
				outcomes = append(outcomes, "200")
			default:
				outcomes = append(outcomes, fmt.Sprintf("%d/%s", a.status, a.errorType()))
			}
		}
		// Every effect is either an answered success or a drop after applying.
		if got := s.TotalEffects(); got < ok || got > ok+strings.Count(strings.Join(outcomes, ","), "dropped") {
			t.Errorf("%d effects for %d successes", got, ok)
		}
		return outcomes, s
	}
	first, s := run()
	second, _ := run()
	if strings.Join(first, ",") != strings.Join(second, ",") {
		t.Error("the same seed gave different faults")
	}
	seen := map[string]int{}
	for _, o := range first {
		seen[o]++
	}
	for _, want := range []string{"200", "dropped", "400/invalid_input", "502/", "500/internal_server_error", "503/"} {
		if seen[want] == 0 {
			t.Errorf("no %q among %v", want, seen)
		}
	}
	// A permanent fault is for one call only.
	s.SetRandomFaults(RandomFaults{})
	if a := post(t, s, seamclient.PathAssign, assignBody(cred1, userB)); a.status != 200 {
		t.Errorf("after disabling faults: %d", a.status)
	}
}

func TestFake_MaxConcurrentPerCredentialSeesOverlappingCalls(t *testing.T) {
	s := NewServer(WithAPIKey(key), WithAutoCreate(), WithLatency(time.Minute))
	t.Cleanup(s.Close)
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() { send(ctx, s.Client(), "POST", s.URL+seamclient.PathAssign, key, assignBody(cred1, userA)) })
	}
	wg.Go(func() { send(ctx, s.Client(), "POST", s.URL+seamclient.PathAssign, key, assignBody(cred2, userA)) })
	checkFor(t, 5*time.Second, func() bool { return s.MaxConcurrentPerCredential() == 3 && s.Calls("") == 4 })
	cancel()
	wg.Wait()
	if s.TotalEffects() != 0 {
		t.Error("calls abandoned during latency were applied")
	}

	// A fresh fake: the abandoned calls above stay in flight until the
	// server notices their connections closed.
	s = NewServer(WithAPIKey(key), WithAutoCreate())
	t.Cleanup(s.Close)
	for range 3 {
		post(t, s, seamclient.PathAssign, assignBody(cred1, userA))
	}
	if got := s.MaxConcurrentPerCredential(); got != 1 {
		t.Errorf("sequential calls peak at %d, want 1", got)
	}
}

func TestFake_RecordsRequestsWithoutTheAuthorizationHeader(t *testing.T) {
	s := NewServer(WithAPIKey(key), WithAutoCreate())
	t.Cleanup(s.Close)
	body := assignBody(cred1, userA)
	post(t, s, seamclient.PathAssign, body)
	reqs := s.Requests()
	if len(reqs) != 1 || reqs[0].Method != "POST" || reqs[0].Path != seamclient.PathAssign || string(reqs[0].Body) != body || reqs[0].At.IsZero() {
		t.Fatalf("requests %+v", reqs)
	}
	if reqs[0].Header.Get("Authorization") != "" || reqs[0].Header.Get("Content-Type") != "application/json" {
		t.Errorf("recorded header %v", reqs[0].Header)
	}
	reqs[0].Body[0] = 'X'
	if s.Requests()[0].Body[0] == 'X' {
		t.Error("Requests shares its buffers with the fake")
	}
	s.ResetCounters()
	if len(s.Requests()) != 0 || s.Calls("") != 0 || s.TotalEffects() != 0 || !s.IsAssigned(cred1, userA) {
		t.Error("ResetCounters must clear counters and keep state")
	}
}

func TestServer_CloseEndsCallsHeldByATimeoutFault(t *testing.T) {
	s := NewServer(WithAPIKey(key), WithAutoCreate())
	t.Cleanup(s.Close)
	s.FailNext(1, "", Timeout(0))
	done := make(chan answer, 1)
	go func() {
		done <- send(context.Background(), s.Client(), "POST", s.URL+seamclient.PathGet, key, `{"acs_credential_id":"`+cred1+`"}`)
	}()
	checkFor(t, 5*time.Second, func() bool { return s.Calls("") == 1 })
	s.Close()
	if a := <-done; a.err == nil {
		t.Errorf("held call answered %d after Close", a.status)
	}
}

func TestServe_RunsAStandaloneSimulatorUntilStopped(t *testing.T) {
	f := New(WithAutoCreate())
	url, stop, err := f.Serve(t.Context(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{}
	if a := send(t.Context(), c, "POST", url+seamclient.PathAssign, "any-token", assignBody(cred1, userA)); a.err != nil || a.status != 200 {
		t.Fatalf("simulator: %d %v", a.status, a.err)
	}
	f.FailNext(1, "", Timeout(0))
	held := make(chan answer, 1)
	go func() {
		held <- send(context.Background(), c, "POST", url+seamclient.PathGet, "t", `{"acs_credential_id":"`+cred1+`"}`)
	}()
	checkFor(t, 5*time.Second, func() bool { return f.Calls("get") == 1 })

	sctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := stop(sctx); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if a := <-held; a.err == nil {
		t.Errorf("held call answered %d after stop", a.status)
	}
	if a := send(t.Context(), c, "POST", url+seamclient.PathGet, "t", `{}`); a.err == nil {
		t.Error("the simulator still answers after stop")
	}
	if err := stop(sctx); err != nil {
		t.Errorf("second stop: %v", err)
	}
}

func TestServe_StopsWhenItsContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	f := New()
	url, stop, err := f.Serve(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer stop(context.Background())
	cancel()
	checkFor(t, 5*time.Second, func() bool {
		return send(t.Context(), &http.Client{}, "POST", url+seamclient.PathGet, "t", `{}`).err != nil
	})
}

func TestFake_RequestLogKeepsOnlyTheRecentRequests(t *testing.T) {
	srv := NewServer(WithAutoCreate(), WithRequestLog(10))
	t.Cleanup(srv.Close)
	for i := range 25 {
		body := fmt.Sprintf(`{"acs_credential_id":"66666666-6666-4666-8666-%012d"}`, i)
		resp, err := srv.Client().Post(srv.URL+"/acs/credentials/get", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	reqs := srv.Requests()
	if len(reqs) == 0 || len(reqs) > 10 {
		t.Fatalf("%d requests kept, want 1 to 10", len(reqs))
	}
	if last := string(reqs[len(reqs)-1].Body); !strings.Contains(last, "000000000024") {
		t.Fatalf("the newest request must be kept, last is %s", last)
	}
	if srv.Calls("") != 25 {
		t.Fatalf("calls are counted whatever the log keeps: %d", srv.Calls(""))
	}
}

func TestFake_ExclusiveAssignRefusesACredentialAnotherUserHolds(t *testing.T) {
	s := NewServer(WithAPIKey(key), WithAutoCreate(), WithExclusiveAssign())
	t.Cleanup(s.Close)
	for range 2 { // assigning to the holder stays a successful no-op
		if a := post(t, s, seamclient.PathAssign, assignBody(cred1, userA)); a.status != 200 || a.credential(t).str("acs_user_id") != userA {
			t.Fatalf("assign to a free credential: %d %s", a.status, a.body)
		}
	}
	if a := post(t, s, seamclient.PathAssign, assignBody(cred1, strings.ToUpper(userA))); a.status != 200 {
		t.Errorf("assign to the holder in upper case: %d %s", a.status, a.body)
	}
	before, _ := s.Credential(cred1)
	for _, body := range []string{assignBody(cred1, userB), identityBody(cred1, ident1)} {
		a := post(t, s, seamclient.PathAssign, body)
		if a.status != 409 || a.errorType() != seamclient.ErrorTypeAlreadyAssigned || !strings.Contains(string(a.body), "assigned to another user") {
			t.Errorf("assign %s to a held credential: %d %s", body, a.status, a.body)
		}
	}
	if after, _ := s.Credential(cred1); !bytes.Equal(before, after) {
		t.Errorf("a refused assign changed the credential:\n%s\n%s", before, after)
	}
	if s.Effects(cred1, userA) != 1 || s.Effects(cred1, userB) != 0 || s.TotalEffects() != 1 || s.Calls("assign") != 5 {
		t.Errorf("effects A %d, B %d, total %d, calls %d", s.Effects(cred1, userA), s.Effects(cred1, userB), s.TotalEffects(), s.Calls("assign"))
	}

	// Through the client: a 409 of that type, which Classify sees as transient.
	c, err := seamclient.New(s.URL, key)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Assign(t.Context(), seamclient.Request{ACSCredentialID: cred1, ACSUserID: userB})
	var ae *seamclient.APIError
	if !errors.As(err, &ae) || ae.StatusCode != 409 || !seamclient.IsType(err, seamclient.ErrorTypeAlreadyAssigned) {
		t.Errorf("client error %v", err)
	}

	// Once the holder is unassigned the credential is free for the next guest.
	post(t, s, seamclient.PathUnassign, assignBody(cred1, userA))
	if a := post(t, s, seamclient.PathAssign, identityBody(cred1, ident1)); a.status != 200 || !s.IsAssigned(cred1, ident1) {
		t.Fatalf("assign after unassign: %d %s", a.status, a.body)
	}
	// The identity's derived ACS user is the same holder.
	for _, body := range []string{assignBody(cred1, DerivedACSUserID(ident1)), identityBody(cred1, strings.ToUpper(ident1))} {
		if a := post(t, s, seamclient.PathAssign, body); a.status != 200 {
			t.Errorf("assign %s to the identity holder: %d %s", body, a.status, a.body)
		}
	}
	if a := post(t, s, seamclient.PathAssign, assignBody(cred1, userA)); a.status != 409 || !s.IsAssigned(cred1, ident1) {
		t.Errorf("assign over an identity holder: %d %s", a.status, a.body)
	}

	s.SetExclusiveAssign(false)
	if a := post(t, s, seamclient.PathAssign, assignBody(cred1, userB)); a.status != 200 || !s.IsAssigned(cred1, userB) || s.IsAssigned(cred1, ident1) {
		t.Errorf("with exclusive assign off the new user takes over: %d %s", a.status, a.body)
	}
	s.SetExclusiveAssign(true)
	if a := post(t, s, seamclient.PathAssign, assignBody(cred1, userA)); a.status != 409 {
		t.Errorf("switched back on: %d %s", a.status, a.body)
	}
}

func TestFake_ExclusiveAssignIsOffByDefault(t *testing.T) {
	s := NewServer(WithAPIKey(key), WithAutoCreate())
	t.Cleanup(s.Close)
	post(t, s, seamclient.PathAssign, assignBody(cred1, userA))
	if a := post(t, s, seamclient.PathAssign, assignBody(cred1, userB)); a.status != 200 || !s.IsAssigned(cred1, userB) {
		t.Errorf("default takeover: %d %s", a.status, a.body)
	}
	if a := post(t, s, seamclient.PathAssign, identityBody(cred1, ident1)); a.status != 200 || !s.IsAssigned(cred1, ident1) {
		t.Errorf("default takeover by identity: %d %s", a.status, a.body)
	}
}

func TestFake_StrictUnassignRefusesANonHolder(t *testing.T) {
	s := NewServer(WithAPIKey(key), WithAutoCreate(), WithStrictUnassign())
	t.Cleanup(s.Close)
	notAssigned := func(body, why string) {
		t.Helper()
		before, _ := s.Credential(cred1)
		a := post(t, s, seamclient.PathUnassign, body)
		if a.status != 400 || a.errorType() != seamclient.ErrorTypeNotAssigned {
			t.Errorf("%s: %d %s, want 400 %s", why, a.status, a.body, seamclient.ErrorTypeNotAssigned)
		}
		if after, _ := s.Credential(cred1); !bytes.Equal(before, after) {
			t.Errorf("%s: a refused unassign changed the credential", why)
		}
	}
	post(t, s, seamclient.PathGet, `{"acs_credential_id":"`+cred1+`"}`) // create it
	notAssigned(assignBody(cred1, userA), "nobody holds it")
	post(t, s, seamclient.PathAssign, assignBody(cred1, userA))
	notAssigned(assignBody(cred1, userB), "another user holds it")
	notAssigned(identityBody(cred1, ident1), "an identity that does not hold it")
	if !s.IsAssigned(cred1, userA) || s.Effects(cred1, userB) != 0 {
		t.Fatal("a refused unassign took the credential")
	}

	c, err := seamclient.New(s.URL, key)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Unassign(t.Context(), seamclient.Request{ACSCredentialID: cred1, ACSUserID: userB})
	var ae *seamclient.APIError
	if !errors.As(err, &ae) || ae.StatusCode != 400 || !seamclient.IsType(err, seamclient.ErrorTypeNotAssigned) {
		t.Errorf("client error %v", err)
	}

	if a := post(t, s, seamclient.PathUnassign, assignBody(cred1, strings.ToUpper(userA))); a.status != 200 || s.IsAssigned(cred1, userA) {
		t.Fatalf("unassign by the holder: %d %s", a.status, a.body)
	}
	notAssigned(assignBody(cred1, userA), "a second unassign")

	// An identity holder is matched by its identity or by its derived ACS user.
	for _, body := range []string{identityBody(cred1, strings.ToUpper(ident1)), assignBody(cred1, DerivedACSUserID(ident1))} {
		post(t, s, seamclient.PathAssign, identityBody(cred1, ident1))
		if a := post(t, s, seamclient.PathUnassign, body); a.status != 200 || s.IsAssigned(cred1, ident1) {
			t.Errorf("unassign %s from the identity holder: %d %s", body, a.status, a.body)
		}
	}
	if s.Effects(cred1, userA) != 2 || s.TotalEffects() != 6 {
		t.Errorf("effects A %d, total %d", s.Effects(cred1, userA), s.TotalEffects())
	}

	s.SetStrictUnassign(false)
	if a := post(t, s, seamclient.PathUnassign, assignBody(cred1, userB)); a.status != 200 {
		t.Errorf("with strict unassign off a non-holder's unassign is a no-op: %d %s", a.status, a.body)
	}
	s.SetStrictUnassign(true)
	notAssigned(assignBody(cred1, userB), "switched back on")
}

func TestFake_StrictUnassignIsOffByDefault(t *testing.T) {
	s := NewServer(WithAPIKey(key), WithAutoCreate())
	t.Cleanup(s.Close)
	if a := post(t, s, seamclient.PathUnassign, assignBody(cred1, userA)); a.status != 200 {
		t.Errorf("unassign of a free credential: %d %s", a.status, a.body)
	}
	post(t, s, seamclient.PathAssign, assignBody(cred1, userA))
	if a := post(t, s, seamclient.PathUnassign, identityBody(cred1, ident1)); a.status != 200 || !s.IsAssigned(cred1, userA) {
		t.Errorf("unassign by a non-holder: %d %s", a.status, a.body)
	}
	if s.TotalEffects() != 1 {
		t.Errorf("%d effects, want the one assign", s.TotalEffects())
	}
}

func TestFake_BothModesTogether(t *testing.T) {
	s := NewServer(WithAPIKey(key), WithAutoCreate(), WithExclusiveAssign(), WithStrictUnassign())
	t.Cleanup(s.Close)
	post(t, s, seamclient.PathAssign, assignBody(cred1, userA))
	if a := post(t, s, seamclient.PathAssign, assignBody(cred1, userB)); a.status != 409 {
		t.Errorf("assign over A: %d", a.status)
	}
	if a := post(t, s, seamclient.PathUnassign, assignBody(cred1, userB)); a.status != 400 {
		t.Errorf("unassign by B: %d", a.status)
	}
	post(t, s, seamclient.PathUnassign, assignBody(cred1, userA))
	if a := post(t, s, seamclient.PathAssign, assignBody(cred1, userB)); a.status != 200 || !s.IsAssigned(cred1, userB) {
		t.Errorf("assign to B after A's unassign: %d %s", a.status, a.body)
	}
}

func TestFake_HolderNamesTheCurrentHolder(t *testing.T) {
	s := NewServer(WithAPIKey(key), WithAutoCreate())
	t.Cleanup(s.Close)
	if u, i, ok := s.Holder(cred1); ok || u != "" || i != "" {
		t.Errorf("unknown credential: %q %q %v", u, i, ok)
	}
	post(t, s, seamclient.PathGet, `{"acs_credential_id":"`+cred1+`"}`)
	if u, i, ok := s.Holder(strings.ToUpper(cred1)); !ok || u != "" || i != "" {
		t.Errorf("free credential: %q %q %v", u, i, ok)
	}
	post(t, s, seamclient.PathAssign, assignBody(cred1, userA))
	if u, i, ok := s.Holder(cred1); !ok || u != userA || i != "" {
		t.Errorf("held by acs user: %q %q %v", u, i, ok)
	}
	post(t, s, seamclient.PathAssign, identityBody(cred1, ident1))
	if u, i, ok := s.Holder(cred1); !ok || u != DerivedACSUserID(ident1) || i != ident1 {
		t.Errorf("held by identity: %q %q %v", u, i, ok)
	}
	post(t, s, seamclient.PathUnassign, identityBody(cred1, ident1))
	if u, i, ok := s.Holder(cred1); !ok || u != "" || i != "" {
		t.Errorf("after unassign: %q %q %v", u, i, ok)
	}
}
