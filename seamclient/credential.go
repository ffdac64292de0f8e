package seamclient

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Credential is the view of an acs_credential that keyworker reads. The full
// object travels on as the raw bytes of Response.Credential.
type Credential struct {
	ACSCredentialID string `json:"acs_credential_id"`
	ACSUserID       string `json:"acs_user_id"`
	UserIdentityID  string `json:"user_identity_id"`
}

// ParseCredential decodes the fields keyworker needs from an acs_credential
// object. An empty or null payload gives ErrNoCredential. Error messages
// never quote the payload, which may hold a code.
func ParseCredential(raw json.RawMessage) (Credential, error) {
	obj, err := credentialObject(raw)
	if err != nil {
		return Credential{}, err
	}
	var c Credential
	if err := json.Unmarshal(obj, &c); err != nil {
		return Credential{}, fmt.Errorf("seamclient: decode acs_credential: %w", describeJSONError(err))
	}
	if c.ACSCredentialID == "" {
		return Credential{}, errors.New("seamclient: acs_credential has no acs_credential_id")
	}
	return c, nil
}

// credentialObject is raw without surrounding space, when it is a JSON
// object: an empty or null payload gives ErrNoCredential, any other value
// errCredentialShape.
func credentialObject(raw json.RawMessage) ([]byte, error) {
	trimmed := bytes.TrimSpace(raw)
	if len(trimmed) == 0 || isNull(trimmed) {
		return nil, ErrNoCredential
	}
	if trimmed[0] != '{' {
		return nil, fmt.Errorf("seamclient: %w", errCredentialShape)
	}
	return trimmed, nil
}

// AssignedTo reports whether the credential is held by the user r names:
// its acs_user_id equals r.ACSUserID, or its user_identity_id equals
// r.UserIdentityID (each compared only when set in r). UUIDs compare
// case-insensitively.
func (c Credential) AssignedTo(r Request) bool {
	if r.ACSUserID != "" && strings.EqualFold(c.ACSUserID, r.ACSUserID) {
		return true
	}
	return r.UserIdentityID != "" && strings.EqualFold(c.UserIdentityID, r.UserIdentityID)
}

// Sync is what an acs_credential says of its provider sync: whether the
// lock or card system has the latest wanted state, and the warnings and
// errors Seam reports on it.
type Sync struct {
	// Synced is is_latest_desired_state_synced_with_provider; nil when it
	// is null or absent (Seam does not know).
	Synced *bool
	// Warnings are the warning_code of each warning, in order; codes newer
	// than this code are kept as they are.
	Warnings []string
	Errors   []CredentialError
}

// CredentialError is one entry of an acs_credential's errors.
type CredentialError struct {
	ErrorCode string `json:"error_code"`
	Message   string `json:"message,omitempty"`
	CreatedAt string `json:"created_at,omitempty"`
}

// ParseSync reads the sync fields of an acs_credential object. Each field
// is read on its own, so one of an unexpected shape (a field newer than
// this code) leaves the others; a missing field is zero. Only an empty
// payload or one that is not a JSON object is an error (ErrNoCredential, or
// one that never quotes the payload). Codes and messages are cleaned for
// log lines as APIError's are: codes in messages redacted, control
// characters and invalid UTF-8 dropped, lengths bounded.
func ParseSync(raw json.RawMessage) (Sync, error) {
	var s Sync
	obj, err := credentialObject(raw)
	if err != nil {
		return s, err
	}
	var fields struct {
		Synced   json.RawMessage   `json:"is_latest_desired_state_synced_with_provider"`
		Warnings []json.RawMessage `json:"warnings"`
		Errors   []json.RawMessage `json:"errors"`
	}
	// A field of another type (warnings that are not an array) is left
	// empty and the others are still filled: encoding/json goes on after
	// an *json.UnmarshalTypeError.
	if err := json.Unmarshal(obj, &fields); err != nil {
		var te *json.UnmarshalTypeError
		if !errors.As(err, &te) {
			return s, fmt.Errorf("seamclient: decode acs_credential: %w", describeJSONError(err))
		}
	}
	var synced bool
	if json.Unmarshal(fields.Synced, &synced) == nil && !isNull(fields.Synced) {
		s.Synced = &synced
	}
	for _, w := range fields.Warnings {
		var v struct {
			Code json.RawMessage `json:"warning_code"`
		}
		if json.Unmarshal(w, &v) == nil {
			if code := snippet([]byte(jsonString(v.Code)), maxTypeLen); code != "" {
				s.Warnings = append(s.Warnings, code)
			}
		}
	}
	for _, e := range fields.Errors {
		var v struct {
			Code      json.RawMessage `json:"error_code"`
			Message   json.RawMessage `json:"message"`
			CreatedAt json.RawMessage `json:"created_at"`
		}
		if json.Unmarshal(e, &v) != nil {
			continue
		}
		ce := CredentialError{
			ErrorCode: snippet([]byte(jsonString(v.Code)), maxTypeLen),
			Message:   snippet([]byte(RedactCodes(jsonString(v.Message))), maxMessageLen),
			CreatedAt: snippet([]byte(jsonString(v.CreatedAt)), maxTypeLen),
		}
		if ce.ErrorCode == "" {
			ce.ErrorCode = "unknown"
		}
		s.Errors = append(s.Errors, ce)
	}
	return s, nil
}
