package schemas_test

import (
	"encoding/json"
	"errors"
	"io/fs"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/keyworker/keyworker/schemas"
)

func loadAsyncAPI(t *testing.T) map[string]any {
	t.Helper()
	b, err := fs.ReadFile(schemas.Files(), "asyncapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("parse asyncapi.yaml: %v", err)
	}
	if doc["asyncapi"] != "3.0.0" {
		t.Fatalf("asyncapi = %v, want 3.0.0", doc["asyncapi"])
	}
	return doc
}

// resolve follows a local $ref ("#/a/b") in doc.
func resolve(t *testing.T, doc map[string]any, node any) map[string]any {
	t.Helper()
	m, ok := node.(map[string]any)
	if !ok {
		t.Fatalf("not an object: %v", node)
	}
	ref, ok := m["$ref"].(string)
	if !ok {
		return m
	}
	path, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		t.Fatalf("non-local $ref %q", ref)
	}
	var cur any = doc
	for _, tok := range strings.Split(path, "/") {
		obj, ok := cur.(map[string]any)
		if !ok || obj[tok] == nil {
			t.Fatalf("$ref %q does not resolve", ref)
		}
		cur = obj[tok]
	}
	return resolve(t, doc, cur)
}

func mapOf(t *testing.T, v any) map[string]any {
	t.Helper()
	m, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("want an object, got %T", v)
	}
	return m
}

func TestContract_EverySubjectHasASchemaAndAChannel(t *testing.T) {
	doc := loadAsyncAPI(t)
	v := newValidator(t)
	want := []string{
		schemas.SubjectCheckedIn, schemas.SubjectCheckedOut,
		schemas.SubjectAssigned, schemas.SubjectUnassigned, schemas.SubjectSkipped,
		schemas.DeadLetterPrefix + schemas.SubjectCheckedIn, schemas.DeadLetterPrefix + schemas.SubjectCheckedOut,
	}
	if got := schemas.Subjects(); !slices.Equal(got, want) {
		t.Fatalf("Subjects() = %v, want %v", got, want)
	}
	addresses := map[string]bool{}
	for _, ch := range mapOf(t, doc["channels"]) {
		addresses[mapOf(t, ch)["address"].(string)] = true
	}
	for _, subject := range want {
		file, ok := schemas.SchemaFile(subject)
		if !ok {
			t.Errorf("%s: no schema file", subject)
			continue
		}
		if _, err := fs.Stat(schemas.Files(), file); err != nil {
			t.Errorf("%s: %v", subject, err)
		}
		if !addresses[subject] {
			t.Errorf("%s: no channel in asyncapi.yaml", subject)
		}
		// A schema exists: the validator judges the document, not the subject.
		var ve *schemas.ValidationError
		if err := v.Validate(subject, []byte(`{}`)); !errors.As(err, &ve) || strings.HasPrefix(ve.Reason, "unknown subject") {
			t.Errorf("%s: Validate({}) = %v, want a schema violation", subject, err)
		}
		delete(addresses, subject)
	}
	for extra := range addresses {
		t.Errorf("channel %s is not a subject constant", extra)
	}
}

func TestContract_OperationsReferenceDeclaredChannelsAndMessages(t *testing.T) {
	doc := loadAsyncAPI(t)
	for name, op := range mapOf(t, doc["operations"]) {
		op := mapOf(t, op)
		if a := op["action"]; a != "send" && a != "receive" {
			t.Errorf("operation %s: action %v", name, a)
		}
		resolve(t, doc, op["channel"])
		chRef := mapOf(t, op["channel"])["$ref"].(string)
		for _, m := range op["messages"].([]any) {
			ref := mapOf(t, m)["$ref"].(string)
			if !strings.HasPrefix(ref, chRef+"/messages/") {
				t.Errorf("operation %s: message %s is not a message of its channel %s", name, ref, chRef)
			}
			resolve(t, doc, m)
		}
	}
}

func TestContract_EveryExampleValidatesAgainstItsChannelSchema(t *testing.T) {
	doc := loadAsyncAPI(t)
	v := newValidator(t)
	examples := 0
	for chName, ch := range mapOf(t, doc["channels"]) {
		ch := mapOf(t, ch)
		subject := ch["address"].(string)
		wantFile, _ := schemas.SchemaFile(subject)
		for msgName, m := range mapOf(t, ch["messages"]) {
			msg := resolve(t, doc, m)
			if msg["name"] != subject || msg["contentType"] != schemas.ContentType {
				t.Errorf("%s/%s: name %v, contentType %v", chName, msgName, msg["name"], msg["contentType"])
			}
			payload := mapOf(t, msg["payload"])
			if f := payload["schemaFormat"]; f != "application/schema+json;version=draft-2020-12" {
				t.Errorf("%s/%s: schemaFormat %v", chName, msgName, f)
			}
			if ref := mapOf(t, payload["schema"])["$ref"]; ref != "./"+wantFile {
				t.Errorf("%s/%s: payload $ref %v, want ./%s (the schema the validator uses)", chName, msgName, ref, wantFile)
			}
			exs, _ := msg["examples"].([]any)
			if len(exs) == 0 {
				t.Errorf("%s/%s: no examples", chName, msgName)
			}
			for _, ex := range exs {
				ex := mapOf(t, ex)
				name := chName + "/" + ex["name"].(string)
				b, err := json.Marshal(ex["payload"])
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				examples++
				if err := v.Validate(subject, b); err != nil {
					t.Errorf("%s: %v", name, err)
					continue
				}
				checkExampleDecodes(t, v, name, subject, b)
			}
		}
	}
	if examples < 9 {
		t.Errorf("only %d examples", examples)
	}
}

// checkExampleDecodes decodes an example with the Go API of its subject:
// input events decode, and dead letters give back an original matching
// their own sha256.
func checkExampleDecodes(t *testing.T, v *schemas.Validator, name, subject string, b []byte) {
	t.Helper()
	switch {
	case slices.Contains(schemas.InputSubjects(), subject):
		if _, err := v.DecodeGuestEvent(subject, b); err != nil {
			t.Errorf("%s: DecodeGuestEvent: %v", name, err)
		}
	case slices.Contains(schemas.DeadLetterSubjects(), subject):
		_, dl, err := schemas.DecodeDeadLetterEvent(b)
		if err != nil {
			t.Errorf("%s: DecodeDeadLetterEvent: %v", name, err)
			return
		}
		if _, err := dl.Original(); err != nil && !errors.Is(err, schemas.ErrOriginalOmitted) {
			t.Errorf("%s: Original: %v", name, err)
		}
	}
}

func TestContract_CredentialExampleCarriesVisionlineMetadata(t *testing.T) {
	doc := loadAsyncAPI(t)
	msg := mapOf(t, mapOf(t, mapOf(t, doc["components"])["messages"])["credentialAssigned"])
	for _, ex := range msg["examples"].([]any) {
		data := mapOf(t, mapOf(t, mapOf(t, ex)["payload"])["data"])
		cred := mapOf(t, data["acs_credential"])
		if vm, ok := cred["visionline_metadata"].(map[string]any); ok && vm["card_function_type"] == "guest" {
			return
		}
	}
	t.Error("no credential.assigned example carries visionline_metadata")
}

func TestNewEnvelope_GoTypesProduceValidDocuments(t *testing.T) {
	v := newValidator(t)
	at := time.Date(2025, 6, 1, 14, 3, 29, 604_000_000, time.FixedZone("CEST", 2*3600))
	guest := schemas.GuestData{ACSCredentialID: credID, UserIdentityID: identityID, ReservationID: "R-1"}
	cred := json.RawMessage(`{"acs_credential_id":"` + credID + `","access_method":"card","visionline_metadata":{"card_function_type":"guest","is_valid":true}}`)
	cases := []struct {
		subject string
		data    any
	}{
		{schemas.SubjectCheckedIn, guest},
		{schemas.SubjectCheckedOut, schemas.GuestData{ACSCredentialID: credID, ACSUserID: acsUserID}},
		{schemas.SubjectAssigned, schemas.CredentialResult{
			GuestData: guest, ACSCredential: cred, Attempts: 1,
			SourceEventID: "evt-1", SourceEventSource: pmsSource,
		}},
		{schemas.SubjectUnassigned, schemas.CredentialResult{
			GuestData: guest, ACSCredential: cred, Attempts: 3,
			SourceEventID: "evt-2", SourceEventSource: pmsSource, ReplayOf: 17,
		}},
		{schemas.SubjectSkipped, schemas.Skipped{
			GuestData: guest, Reason: schemas.SkipReasonStale, NewerEventTime: at.Add(time.Hour),
			SourceEventID: "evt-3", SourceEventSource: pmsSource,
		}},
	}
	for _, tc := range cases {
		t.Run(tc.subject, func(t *testing.T) {
			doc, err := schemas.NewEnvelope(tc.subject, "//keyworker/test", "id-1", "R-1", at, tc.data)
			if err != nil {
				t.Fatalf("NewEnvelope: %v", err)
			}
			if err := v.Validate(tc.subject, doc); err != nil {
				t.Fatalf("Validate: %v\n%s", err, doc)
			}
			var env schemas.Envelope
			if err := json.Unmarshal(doc, &env); err != nil {
				t.Fatal(err)
			}
			if env.SpecVersion != "1.0" || env.DataContentType != "application/json" || !env.Time.Equal(at) || env.Type != tc.subject {
				t.Errorf("envelope = %+v", env)
			}
		})
	}
}

func TestNewEnvelope_RefusesMissingAttributes(t *testing.T) {
	at := time.Now()
	for name, call := range map[string]func() ([]byte, error){
		"type":   func() ([]byte, error) { return schemas.NewEnvelope("", "s", "i", "", at, struct{}{}) },
		"source": func() ([]byte, error) { return schemas.NewEnvelope("t", "", "i", "", at, struct{}{}) },
		"id":     func() ([]byte, error) { return schemas.NewEnvelope("t", "s", "", "", at, struct{}{}) },
		"time":   func() ([]byte, error) { return schemas.NewEnvelope("t", "s", "i", "", time.Time{}, struct{}{}) },
		"data":   func() ([]byte, error) { return schemas.NewEnvelope("t", "s", "i", "", at, make(chan int)) },
	} {
		if _, err := call(); err == nil || !strings.HasPrefix(err.Error(), "schemas: ") {
			t.Errorf("missing %s: err = %v", name, err)
		}
	}
}

func TestSubjects_HelpersAgreeWithConstants(t *testing.T) {
	if got := schemas.InputSubjects(); !slices.Equal(got, []string{"guest.checked_in", "guest.checked_out"}) {
		t.Errorf("InputSubjects = %v", got)
	}
	if got := schemas.OutputSubjects(); !slices.Equal(got, []string{"credential.assigned", "credential.unassigned", "credential.skipped"}) {
		t.Errorf("OutputSubjects = %v", got)
	}
	if got := schemas.DeadLetterSubject(schemas.SubjectCheckedOut); got != "deadletter.guest.checked_out" {
		t.Errorf("DeadLetterSubject = %q", got)
	}
	// Callers may modify what they get.
	in := schemas.InputSubjects()
	in[0] = "x"
	if schemas.InputSubjects()[0] != schemas.SubjectCheckedIn {
		t.Error("InputSubjects shares its slice")
	}
}
