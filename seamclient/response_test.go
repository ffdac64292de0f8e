package seamclient

import (
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"regexp"
	"testing"
	"time"
	"unicode/utf8"
)

// decodeFailure matches every reason a 2xx body can be refused with: none
// of them quotes the body.
var decodeFailure = regexp.MustCompile(`^seamclient: \d+ response could not be decoded: ` +
	`(body is empty|body is not a json object|acs_credential is not a json object|"ok" is false|` +
	`invalid json at offset \d+|json field "(ok|acs_credential|error)": want \w+|invalid json)$`)

// FuzzParseResponse feeds the parser arbitrary statuses, headers and bodies.
// It must not panic, must type every failure, and must never quote a 2xx body.
func FuzzParseResponse(f *testing.F) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, status int, retryAfter string, body []byte) {
		h := http.Header{}
		h.Set("Retry-After", retryAfter)
		resp, err := parseResponse(status, h, body, now)
		if status < 200 || status > 299 {
			var ae *APIError
			if resp != nil || !errors.As(err, &ae) || ae.StatusCode != status {
				t.Fatalf("status %d: resp %v, err %v", status, resp, err)
			}
			if len(ae.Body) > bodySnippetLen || !utf8.ValidString(ae.Body) || ae.RetryAfter < 0 {
				t.Fatalf("APIError %+v", ae)
			}
			if !ae.HasRetryAfter && ae.RetryAfter != 0 {
				t.Fatalf("RetryAfter %v without HasRetryAfter", ae.RetryAfter)
			}
			_ = ae.Error()
			_ = Classify(err)
			return
		}
		if err != nil {
			var re *ResponseError
			if resp != nil || !errors.As(err, &re) || Classify(err) != OutcomeUnknown {
				t.Fatalf("2xx: resp %v, err %v (%T)", resp, err, err)
			}
			if !decodeFailure.MatchString(err.Error()) {
				t.Fatalf("2xx error may quote the body: %q", err)
			}
			return
		}
		if resp.StatusCode != status {
			t.Fatalf("status %d, want %d", resp.StatusCode, status)
		}
		if resp.Credential != nil && (resp.Credential[0] != '{' || !json.Valid(resp.Credential)) {
			t.Fatalf("credential %q is not a json object", resp.Credential)
		}
	})
}

func TestParseResponse_SuccessShapes(t *testing.T) {
	cred := `{"acs_credential_id":"x","visionline_metadata":{ "a" : 1 }}`
	cases := []struct {
		status  int
		body    string
		want    string // credential, "" for none
		wantErr bool
	}{
		{200, `{"acs_credential":` + cred + `,"ok":true}`, cred, false},
		{200, ` {} `, "", false},
		{200, `{"ok":true}`, "", false},
		{200, `{"acs_credential":null,"ok":true}`, "", false},
		{204, ``, "", false},
		{200, ``, "", true},
		{200, `[]`, "", true},
		{200, `null`, "", true},
		{200, `{"acs_credential":[1],"ok":true}`, "", true},
		{200, `{"acs_credential":` + cred + `,"ok":false}`, "", true},
		{200, `{"error":{"type":"x"}}`, "", true},
		{200, `{"acs_credential":` + cred, "", true},
	}
	for _, tc := range cases {
		resp, err := parseResponse(tc.status, http.Header{"Seam-Request-Id": {"r1"}}, []byte(tc.body), time.Now())
		if tc.wantErr {
			var re *ResponseError
			if !errors.As(err, &re) || re.RequestID != "r1" {
				t.Errorf("%d %s: err %v, want *ResponseError", tc.status, tc.body, err)
			}
			continue
		}
		if err != nil || string(resp.Credential) != tc.want || resp.RequestID != "r1" {
			t.Errorf("%d %s: resp %+v, err %v", tc.status, tc.body, resp, err)
		}
	}
}

func TestParseResponse_ErrorShapes(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		name       string
		status     int
		retryAfter string
		body       string
		want       APIError
	}{
		{"seam envelope", 404, "", `{"error":{"type":"acs_credential_not_found","message":"gone","request_id":"body-id"},"ok":false}`,
			APIError{StatusCode: 404, Type: "acs_credential_not_found", Message: "gone", RequestID: "body-id"}},
		{"api gateway message", 500, "", `{"message":"Internal server error"}`,
			APIError{StatusCode: 500, Message: "Internal server error"}},
		{"error not an object", 409, "", `{"error":"busy"}`, APIError{StatusCode: 409}},
		{"type of wrong kind", 400, "", `{"error":{"type":7,"message":"m"}}`, APIError{StatusCode: 400, Message: "m"}},
		{"html", 502, "", "<html>\r\n<b>bad</b></html>", APIError{StatusCode: 502, Body: "<html>  <b>bad</b></html>"}},
		{"past date", 503, "Sun, 22 Nov 2026 12:00:00 GMT", ``, APIError{StatusCode: 503, HasRetryAfter: true}},
		{"huge seconds", 429, "99999999999999999", ``, APIError{StatusCode: 429, HasRetryAfter: true, RetryAfter: time.Duration(math.MaxInt64)}},
		{"garbage retry-after", 429, "soon", ``, APIError{StatusCode: 429}},
		{"negative seconds", 429, "-5", ``, APIError{StatusCode: 429}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			h.Set("Retry-After", tc.retryAfter)
			_, err := parseResponse(tc.status, h, []byte(tc.body), now)
			var ae *APIError
			if !errors.As(err, &ae) {
				t.Fatalf("err %v", err)
			}
			if *ae != tc.want {
				t.Errorf("got  %+v\nwant %+v", *ae, tc.want)
			}
		})
	}
}

func TestParseResponse_BodySnippetIsBoundedAndValidUTF8(t *testing.T) {
	body := make([]byte, 0, 600)
	for len(body) < 600 {
		body = append(body, "é"...) // two bytes: 256 cuts one in half
	}
	body = append([]byte("x"), body...)
	_, err := parseResponse(502, http.Header{}, body, time.Now())
	var ae *APIError
	if !errors.As(err, &ae) || len(ae.Body) > bodySnippetLen || !utf8.ValidString(ae.Body) || len(ae.Body) < 250 {
		t.Fatalf("snippet %q (%d bytes)", ae.Body, len(ae.Body))
	}
}
