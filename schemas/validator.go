package schemas

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sort"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
)

// MaxDocumentSize is the largest document Validate and DecodeGuestEvent
// parse; larger ones are rejected up front so a hostile producer cannot make
// the worker parse an arbitrarily large body. It is well above NATS's
// default max_payload (1 MiB).
const MaxDocumentSize = 8 << 20

// maxReasonLen caps ValidationError.Reason: reasons end up in logs and dead
// letters, and must never echo a large input.
const maxReasonLen = 300

// ValidationError says why a document is not a valid event of Subject. It
// is returned for invalid JSON, schema violations, a CloudEvents type that
// differs from the subject and unknown subjects. Reason is one short,
// human-readable line that never quotes more than a few bytes of the input.
// Err, when set, is the underlying parse or schema error (its text may be
// long and quote input: log Reason, not Err).
type ValidationError struct {
	Subject string
	Reason  string
	Err     error
}

func (e *ValidationError) Error() string {
	return "schemas: invalid " + e.Subject + " event: " + e.Reason
}

func (e *ValidationError) Unwrap() error { return e.Err }

func invalid(subject, reason string, err error) *ValidationError {
	return &ValidationError{
		Subject: printable(subject, 100),
		Reason:  printable(reason, maxReasonLen),
		Err:     err,
	}
}

// Validator validates documents against the embedded schemas. The schemas
// are compiled once by NewValidator; a Validator is safe for concurrent use.
type Validator struct {
	schemas map[string]*jsonschema.Schema // by subject; read-only after NewValidator
}

// NewValidator compiles the embedded schemas of every subject. Format
// assertions (uuid, date-time) and content assertions (base64) are on.
// An error means the embedded contract itself is broken.
func NewValidator() (*Validator, error) {
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	c.AssertContent()
	// Every $ref resolves to an embedded file; an empty loader makes sure a
	// typo fails here instead of fetching from the network.
	c.UseLoader(jsonschema.SchemeURLLoader{})

	entries, err := fs.ReadDir(files, "json")
	if err != nil {
		return nil, fmt.Errorf("schemas: read embedded schemas: %w", err)
	}
	for _, e := range entries {
		name := "json/" + e.Name()
		b, err := fs.ReadFile(files, name)
		if err != nil {
			return nil, fmt.Errorf("schemas: read %s: %w", name, err)
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("schemas: parse %s: %w", name, err)
		}
		url := schemaBaseURL + name
		if obj, _ := doc.(map[string]any); obj == nil || obj["$id"] != url {
			return nil, fmt.Errorf("schemas: %s: $id must be %q", name, url)
		}
		if err := c.AddResource(url, doc); err != nil {
			return nil, fmt.Errorf("schemas: add %s: %w", name, err)
		}
	}

	v := &Validator{schemas: make(map[string]*jsonschema.Schema)}
	byFile := make(map[string]*jsonschema.Schema)
	for _, subject := range Subjects() {
		file, ok := SchemaFile(subject)
		if !ok {
			return nil, fmt.Errorf("schemas: no schema file for subject %s", subject)
		}
		sch, ok := byFile[file]
		if !ok {
			if sch, err = c.Compile(schemaBaseURL + file); err != nil {
				return nil, fmt.Errorf("schemas: compile %s: %w", file, err)
			}
			byFile[file] = sch
		}
		v.schemas[subject] = sch
	}
	return v, nil
}

// Validate checks that doc is a valid CloudEvents document for subject:
// well-formed UTF-8 JSON, valid against the subject's schema, with a
// CloudEvents type equal to subject and a time Go can parse. It returns nil
// or a *ValidationError.
func (v *Validator) Validate(subject string, doc []byte) error {
	if _, verr := v.validate(subject, doc); verr != nil {
		return verr
	}
	return nil
}

// DecodeGuestEvent validates raw as an event of subject, which must be
// guest.checked_in or guest.checked_out, and returns it decoded. Any problem
// with the input is a *ValidationError: the event can never become valid
// and belongs in the dead-letter stream. It never panics.
//
// Fields are read with exact, case-sensitive names (encoding/json would
// also accept "ACS_USER_ID"), so the decoded event is exactly what the
// schema validated.
func (v *Validator) DecodeGuestEvent(subject string, raw []byte) (*GuestEvent, error) {
	if !isInputSubject(subject) {
		return nil, invalid(subject, fmt.Sprintf("subject %q is not a guest event subject", clip(subject, 64)), nil)
	}
	p, verr := v.validate(subject, raw)
	if verr != nil {
		return nil, verr
	}
	data, _ := p.obj["data"].(map[string]any)
	return &GuestEvent{
		ID:      str(p.obj, "id"),
		Source:  str(p.obj, "source"),
		Type:    str(p.obj, "type"),
		Subject: str(p.obj, "subject"),
		Time:    p.time,
		Data: GuestData{
			ACSCredentialID: str(data, "acs_credential_id"),
			ACSUserID:       str(data, "acs_user_id"),
			UserIdentityID:  str(data, "user_identity_id"),
			ReservationID:   str(data, "reservation_id"),
			PropertyID:      str(data, "property_id"),
		},
	}, nil
}

type parsed struct {
	obj  map[string]any
	time time.Time
}

func (v *Validator) validate(subject string, doc []byte) (parsed, *ValidationError) {
	sch, ok := v.schemas[subject]
	if !ok {
		return parsed{}, invalid(subject, fmt.Sprintf("unknown subject %q", clip(subject, 64)), nil)
	}
	if len(doc) > MaxDocumentSize {
		return parsed{}, invalid(subject, fmt.Sprintf("document is %d bytes, more than the %d allowed", len(doc), MaxDocumentSize), nil)
	}
	val, reason, err := parseJSON(doc)
	if reason != "" {
		return parsed{}, invalid(subject, reason, err)
	}
	obj, ok := val.(map[string]any)
	if !ok {
		return parsed{}, invalid(subject, "event: must be a JSON object, not "+jsonKind(val), nil)
	}
	// The type check comes first: an event on the wrong subject is the
	// clearest thing to report, whatever else is wrong with it.
	if typ, ok := obj["type"].(string); ok && typ != subject {
		return parsed{}, invalid(subject, fmt.Sprintf("type %q does not match subject %q", clip(typ, 64), subject), nil)
	}
	if err := sch.Validate(val); err != nil {
		reason := "does not match the schema"
		var ve *jsonschema.ValidationError
		if errors.As(err, &ve) {
			reason = describe(ve)
		}
		return parsed{}, invalid(subject, reason, err)
	}
	// The schema accepts some RFC 3339 times Go cannot represent (a leap
	// second); consumers decode time with time.Time, so reject them here.
	s, _ := obj["time"].(string)
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return parsed{}, invalid(subject, "time: "+dateTimeRule, err)
	}
	return parsed{obj: obj, time: t}, nil
}

const dateTimeRule = "must be an RFC 3339 date-time such as 2025-06-01T14:00:00Z"

// parseJSON decodes one UTF-8 JSON document, numbers as json.Number (what
// jsonschema expects). On failure it returns a one-line reason with the
// zero-based byte offset of the problem.
func parseJSON(doc []byte) (any, string, error) {
	if i := invalidUTF8At(doc); i >= 0 {
		return nil, fmt.Sprintf("invalid JSON at byte %d: not valid UTF-8", i), nil
	}
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	var val any
	if err := dec.Decode(&val); err != nil {
		var se *json.SyntaxError
		switch {
		case errors.Is(err, io.EOF):
			return nil, "invalid JSON: empty document", err
		case errors.Is(err, io.ErrUnexpectedEOF):
			return nil, fmt.Sprintf("invalid JSON at byte %d: unexpected end of input", len(doc)), err
		case errors.As(err, &se):
			// Offset counts the bytes read, the offending one included;
			// report its zero-based position like the other messages.
			return nil, fmt.Sprintf("invalid JSON at byte %d: %s", max(se.Offset-1, 0), se.Error()), err
		default:
			return nil, "invalid JSON: " + err.Error(), err
		}
	}
	off := int(dec.InputOffset())
	for off < len(doc) && isJSONSpace(doc[off]) {
		off++
	}
	if off < len(doc) {
		return nil, fmt.Sprintf("invalid JSON at byte %d: data after the top-level value", off), nil
	}
	return val, "", nil
}

func invalidUTF8At(b []byte) int {
	for i := 0; i < len(b); {
		if b[i] < utf8.RuneSelf {
			i++
			continue
		}
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n == 1 {
			return i
		}
		i += n
	}
	return -1
}

func isJSONSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r'
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case json.Number:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "an array"
	}
	return "an object"
}

// describe turns a schema error tree into one line: one message per failed
// rule, deduplicated and sorted (the validator visits properties in map
// order), without quoting input values beyond a short prefix.
func describe(root *jsonschema.ValidationError) string {
	seen := make(map[string]bool)
	var msgs []string
	var walk func(e *jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		if m, ok := message(e); ok {
			if !seen[m] {
				seen[m] = true
				msgs = append(msgs, m)
			}
			return
		}
		for _, c := range e.Causes {
			walk(c)
		}
	}
	walk(root)
	if len(msgs) == 0 {
		return "does not match the schema"
	}
	sort.Strings(msgs)
	return strings.Join(msgs, "; ")
}

// message renders one failed rule; ok is false for wrapper errors whose
// causes say more.
func message(e *jsonschema.ValidationError) (string, bool) {
	loc := location(e.InstanceLocation)
	switch k := e.ErrorKind.(type) {
	case *kind.Required:
		q := make([]string, len(k.Missing))
		for i, m := range k.Missing {
			q[i] = fmt.Sprintf("%q", m)
		}
		return loc + ": missing required " + strings.Join(q, ", "), true
	case *kind.OneOf:
		if strings.HasSuffix(e.SchemaURL, "defs.json#/$defs/guestData") {
			return loc + ": exactly one of acs_user_id and user_identity_id is required", true
		}
		return loc + ": must match exactly one alternative", true
	case *kind.Type:
		return fmt.Sprintf("%s: must be of type %s, not %s", loc, strings.Join(k.Want, " or "), k.Got), true
	case *kind.Const:
		if got, ok := k.Got.(string); ok && loc == "type" {
			return fmt.Sprintf("type %q does not match subject %v", clip(got, 64), schemaValue(k.Want)), true
		}
		return loc + ": must be " + schemaValue(k.Want), true
	case *kind.Enum:
		want := make([]string, len(k.Want))
		for i, w := range k.Want {
			want[i] = schemaValue(w)
		}
		return loc + ": must be one of " + strings.Join(want, ", "), true
	case *kind.Format:
		switch k.Want {
		case "uuid":
			return loc + ": must be a UUID", true
		case "date-time":
			return loc + ": " + dateTimeRule, true
		}
		return loc + ": must be a valid " + k.Want, true
	case *kind.Pattern:
		if strings.HasSuffix(e.SchemaURL, "#/$defs/timestamp") {
			return loc + ": " + dateTimeRule, true
		}
		return fmt.Sprintf("%s: must match %q", loc, k.Want), true
	case *kind.MinLength:
		if k.Want == 1 {
			return loc + ": must not be empty", true
		}
		return fmt.Sprintf("%s: must be at least %d characters", loc, k.Want), true
	case *kind.MaxLength:
		return fmt.Sprintf("%s: must be at most %d characters", loc, k.Want), true
	case *kind.Minimum:
		return fmt.Sprintf("%s: must be at least %s", loc, k.Want.RatString()), true
	case *kind.Maximum:
		return fmt.Sprintf("%s: must be at most %s", loc, k.Want.RatString()), true
	case *kind.FalseSchema:
		return loc + ": not allowed", true
	case *kind.ContentEncoding:
		return fmt.Sprintf("%s: must be %s encoded", loc, k.Want), true
	}
	if len(e.Causes) > 0 {
		return "", false
	}
	return fmt.Sprintf("%s: fails %q", loc, strings.Join(e.ErrorKind.KeywordPath(), "/")), true
}

// location renders an instance location as a dotted path; the document
// itself is "event".
func location(tokens []string) string {
	if len(tokens) == 0 {
		return "event"
	}
	parts := make([]string, len(tokens))
	for i, t := range tokens {
		parts[i] = clip(t, 40)
	}
	return strings.Join(parts, ".")
}

// schemaValue renders a value taken from the schema (never from input).
func schemaValue(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

func str(m map[string]any, key string) string {
	s, _ := m[key].(string)
	return s
}

// clip shortens s to at most n bytes on a rune boundary, marking the cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// printable makes s one valid UTF-8 line of at most about n bytes.
func printable(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' {
			return ' '
		}
		return r
	}, s)
	return clip(s, n)
}
