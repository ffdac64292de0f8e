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
	var c Credential
	trimmed := bytes.TrimSpace(raw)
	if len(trimmed) == 0 || isNull(trimmed) {
		return c, ErrNoCredential
	}
	if trimmed[0] != '{' {
		return c, errors.New("seamclient: acs_credential is not a json object")
	}
	if err := json.Unmarshal(trimmed, &c); err != nil {
		return Credential{}, fmt.Errorf("seamclient: decode acs_credential: %w", describeJSONError(err))
	}
	if c.ACSCredentialID == "" {
		return Credential{}, errors.New("seamclient: acs_credential has no acs_credential_id")
	}
	return c, nil
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
