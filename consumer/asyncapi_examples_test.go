package consumer_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

// asyncAPIExamples returns every message example of asyncapi.yaml by name,
// as JSON, with the subject of its channel.
func asyncAPIExamples(t *testing.T) map[string]struct {
	subject string
	doc     []byte
} {
	t.Helper()
	b, err := fs.ReadFile(schemas.Files(), "asyncapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Channels map[string]struct {
			Address string `yaml:"address"`
		} `yaml:"channels"`
		Components struct {
			Messages map[string]struct {
				Name     string `yaml:"name"`
				Examples []struct {
					Name    string         `yaml:"name"`
					Payload map[string]any `yaml:"payload"`
				} `yaml:"examples"`
			} `yaml:"messages"`
		} `yaml:"components"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	out := map[string]struct {
		subject string
		doc     []byte
	}{}
	for _, m := range doc.Components.Messages {
		for _, ex := range m.Examples {
			j, err := json.Marshal(ex.Payload)
			if err != nil {
				t.Fatalf("%s: %v", ex.Name, err)
			}
			out[ex.Name] = struct {
				subject string
				doc     []byte
			}{m.Name, j}
		}
	}
	return out
}

// The AsyncAPI examples show what the worker really publishes: the events
// of each example go through a real worker (embedded NATS, the Seam fake),
// and each outcome example must match the outcome published, in shape:
// the same id format, source, type, fields and error message format.
// Fields the worker publishes and an example leaves out are allowed (the
// schema makes them optional); fields an example shows must be published.
func TestAsyncAPI_ExamplesMatchWhatTheWorkerPublishes(t *testing.T) {
	examples := asyncAPIExamples(t)
	input := func(name string) []byte {
		ex, ok := examples[name]
		if !ok {
			t.Fatalf("asyncapi.yaml has no example %s", name)
		}
		return ex.doc
	}
	cfg := fastConfig()
	// Seam failing transiently ends in retries_exhausted within a second.
	cfg.RetryFor = 300 * time.Millisecond
	cfg.RetryBudget = 100 * time.Millisecond
	cfg.GateProbeFirst, cfg.GateProbeMax = 20*time.Millisecond, 50*time.Millisecond
	cfg.NakDelay, cfg.NakDelayMax = 20*time.Millisecond, 50*time.Millisecond
	h := newHarness(t, cfg)

	// The example inputs name these credentials and users.
	checkIn := decodeInput(t, input("checkInWithAcsUser"))
	identityIn := decodeInput(t, input("checkInWithUserIdentity"))
	for _, c := range []string{checkIn.Data.ACSCredentialID, identityIn.Data.ACSCredentialID} {
		if err := h.seam.AddCredential(json.RawMessage(`{"acs_credential_id":"` + c + `","access_method":"card","is_managed":true,"errors":[],"warnings":[]}`)); err != nil {
			t.Fatal(err)
		}
	}
	h.seam.AddUser(checkIn.Data.ACSUserID)
	h.seam.AddUserIdentity(identityIn.Data.UserIdentityID)
	h.start(1)

	got := map[string]outcome{} // example name -> what the worker published
	step := func(name string, n int, publish func()) {
		t.Helper()
		before := len(h.outcomes())
		publish()
		all := h.waitOutcomes(before+n, 15*time.Second)
		got[name] = all[len(all)-1]
	}
	step("visionlineCardAssigned", 1, func() { h.publish(schemas.SubjectCheckedIn, input("checkInWithAcsUser"), "") })
	step("visionlineCardUnassigned", 1, func() { h.publish(schemas.SubjectCheckedOut, input("checkOut"), "") })
	step("staleCheckIn", 1, func() {
		// A check-in of the same guest made before the check-out, arriving
		// after the check-out was handled.
		late := bytes.Replace(input("checkInWithAcsUser"), []byte(checkIn.ID), []byte("1e7d3b5a-9c2f-4a6e-8d1b-3f5a7c9e0b24"), 1)
		late = bytes.Replace(late, []byte(checkIn.Time.UTC().Format(time.RFC3339)), []byte("2025-06-01T18:20:00Z"), 1)
		h.publish(schemas.SubjectCheckedIn, late, "")
	})
	step("mobileKeyAssignedToUserIdentity", 1, func() {
		h.seam.FailNext(1, "assign", seamtest.HTML(503))
		h.publish(schemas.SubjectCheckedIn, input("checkInWithUserIdentity"), "")
	})
	step("retriesExhausted", 1, func() {
		// A card the worker has not seen, held by the identity's guest: it
		// reads the card first, so the dead letter carries it.
		const card = "c4e2a7b9-3d5f-4e1a-8b6c-9f0d2e4a6b81"
		if err := h.seam.AddCredential(json.RawMessage(`{"acs_credential_id":"` + card + `","acs_user_id":"` +
			seamtest.DerivedACSUserID(identityIn.Data.UserIdentityID) + `","user_identity_id":"` + identityIn.Data.UserIdentityID +
			`","access_method":"card","is_managed":true,"errors":[],"warnings":[]}`)); err != nil {
			t.Fatal(err)
		}
		h.seam.FailNext(1000, "unassign", seamtest.HTML(503))
		out := bytes.Replace(input("checkOut"), []byte(decodeInput(t, input("checkOut")).ID), []byte("5e9b7c13-2f6a-4d8e-b1c4-7a3f9e2d6b50"), 1)
		out = bytes.Replace(out, []byte(checkIn.Data.ACSCredentialID), []byte(card), -1)
		out = bytes.Replace(out, []byte(`"acs_user_id":"`+checkIn.Data.ACSUserID+`"`), []byte(`"user_identity_id":"`+identityIn.Data.UserIdentityID+`"`), 1)
		h.publish(schemas.SubjectCheckedOut, out, "")
	})
	step("credentialNotFound", 1, func() {
		unknown := bytes.Replace(input("checkInWithAcsUser"), []byte(checkIn.ID), []byte("a3c1e9f2-6d4b-4f8e-9b27-1e5d8c0f7a63"), 1)
		unknown = bytes.Replace(unknown, []byte(checkIn.Data.ACSCredentialID), []byte("f2a8c4e6-1b3d-4a5f-8c7e-9d0b2e4f6a81"), -1)
		h.publish(schemas.SubjectCheckedIn, unknown, "")
	})
	step("truncatedJSON", 1, func() {
		doc := input("checkOut")
		h.publish(schemas.SubjectCheckedOut, doc[:len(doc)/2], "")
	})
	step("originalTooLarge", 1, func() {
		// Valid JSON, invalid event, too large to fit in its dead letter.
		big := bytes.Replace(input("checkInWithAcsUser"), []byte(`"reservation_id":"`+checkIn.Data.ReservationID+`"`),
			[]byte(`"reservation_id":{"notes":"`+strings.Repeat("x", 1047*1000)+`"}`), 1)
		h.publish(schemas.SubjectCheckedIn, big, "")
	})

	v, err := schemas.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	for name, real := range got {
		ex, ok := examples[name]
		if !ok {
			t.Errorf("asyncapi.yaml has no example %s", name)
			continue
		}
		if real.Subject != ex.subject {
			t.Errorf("%s: the worker published it on %s, the example is on %s", name, real.Subject, ex.subject)
			continue
		}
		if err := v.Validate(real.Subject, real.Raw); err != nil {
			t.Errorf("%s: what the worker published is not schema-valid: %v", name, err)
		}
		if err := v.Validate(ex.subject, ex.doc); err != nil {
			t.Errorf("%s: the example is not schema-valid: %v", name, err)
		}
		var exDoc, realDoc map[string]any
		_ = json.Unmarshal(ex.doc, &exDoc)
		_ = json.Unmarshal(real.Raw, &realDoc)
		diffs := sameShape("", exDoc, realDoc)
		for _, diff := range diffs {
			t.Errorf("%s: %s", name, diff)
		}
		if len(diffs) > 0 {
			raw := string(real.Raw)
			if len(raw) > 4000 {
				raw = raw[:4000] + "…"
			}
			t.Logf("%s: the worker published\n%s", name, raw)
		}
	}
	// Every outcome example is covered above.
	for name, ex := range examples {
		if _, ok := got[name]; !ok && !isInput(ex.subject) {
			t.Errorf("example %s (%s) is not checked against a real outcome", name, ex.subject)
		}
	}
}

func isInput(subject string) bool {
	return subject == schemas.SubjectCheckedIn || subject == schemas.SubjectCheckedOut
}

func decodeInput(t *testing.T, doc []byte) *schemas.GuestEvent {
	t.Helper()
	var ev schemas.GuestEvent
	if err := json.Unmarshal(doc, &ev); err != nil {
		t.Fatal(err)
	}
	return &ev
}

// exact names the members whose values must be equal, not only alike;
// formatted names those compared after variable parts (ids, numbers,
// hashes) are replaced.
var (
	exact = map[string]bool{
		"source": true, "type": true, "datacontenttype": true, "specversion": true,
		"data.reason": true, "data.original_event_encoding": true, "data.original_subject": true,
		"data.error.kind": true, "data.error.http_status": true, "data.error.seam_error_type": true,
	}
	formatted = map[string]bool{"id": true, "data.error.message": true}
)

// opaque members hold documents the worker passes through (Seam's
// credential, the original event): only their presence and type matter.
func opaque(path string) bool {
	return path == "data.acs_credential" || path == "data.original_event" || path == "data.request"
}

// sameShape compares an example with a published document: every member
// of the example is published, with the same JSON type; some must be equal
// (exact), some equal in format (formatted). Members only the published
// document has are allowed: the schema makes them optional.
func sameShape(path string, ex, real map[string]any) []string {
	var diffs []string
	for k, ev := range ex {
		p := strings.TrimPrefix(path+"."+k, ".")
		rv, ok := real[k]
		if !ok {
			diffs = append(diffs, fmt.Sprintf("the example shows %s, which the worker does not publish here", p))
			continue
		}
		if fmt.Sprintf("%T", ev) != fmt.Sprintf("%T", rv) {
			diffs = append(diffs, fmt.Sprintf("%s: example %T, published %T", p, ev, rv))
			continue
		}
		switch {
		case exact[p] && fmt.Sprint(ev) != fmt.Sprint(rv):
			diffs = append(diffs, fmt.Sprintf("%s: example %v, published %v", p, ev, rv))
		case formatted[p] && format(fmt.Sprint(ev)) != format(fmt.Sprint(rv)):
			diffs = append(diffs, fmt.Sprintf("%s: example %q, published %q: not the same format", p, ev, rv))
		case p == "time" || strings.HasSuffix(p, "_at") || p == "data.newer_event_time":
			if _, err := time.Parse(time.RFC3339Nano, fmt.Sprint(ev)); err != nil {
				diffs = append(diffs, fmt.Sprintf("%s: example %v is not RFC 3339", p, ev))
			}
		case opaque(p):
		default:
			if em, ok := ev.(map[string]any); ok {
				diffs = append(diffs, sameShape(p, em, rv.(map[string]any))...)
			}
		}
	}
	return diffs
}

var (
	uuidPattern = regexp.MustCompile(`[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}`)
	hexPattern  = regexp.MustCompile(`\b[0-9a-f]{8,}\b`)
	numPattern  = regexp.MustCompile(`[0-9]+`)
)

// format replaces the variable parts of an id or message: uuids, hex
// hashes (keeping their length) and numbers.
func format(s string) string {
	s = uuidPattern.ReplaceAllString(s, "<uuid>")
	s = hexPattern.ReplaceAllStringFunc(s, func(h string) string { return fmt.Sprintf("<hex%d>", len(h)) })
	return numPattern.ReplaceAllString(s, "<n>")
}
