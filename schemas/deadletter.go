package schemas

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Sentinel errors of DeadLetter.Original.
var (
	// ErrOriginalOmitted means the dead letter does not carry the original
	// (it was too large); read it from the input stream at
	// original_stream_sequence.
	ErrOriginalOmitted = errors.New("schemas: original event omitted from the dead letter")
	// ErrOriginalMissing means the encoding says the original is carried,
	// but original_event is absent.
	ErrOriginalMissing = errors.New("schemas: dead letter has no original_event")
	// ErrOriginalMismatch means the carried original does not hash to
	// original_sha256 or has another size, e.g. because a tool re-formatted
	// the dead letter; read the original from the input stream instead.
	ErrOriginalMismatch = errors.New("schemas: original event does not match original_sha256 and original_size")
)

// deadLetterAny names dead letters in a ValidationError before their type
// is known.
const deadLetterAny = "deadletter"

// ChooseEncoding returns the encoding that carries original exactly and
// most readably: EncodingJSON when original is one valid UTF-8 JSON value
// that neither starts nor ends with whitespace (a decoder drops whitespace
// around an embedded value, so a trailing newline could not round-trip),
// EncodingBase64 otherwise.
func ChooseEncoding(original []byte) string {
	if embeddableJSON(original) {
		return EncodingJSON
	}
	return EncodingBase64
}

func embeddableJSON(b []byte) bool {
	return len(b) > 0 && !isJSONSpace(b[0]) && !isJSONSpace(b[len(b)-1]) &&
		utf8.Valid(b) && json.Valid(b)
}

// MarshalDeadLetterEvent builds the dead-letter document for an event of
// dl.OriginalSubject (an input subject): a CloudEvents document of type
// deadletter.<dl.OriginalSubject> whose data is dl.
//
// original is the message body as it was received; dl.OriginalEvent is
// ignored. original_sha256 and original_size are computed from original
// (when dl already has them they must agree). Per
// dl.OriginalEventEncoding, original_event is:
//   - EncodingJSON: original, spliced in byte for byte; it must satisfy
//     ChooseEncoding;
//   - EncodingBase64: a JSON string of its standard base64;
//   - EncodingOmitted: absent. original may then be nil, in which case dl
//     must already carry OriginalSHA256 and OriginalSize; either way
//     OriginalStreamSequence must be set, because replay reads it from there;
//   - empty: ChooseEncoding(original).
//
// DeadLetter.Original gives the exact bytes back.
func MarshalDeadLetterEvent(source, id, subject string, t time.Time, dl DeadLetter, original []byte) ([]byte, error) {
	if !isInputSubject(dl.OriginalSubject) {
		return nil, fmt.Errorf("schemas: dead letter original_subject %q is not an input subject", clip(dl.OriginalSubject, 64))
	}
	enc := dl.OriginalEventEncoding
	if enc == "" {
		enc = ChooseEncoding(original)
	}
	var value []byte // the JSON value of original_event
	switch enc {
	case EncodingJSON:
		if !embeddableJSON(original) {
			return nil, errors.New("schemas: original event is not UTF-8 JSON without surrounding whitespace; use base64")
		}
		value = original
	case EncodingBase64:
		value = make([]byte, 0, base64.StdEncoding.EncodedLen(len(original))+2)
		value = append(value, '"')
		value = base64.StdEncoding.AppendEncode(value, original)
		value = append(value, '"')
	case EncodingOmitted:
		if dl.OriginalStreamSequence == 0 {
			return nil, errors.New("schemas: an omitted original needs original_stream_sequence")
		}
	default:
		return nil, fmt.Errorf("schemas: unknown original_event_encoding %q", clip(enc, 32))
	}

	if original != nil || enc != EncodingOmitted {
		sum := sha256.Sum256(original)
		h := hex.EncodeToString(sum[:])
		if dl.OriginalSHA256 != "" && dl.OriginalSHA256 != h {
			return nil, errors.New("schemas: dead letter original_sha256 does not match the original bytes")
		}
		if dl.OriginalSize != 0 && dl.OriginalSize != len(original) {
			return nil, errors.New("schemas: dead letter original_size does not match the original bytes")
		}
		dl.OriginalSHA256, dl.OriginalSize = h, len(original)
	} else if dl.OriginalSHA256 == "" {
		return nil, errors.New("schemas: an omitted original needs original_sha256 and original_size, or the original bytes")
	}

	dl.OriginalEventEncoding = enc
	dl.OriginalEvent = nil // omitempty: spliced in below
	body, err := json.Marshal(dl)
	if err != nil {
		return nil, fmt.Errorf("schemas: marshal dead letter: %w", err)
	}
	if value != nil {
		// body is {"original_event_encoding":...}: put original_event first.
		data := make([]byte, 0, len(body)+len(value)+len(`"original_event":,`))
		data = append(data, `{"original_event":`...)
		data = append(data, value...)
		data = append(data, ',')
		body = append(data, body[1:]...)
	}
	return marshalEnvelope(DeadLetterSubject(dl.OriginalSubject), source, id, subject, t, body)
}

// Original returns the exact bytes of the original event carried by a
// decoded dead letter. It returns ErrOriginalOmitted when the dead letter
// does not carry it, ErrOriginalMissing when original_event is absent
// although the encoding says otherwise, and ErrOriginalMismatch when the
// bytes do not match original_sha256 / original_size.
func (dl DeadLetter) Original() ([]byte, error) {
	var b []byte
	switch dl.OriginalEventEncoding {
	case EncodingJSON:
		if len(dl.OriginalEvent) == 0 {
			return nil, ErrOriginalMissing
		}
		b = bytes.Clone(dl.OriginalEvent)
	case EncodingBase64:
		if len(dl.OriginalEvent) == 0 {
			return nil, ErrOriginalMissing
		}
		var s string
		if err := json.Unmarshal(dl.OriginalEvent, &s); err != nil {
			return nil, errors.New("schemas: base64 original_event is not a JSON string")
		}
		var err error
		if b, err = base64.StdEncoding.DecodeString(s); err != nil {
			return nil, fmt.Errorf("schemas: original_event is not standard base64: %w", err)
		}
	case EncodingOmitted:
		return nil, ErrOriginalOmitted
	default:
		return nil, fmt.Errorf("schemas: unknown original_event_encoding %q", clip(dl.OriginalEventEncoding, 32))
	}
	if dl.OriginalSHA256 != "" {
		sum := sha256.Sum256(b)
		if hex.EncodeToString(sum[:]) != dl.OriginalSHA256 || len(b) != dl.OriginalSize {
			return nil, ErrOriginalMismatch
		}
	}
	return b, nil
}

// DecodeDeadLetterEvent decodes a dead-letter document as published by
// MarshalDeadLetterEvent. It checks the structure replay depends on (type
// deadletter.<input subject> agreeing with original_subject, a known
// encoding with original_event present or absent accordingly) and returns
// a *ValidationError otherwise; use Validator.Validate for the full schema.
//
// Field names are matched exactly: a document with, say, both
// "original_event" and "Original_Event" is rejected rather than letting
// encoding/json's case-insensitive matching pick one.
// DeadLetter.OriginalEvent holds the raw bytes of original_event as they
// appear in raw.
func DecodeDeadLetterEvent(raw []byte) (Envelope, DeadLetter, error) {
	bad := func(subject, reason string, err error) (Envelope, DeadLetter, error) {
		return Envelope{}, DeadLetter{}, invalid(subject, reason, err)
	}
	val, reason, err := parseJSON(raw)
	if reason != "" {
		return bad(deadLetterAny, reason, err)
	}
	if _, ok := val.(map[string]any); !ok {
		return bad(deadLetterAny, "event: must be a JSON object, not "+jsonKind(val), nil)
	}
	if _, reason := checkKeys(raw, reflect.TypeFor[Envelope](), "event"); reason != "" {
		return bad(deadLetterAny, reason, nil)
	}
	var env Envelope
	if err := json.Unmarshal(raw, &env); err != nil {
		return bad(deadLetterAny, unmarshalReason("event", err), err)
	}
	input, ok := strings.CutPrefix(env.Type, DeadLetterPrefix)
	if !ok || !isInputSubject(input) {
		return bad(deadLetterAny, fmt.Sprintf("type %q is not a dead-letter type", clip(env.Type, 64)), nil)
	}
	subject := env.Type
	if env.SpecVersion != SpecVersion {
		return bad(subject, `specversion: must be "1.0"`, nil)
	}
	if len(env.Data) == 0 {
		return bad(subject, `event: missing required "data"`, nil)
	}
	fields, reason := checkKeys(env.Data, reflect.TypeFor[DeadLetter](), "data")
	if reason != "" {
		return bad(subject, reason, nil)
	}
	if e, ok := fields["error"]; ok && len(e) > 0 && e[0] == '{' {
		if _, reason := checkKeys(e, reflect.TypeFor[DeadLetterError](), "data.error"); reason != "" {
			return bad(subject, reason, nil)
		}
	}
	var dl DeadLetter
	if err := json.Unmarshal(env.Data, &dl); err != nil {
		return bad(subject, unmarshalReason("data", err), err)
	}
	if dl.OriginalSubject != input {
		return bad(subject, fmt.Sprintf("data.original_subject %q does not match type %q", clip(dl.OriginalSubject, 64), env.Type), nil)
	}
	switch dl.OriginalEventEncoding {
	case EncodingJSON, EncodingBase64:
		if len(dl.OriginalEvent) == 0 {
			return bad(subject, `data: missing required "original_event"`, nil)
		}
	case EncodingOmitted:
		if dl.OriginalEvent != nil {
			return bad(subject, "data.original_event: not allowed when original_event_encoding is omitted", nil)
		}
	default:
		return bad(subject, `data.original_event_encoding: must be one of "json", "base64", "omitted"`, nil)
	}
	return env, dl, nil
}

// checkKeys rejects an object holding a key that encoding/json would match
// case-insensitively to a field of t without being its exact name. It
// returns the object's members for further checks.
func checkKeys(raw []byte, t reflect.Type, loc string) (map[string]json.RawMessage, string) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, unmarshalReason(loc, err)
	}
	names := jsonFieldNames(t)
	for k := range m {
		if slices.Contains(names, k) {
			continue
		}
		for _, n := range names {
			if strings.EqualFold(k, n) {
				return nil, fmt.Sprintf("%s: field %q differs from %q only in case", loc, clip(k, 40), n)
			}
		}
	}
	return m, ""
}

// jsonFieldNames lists the JSON member names of struct type t, flattening
// embedded structs as encoding/json does.
func jsonFieldNames(t reflect.Type) []string {
	var names []string
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
			names = append(names, jsonFieldNames(f.Type)...)
			continue
		}
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		names = append(names, name)
	}
	return names
}

// unmarshalReason renders an encoding/json error without quoting input:
// time.Time's own error would echo the whole offending string.
func unmarshalReason(loc string, err error) string {
	var te *json.UnmarshalTypeError
	var pe *time.ParseError
	switch {
	case errors.As(err, &te):
		field := te.Field
		if field == "" {
			field = loc
		} else {
			field = loc + "." + field
		}
		return fmt.Sprintf("%s: must be of type %s, not %s", field, te.Type, te.Value)
	case errors.As(err, &pe):
		return loc + ": a timestamp " + dateTimeRule
	}
	return loc + ": cannot decode"
}
