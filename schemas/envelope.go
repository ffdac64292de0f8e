package schemas

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
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
