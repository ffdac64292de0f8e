package dlq_test

import (
	"strings"
	"testing"

	"github.com/keyworker/keyworker/consumer/dlq"
)

const credentialDoc = `{"acs_credential":{"acs_credential_id":"c1","code":"482913","access_method":"code",` +
	`"card_number":1234567,"nested":{"code":{"digits":"7777"}}},"error":{"kind":"permanent","message":"a <b> & c"},"n":1.50,"list":[],"obj":{}}`

func TestPretty_MasksCodesAndCardNumbersUnlessRevealed(t *testing.T) {
	got, err := dlq.Pretty([]byte(credentialDoc), false)
	if err != nil {
		t.Fatal(err)
	}
	out := string(got)
	for _, secret := range []string{"482913", "1234567", "7777"} {
		if strings.Contains(out, secret) {
			t.Errorf("masked output shows %q:\n%s", secret, out)
		}
	}
	if !strings.Contains(out, `"code": "****"`) || !strings.Contains(out, `"card_number": "****"`) {
		t.Errorf("codes not visibly masked:\n%s", out)
	}

	revealed, err := dlq.Pretty([]byte(credentialDoc), true)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{`"code": "482913"`, `"card_number": 1234567`, `"digits": "7777"`} {
		if !strings.Contains(string(revealed), secret) {
			t.Errorf("revealed output lacks %s:\n%s", secret, revealed)
		}
	}
}

func TestPretty_KeepsOrderNumbersAndTextAndIndents(t *testing.T) {
	got, err := dlq.Pretty([]byte(`{"z":1.50,"a":"<b> & é","e":[],"o":{},"l":[1,{"k":null}]}`), true)
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "z": 1.50,
  "a": "<b> & é",
  "e": [],
  "o": {},
  "l": [
    1,
    {
      "k": null
    }
  ]
}`
	if string(got) != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func TestPretty_RefusesWhatIsNotOneJSONValue(t *testing.T) {
	for _, in := range []string{"", "not json", `{"a":1} {"b":2}`, `{"a":`} {
		if _, err := dlq.Pretty([]byte(in), false); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}
