package seamclient_test

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/keyworker/keyworker/seamclient"
)

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestWithTransportWrapper_EveryRequestGoesThroughTheWrapper(t *testing.T) {
	var seen atomic.Int32
	wrap := func(base http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			seen.Add(1)
			return base.RoundTrip(r)
		})
	}
	srv, c := newFake(t, autoCreate(), seamclient.WithTransportWrapper(wrap))
	if _, err := c.Assign(context.Background(), seamclient.Request{ACSCredentialID: credID, ACSUserID: userID}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(context.Background(), credID); err != nil {
		t.Fatal(err)
	}
	if seen.Load() != 2 || !srv.IsAssigned(credID, userID) {
		t.Fatalf("wrapper saw %d requests, assigned %v: want 2 and assigned", seen.Load(), srv.IsAssigned(credID, userID))
	}
	if _, err := seamclient.New(srv.URL, apiKey, seamclient.WithTransportWrapper(nil)); !errors.Is(err, seamclient.ErrInvalidOption) {
		t.Fatalf("nil wrapper: %v, want ErrInvalidOption", err)
	}
}
