package seamtest

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/keyworker/keyworker/seamclient"
)

// newClient is the real client, pointed at s with the test key.
func newClient(t *testing.T, s *Server) *seamclient.Client {
	t.Helper()
	c, err := seamclient.New(s.URL, key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// credN is the n-th of a family of credential ids, for calls that must not
// share a credential.
func credN(n int) string { return fmt.Sprintf("%08x-0000-4000-8000-000000000001", n) }

func assignVia(t *testing.T, c *seamclient.Client, cred string) error {
	t.Helper()
	_, err := c.Assign(t.Context(), seamclient.Request{ACSCredentialID: cred, ACSUserID: userA})
	return err
}

// wantReset checks what seamclient reports for a call whose connection the
// fake reset after reading it.
func wantReset(t *testing.T, err error) {
	t.Helper()
	var te *seamclient.TransportError
	if !errors.As(err, &te) || !te.Sent || seamclient.Classify(err) != seamclient.OutcomeUnknown {
		t.Errorf("reset: %v (%T), want a *TransportError sent, outcome unknown", err, err)
	}
}

// want503Page checks what seamclient reports for the gateway's 503 page.
func want503Page(t *testing.T, err error) {
	t.Helper()
	var ae *seamclient.APIError
	if !errors.As(err, &ae) || ae.StatusCode != 503 || ae.Type != "" || !bytes.Contains([]byte(ae.Body), []byte("<html>")) ||
		ae.RequestID != "" || seamclient.Classify(err) != seamclient.Transient {
		t.Errorf("503 page: %#v, want an *APIError 503 with an HTML body and no request id", err)
	}
}

func TestFake_DownFailsEveryCallWithoutApplyingIt(t *testing.T) {
	for _, tc := range []struct {
		mode  DownMode
		check func(*testing.T, error)
	}{
		{DownReset, wantReset},
		{Down503, want503Page},
	} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			s := NewServer(WithAPIKey(key), WithAutoCreate())
			t.Cleanup(s.Close)
			c := newClient(t, s)
			s.SetDown(tc.mode)
			for i := range 4 {
				tc.check(t, assignVia(t, c, credN(i)))
			}
			_, err := c.Get(t.Context(), cred1)
			tc.check(t, err)
			_, err = c.Unassign(t.Context(), seamclient.Request{ACSCredentialID: cred1, ACSUserID: userA})
			tc.check(t, err)
			if s.TotalEffects() != 0 || s.Calls("") != 6 || s.Calls("assign") != 4 || len(s.Requests()) != 6 {
				t.Errorf("effects %d, calls %d (assign %d), requests %d; want nothing applied, every call recorded",
					s.TotalEffects(), s.Calls(""), s.Calls("assign"), len(s.Requests()))
			}
			if _, ok := s.Credential(credN(0)); ok {
				t.Error("a call while down auto-created a credential")
			}

			s.SetDown(DownOff)
			if err := assignVia(t, c, cred1); err != nil || !s.IsAssigned(cred1, userA) {
				t.Fatalf("back up: %v", err)
			}
		})
	}
}

func TestFake_DownMixedAlternatesResetAnd503(t *testing.T) {
	s := NewServer(WithAPIKey(key), WithAutoCreate(), WithDown(DownMixed))
	t.Cleanup(s.Close)
	c := newClient(t, s)
	for i := range 6 {
		if err := assignVia(t, c, credN(i)); i%2 == 0 {
			wantReset(t, err)
		} else {
			want503Page(t, err)
		}
	}
	if s.Answers(0) != 3 || s.Answers(503) != 3 || s.TotalEffects() != 0 || s.Calls("") != 6 {
		t.Errorf("no answer %d, 503 %d, effects %d, calls %d", s.Answers(0), s.Answers(503), s.TotalEffects(), s.Calls(""))
	}
	s.SetDown(DownMixed) // set again: starts over with a reset
	wantReset(t, assignVia(t, c, cred1))
	s.SetDown(DownOff)
	if err := assignVia(t, c, cred1); err != nil || s.TotalEffects() != 1 {
		t.Fatalf("back up: %v, %d effects", err, s.TotalEffects())
	}
}

func TestFake_RefuseKeyAnswers401WhateverTheKey(t *testing.T) {
	s := NewServer(WithAPIKey(key), WithAutoCreate())
	t.Cleanup(s.Close)
	c := newClient(t, s)
	s.SetRefuseKey(true)
	for _, token := range []string{key, "any_other_key"} {
		a := send(t.Context(), s.Client(), http.MethodPost, s.URL+seamclient.PathAssign, token, assignBody(cred1, userA))
		if a.err != nil || a.status != 401 || a.errorType() != "unauthorized" {
			t.Errorf("token %q: %d %s (%v), want 401 unauthorized", token, a.status, a.body, a.err)
		}
	}
	err := assignVia(t, c, cred1)
	var ae *seamclient.APIError
	if !errors.As(err, &ae) || ae.StatusCode != 401 || ae.Type != "unauthorized" || seamclient.Classify(err) != seamclient.Permanent {
		t.Errorf("client error %v", err)
	}
	if s.TotalEffects() != 0 || s.Calls("") != 3 || s.Answers(401) != 3 {
		t.Errorf("effects %d, calls %d, 401s %d", s.TotalEffects(), s.Calls(""), s.Answers(401))
	}

	s.SetRefuseKey(false)
	if err := assignVia(t, c, cred1); err != nil || !s.IsAssigned(cred1, userA) {
		t.Fatalf("key accepted again: %v", err)
	}
	// The fixed key of WithAPIKey is still checked.
	if a := send(t.Context(), s.Client(), http.MethodPost, s.URL+seamclient.PathGet, "other", `{"acs_credential_id":"`+cred1+`"}`); a.status != 401 {
		t.Errorf("a wrong key after SetRefuseKey(false): %d", a.status)
	}

	refusing := NewServer(WithAutoCreate(), WithRefuseKey())
	t.Cleanup(refusing.Close)
	if a := post(t, refusing, seamclient.PathGet, `{"acs_credential_id":"`+cred1+`"}`); a.status != 401 {
		t.Errorf("WithRefuseKey: %d %s", a.status, a.body)
	}
}

func TestFake_RateLimitAdmitsTheBurstThenTheRate(t *testing.T) {
	const calls, perSecond, burst = 50, 10, 10
	s := NewServer(WithAPIKey(key), WithAutoCreate(), WithRateLimit(perSecond, burst))
	t.Cleanup(s.Close)
	c := newClient(t, s)
	start := time.Now()
	accepted := 0
	for i := range calls {
		err := assignVia(t, c, credN(i))
		if err == nil {
			accepted++
			continue
		}
		var ae *seamclient.APIError
		if !errors.As(err, &ae) || ae.StatusCode != 429 || ae.Type != "rate_limited" || !ae.HasRetryAfter ||
			ae.RetryAfter != time.Second || seamclient.Classify(err) != seamclient.Transient {
			t.Fatalf("call %d: %#v, want 429 rate_limited with Retry-After 1s", i, err)
		}
	}
	// The bucket refills at perSecond while the loop runs: count, don't time.
	most := burst + int(time.Since(start).Seconds()*perSecond) + 1
	if accepted < burst || accepted > most {
		t.Errorf("%d of %d calls accepted, want %d to %d", accepted, calls, burst, most)
	}
	if s.TotalEffects() != accepted || s.RateLimited() != calls-accepted ||
		s.Answers(429) != calls-accepted || s.Answers(200) != accepted || s.Calls("") != calls {
		t.Errorf("effects %d, rate limited %d, 429s %d, 200s %d, calls %d for %d accepted",
			s.TotalEffects(), s.RateLimited(), s.Answers(429), s.Answers(200), s.Calls(""), accepted)
	}
	created := 0
	for i := range calls {
		if _, ok := s.Credential(credN(i)); ok {
			created++
		}
	}
	if created != accepted {
		t.Errorf("%d credentials auto-created for %d accepted calls", created, accepted)
	}

	s.SetRateLimit(0, 0)
	for i := range 20 {
		if err := assignVia(t, c, credN(100+i)); err != nil {
			t.Fatalf("limit off, call %d: %v", i, err)
		}
	}
}

func TestFake_RateLimitRetryAfterIsTheWaitForAToken(t *testing.T) {
	// One call every 100 s: the second call waits almost all of it.
	s := NewServer(WithAPIKey(key), WithAutoCreate())
	t.Cleanup(s.Close)
	s.SetRateLimit(0.01, 0) // burst 0 means 1
	c := newClient(t, s)
	if err := assignVia(t, c, cred1); err != nil {
		t.Fatal(err)
	}
	a := post(t, s, seamclient.PathAssign, assignBody(cred2, userA))
	secs, err := strconv.Atoi(a.header.Get("Retry-After"))
	if a.status != 429 || a.errorType() != "rate_limited" || err != nil || secs < 90 || secs > 100 {
		t.Errorf("%d %s, Retry-After %q, want 429 rate_limited and about 100", a.status, a.body, a.header.Get("Retry-After"))
	}
	_, err = c.Get(t.Context(), cred1)
	if d, ok := seamclient.RetryAfter(err); !ok || d < 90*time.Second || d > 100*time.Second {
		t.Errorf("client sees Retry-After %v %v (%v)", d, ok, err)
	}
	if s.IsAssigned(cred2, userA) || s.TotalEffects() != 1 || s.RateLimited() != 2 {
		t.Errorf("effects %d, rate limited %d", s.TotalEffects(), s.RateLimited())
	}
	s.ResetCounters()
	if s.RateLimited() != 0 || s.Answers(429) != 0 {
		t.Error("ResetCounters kept the answer counts")
	}
	if post(t, s, seamclient.PathGet, `{"acs_credential_id":"`+cred1+`"}`).status != 429 {
		t.Error("ResetCounters must keep the rate limit")
	}
}

func TestFake_TheEdgeComesBeforeFaultsAndInOrder(t *testing.T) {
	s := NewServer(WithAPIKey(key), WithAutoCreate(), WithRateLimit(0.01, 1))
	t.Cleanup(s.Close)
	s.FailNext(1, "", SeamError(500, "internal_server_error"))

	// Down beats a refused key, which beats the rate limit; none of them
	// takes a token or the queued fault.
	s.SetDown(Down503)
	s.SetRefuseKey(true)
	if a := post(t, s, seamclient.PathGet, `{"acs_credential_id":"`+cred1+`"}`); a.status != 503 {
		t.Errorf("down and refusing: %d", a.status)
	}
	s.SetDown(DownOff)
	if a := post(t, s, seamclient.PathGet, `{"acs_credential_id":"`+cred1+`"}`); a.status != 401 {
		t.Errorf("refusing: %d", a.status)
	}
	s.SetRefuseKey(false)
	if a := post(t, s, seamclient.PathGet, `{"acs_credential_id":"`+cred1+`"}`); a.status != 500 {
		t.Errorf("first call through the edge: %d %s, want the queued fault", a.status, a.body)
	}
	if a := post(t, s, seamclient.PathGet, `{"acs_credential_id":"`+cred1+`"}`); a.status != 429 {
		t.Errorf("second call: %d, want the rate limit", a.status)
	}
	if s.Answers(503) != 1 || s.Answers(401) != 1 || s.Answers(500) != 1 || s.Answers(429) != 1 || s.RateLimited() != 1 {
		t.Errorf("answers 503 %d, 401 %d, 500 %d, 429 %d (rate limited %d)",
			s.Answers(503), s.Answers(401), s.Answers(500), s.Answers(429), s.RateLimited())
	}
}

func TestFake_EdgeWorksInTheStandaloneSimulator(t *testing.T) {
	f := New(WithAutoCreate(), WithDown(DownReset))
	url, stop, err := f.Serve(t.Context(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer stop(t.Context())
	c, err := seamclient.New(url, "any")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Get(t.Context(), cred1)
	wantReset(t, err)
	f.SetDown(DownOff)
	if _, err := c.Get(t.Context(), cred1); err != nil {
		t.Fatal(err)
	}
	if f.Answers(0) != 1 || f.Answers(200) != 1 {
		t.Errorf("no answer %d, 200 %d", f.Answers(0), f.Answers(200))
	}
}

func TestDownMode_String(t *testing.T) {
	for m, want := range map[DownMode]string{DownOff: "off", DownReset: "reset", Down503: "503", DownMixed: "mixed", 9: "DownMode(9)"} {
		if m.String() != want {
			t.Errorf("%d: %q", int(m), m.String())
		}
	}
}
