package schemas

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// DataContentType is the datacontenttype keyworker writes: data is JSON.
const DataContentType = "application/json"

// envelopeHeader is Envelope without data. Documents are assembled by hand
// around the data bytes because encoding/json would compact a
// json.RawMessage, and dead letters must carry the original bytes exactly.
type envelopeHeader struct {
	SpecVersion     string    `json:"specversion"`
	ID              string    `json:"id"`
	Source          string    `json:"source"`
	Type            string    `json:"type"`
	Subject         string    `json:"subject,omitempty"`
	Time            time.Time `json:"time"`
	DataContentType string    `json:"datacontenttype,omitempty"`
}

// NewEnvelope marshals a CloudEvents 1.0 structured-mode document (type
// typ, specversion 1.0, datacontenttype application/json) whose data is
// data marshalled with encoding/json. subject may be empty. typ, source and
// id must not be empty and t must be set.
func NewEnvelope(typ, source, id, subject string, t time.Time, data any) ([]byte, error) {
	b, err := json.Marshal(data)
	if err != nil {
		return nil, fmt.Errorf("schemas: marshal %s data: %w", typ, err)
	}
	return marshalEnvelope(typ, source, id, subject, t, b)
}

func marshalEnvelope(typ, source, id, subject string, t time.Time, data []byte) ([]byte, error) {
	switch {
	case typ == "":
		return nil, errors.New("schemas: envelope needs a type")
	case source == "":
		return nil, errors.New("schemas: envelope needs a source")
	case id == "":
		return nil, errors.New("schemas: envelope needs an id")
	case t.IsZero():
		return nil, errors.New("schemas: envelope needs a time")
	}
	head, err := json.Marshal(envelopeHeader{
		SpecVersion:     SpecVersion,
		ID:              id,
		Source:          source,
		Type:            typ,
		Subject:         subject,
		Time:            t,
		DataContentType: DataContentType,
	})
	if err != nil {
		return nil, fmt.Errorf("schemas: marshal %s envelope: %w", typ, err)
	}
	out := make([]byte, 0, len(head)+len(`,"data":`)+len(data))
	out = append(out, head[:len(head)-1]...) // drop the closing brace
	out = append(out, `,"data":`...)
	out = append(out, data...)
	return append(out, '}'), nil
}

// Header names of the CloudEvents NATS protocol binding.
const (
	// HeaderAttributePrefix starts the header of each attribute of a
	// binary-mode message: ce-specversion, ce-id, ce-source, ce-type, ...
	HeaderAttributePrefix = "ce-"
	// HeaderContentType is the media type of the body: of the whole event in
	// structured mode (application/cloudevents+json), of data in binary mode.
	HeaderContentType = "Content-Type"
)

// IsBinary reports whether a message with headers h is a CloudEvents
// binary-mode message: it has a ce-specversion header. That is how the
// CloudEvents SDKs decide; header names are matched without regard to case.
func IsBinary(h map[string][]string) bool {
	for k := range h {
		if strings.EqualFold(k, HeaderAttributePrefix+"specversion") {
			return true
		}
	}
	return false
}

// DecodeGuestMessage decodes an input message of subject in either
// CloudEvents mode: structured (the body is the whole event) or binary
// (attributes in ce- headers, data as the body; see IsBinary). A
// binary-mode message is turned into the structured document it stands for
// (BinaryDocument) and validated by the same schema, so both modes are held
// to the same rules and give the same identity (source, id). Errors are
// *ValidationError, as for DecodeGuestEvent; for a binary-mode message the
// reason starts with "binary mode: ".
func (v *Validator) DecodeGuestMessage(subject string, header map[string][]string, body []byte) (*GuestEvent, error) {
	if !IsBinary(header) {
		return v.DecodeGuestEvent(subject, body)
	}
	doc, err := BinaryDocument(subject, header, body)
	if err != nil {
		return nil, err
	}
	ev, err := v.DecodeGuestEvent(subject, doc)
	var verr *ValidationError
	if errors.As(err, &verr) {
		return nil, invalid(subject, binaryReason(verr.Reason), verr.Err)
	}
	return ev, err
}

// BinaryDocument returns the structured-mode document a binary-mode
// message stands for: one member per ce- header (the attribute name is the
// rest of the header name, in lower case, its value the header's string),
// datacontenttype from Content-Type when no ce-datacontenttype is given,
// and data the body, which must be JSON (every keyworker event carries JSON
// data). A header that cannot be an attribute (a name outside [a-z0-9],
// given twice, or with several values) is a *ValidationError; whether the
// document is a valid event is for the schema to say.
func BinaryDocument(subject string, header map[string][]string, body []byte) ([]byte, error) {
	attrs := make(map[string]string, len(header))
	contentType := ""
	for k, vals := range header {
		name, ok := cutPrefixFold(k, HeaderAttributePrefix)
		if !ok {
			if strings.EqualFold(k, HeaderContentType) && len(vals) > 0 {
				contentType = vals[0]
			}
			continue
		}
		name = strings.ToLower(name)
		switch {
		case !attributeName(name):
			return nil, invalid(subject, binaryReason(fmt.Sprintf("header %q is not a CloudEvents attribute (a-z, 0-9)", clip(k, 40))), nil)
		case name == "data": // data_base64 fails attributeName
			return nil, invalid(subject, binaryReason("header "+clip(k, 40)+": data is the body in binary mode"), nil)
		case len(vals) != 1:
			return nil, invalid(subject, binaryReason(fmt.Sprintf("header %s has %d values, want one", clip(k, 40), len(vals))), nil)
		}
		if _, dup := attrs[name]; dup {
			return nil, invalid(subject, binaryReason("attribute "+name+" is given by two headers"), nil)
		}
		attrs[name] = vals[0]
	}
	if _, ok := attrs["datacontenttype"]; !ok && contentType != "" {
		attrs["datacontenttype"] = contentType
	}
	head, err := json.Marshal(attrs)
	if err != nil {
		return nil, invalid(subject, binaryReason("headers cannot be encoded"), err)
	}
	if len(body) == 0 {
		return head, nil // the schema says data is missing
	}
	if len(body) > MaxDocumentSize {
		return nil, invalid(subject, binaryReason(fmt.Sprintf("body is %d bytes, more than the %d allowed", len(body), MaxDocumentSize)), nil)
	}
	// The assembled document is parsed by validate; parseJSON is only
	// called here to word why the body is refused.
	if !json.Valid(body) || !utf8.Valid(body) {
		_, reason, err := parseJSON(body)
		if reason == "" {
			reason = "invalid JSON"
		}
		return nil, invalid(subject, binaryReason("body (data): "+reason), err)
	}
	doc := make([]byte, 0, len(head)+len(`,"data":`)+len(body))
	doc = append(doc, head[:len(head)-1]...)
	if len(attrs) > 0 {
		doc = append(doc, ',')
	}
	doc = append(doc, `"data":`...)
	doc = append(doc, body...)
	return append(doc, '}'), nil
}

func binaryReason(r string) string { return "binary mode: " + r }

// attributeName reports whether s is a valid CloudEvents attribute name.
func attributeName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return s, false
	}
	return s[len(prefix):], true
}
