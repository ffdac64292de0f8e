package dlq_test

import (
	"errors"
	"testing"

	"github.com/keyworker/keyworker/consumer/dlq"
)

// A blank value is a shell variable gone wrong: refused, never "any".
func TestFilter_ValidateRefusesBlankValues(t *testing.T) {
	for _, f := range []dlq.Filter{
		{Subject: " "}, {ErrorKind: "\t"}, {SeamErrorType: "  "}, {SourceEventID: " "}, {Property: "  "},
	} {
		if err := f.Validate(); !errors.Is(err, dlq.ErrInvalidFilter) {
			t.Errorf("%+v: err %v, want ErrInvalidFilter", f, err)
		}
	}
	if err := (dlq.Filter{SourceEventID: "evt-1", SeamErrorType: "invalid_input"}).Validate(); err != nil {
		t.Errorf("a set filter: %v", err)
	}
}
