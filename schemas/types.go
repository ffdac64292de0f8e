package schemas

import (
	"encoding/json"
	"time"
)

// Subjects and header keys of the event contract (DESIGN section 2 and 6).
const (
	SubjectCheckedIn  = "guest.checked_in"
	SubjectCheckedOut = "guest.checked_out"
	SubjectAssigned   = "credential.assigned"
	SubjectUnassigned = "credential.unassigned"
	SubjectSkipped    = "credential.skipped"

	// DeadLetterPrefix is prepended to the input subject: deadletter.guest.checked_in.
	DeadLetterPrefix = "deadletter."

	// HeaderReplayOf carries the dead-letter stream sequence a replayed event came from.
	HeaderReplayOf = "Keyworker-Replay-Of"

	ContentType = "application/cloudevents+json"
	SpecVersion = "1.0"
)

// Error kinds of a dead letter.
const (
	ErrorKindInvalidEvent     = "invalid_event"
	ErrorKindPermanent        = "permanent"
	ErrorKindRetriesExhausted = "retries_exhausted"
)

// Encodings of DeadLetter.OriginalEvent.
const (
	EncodingJSON    = "json"    // original_event is the original document, byte for byte
	EncodingBase64  = "base64"  // original_event is a JSON string: base64 (std) of the original bytes
	EncodingOmitted = "omitted" // too large to carry; read it from the input stream by sequence
)

// Reasons of a credential.skipped event (the ordering rule, DESIGN section 5:
// for each credential, the holder is the guest of its newest check-in,
// unless that same guest has a newer check-out).
const (
	// SkipReasonStale: a newer check-in of the same credential supersedes the
	// event (a check-in older than it, or a check-out of a guest who has
	// checked in again since).
	SkipReasonStale = "stale"
	// SkipReasonCheckedOut: a check-in whose own guest has a newer check-out.
	SkipReasonCheckedOut = "checked_out"
	// SkipReasonNotHolder: a check-out of a guest who does not hold the
	// credential: another guest's newer check-in has it, or nobody does.
	SkipReasonNotHolder = "not_holder"
)

// Envelope is a CloudEvents 1.0 structured-mode document.
type Envelope struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Type            string          `json:"type"`
	Subject         string          `json:"subject,omitempty"`
	Time            time.Time       `json:"time"`
	DataContentType string          `json:"datacontenttype,omitempty"`
	Data            json.RawMessage `json:"data"`
}

// GuestData is the data of guest.checked_in and guest.checked_out. Exactly
// one of ACSUserID and UserIdentityID is set.
type GuestData struct {
	ACSCredentialID string `json:"acs_credential_id"`
	ACSUserID       string `json:"acs_user_id,omitempty"`
	UserIdentityID  string `json:"user_identity_id,omitempty"`
	ReservationID   string `json:"reservation_id,omitempty"`
	PropertyID      string `json:"property_id,omitempty"`
}

// GuestEvent is a decoded, validated input event.
type GuestEvent struct {
	ID      string
	Source  string
	Type    string // equals the NATS subject
	Subject string // reservation id, when known
	Time    time.Time
	Data    GuestData
}

// CredentialResult is the data of credential.assigned and credential.unassigned.
type CredentialResult struct {
	GuestData
	ACSCredential     json.RawMessage `json:"acs_credential"`
	Attempts          int             `json:"attempts"`
	SourceEventID     string          `json:"source_event_id"`
	SourceEventSource string          `json:"source_event_source"`
	ReplayOf          uint64          `json:"replay_of,omitempty"`
	// ProviderSync says whether the lock or card system has the change
	// (contract extension, optional: older outcomes lack it).
	ProviderSync *ProviderSync `json:"provider_sync,omitempty"`
	// WorkspaceID is the Seam workspace the event was routed to, when known.
	WorkspaceID string `json:"workspace_id,omitempty"`
}

// States of ProviderSync. Consumers must accept states added later.
const (
	// SyncStateSynced: the provider has the change (Seam's
	// is_latest_desired_state_synced_with_provider is true).
	SyncStateSynced = "synced"
	// SyncStatePending: Seam recorded the change, the provider does not
	// have it yet (or Seam does not say).
	SyncStatePending = "pending"
	// SyncStateFailed: the credential carries errors, or a warning that it
	// cannot work as it is (being_deleted, needs_to_be_reissued,
	// unknown_issue_with_acs_credential).
	SyncStateFailed = "failed"
)

// ProviderSync is the provider sync state of the credential an outcome
// carries, derived from that acs_credential object.
type ProviderSync struct {
	State string `json:"state"`
	// CheckedAt is when the worker asked Seam for the object it is derived from.
	CheckedAt time.Time `json:"checked_at"`
	// Warnings are the credential's warning codes, unknown ones included.
	Warnings []string            `json:"warnings"`
	Errors   []ProviderSyncError `json:"errors"`
}

// ProviderSyncError is one of the credential's errors, as Seam gave it.
type ProviderSyncError struct {
	ErrorCode string `json:"error_code"`
	Message   string `json:"message,omitempty"`
	CreatedAt string `json:"created_at,omitempty"`
}

// Skipped is the data of credential.skipped.
type Skipped struct {
	GuestData
	Reason string `json:"reason"`
	// NewerEventTime is the time of the event that superseded this one
	// (SupersededBy*), or this event's own when none did (not_holder).
	NewerEventTime          time.Time `json:"newer_event_time"`
	SupersededByEventID     string    `json:"superseded_by_event_id,omitempty"`
	SupersededByEventSource string    `json:"superseded_by_event_source,omitempty"`
	SourceEventID           string    `json:"source_event_id"`
	SourceEventSource       string    `json:"source_event_source"`
	ReplayOf                uint64    `json:"replay_of,omitempty"`
	WorkspaceID             string    `json:"workspace_id,omitempty"` // as in CredentialResult
}

// DeadLetterError says why an event was given up.
type DeadLetterError struct {
	Kind          string `json:"kind"`
	Message       string `json:"message"`
	HTTPStatus    int    `json:"http_status,omitempty"`
	SeamErrorType string `json:"seam_error_type,omitempty"`
	SeamRequestID string `json:"seam_request_id,omitempty"`
}

// DeadLetter is the data of deadletter.guest.checked_in and
// deadletter.guest.checked_out: everything needed to replay the event.
//
// OriginalEvent is not set by json.Marshal of this struct in a way that
// keeps the bytes exact (encoding/json compacts raw messages); use
// MarshalDeadLetterEvent and DeadLetter.Original.
type DeadLetter struct {
	OriginalEvent         json.RawMessage `json:"original_event,omitempty"`
	OriginalEventEncoding string          `json:"original_event_encoding"`
	// OriginalHeaders are the NATS headers of the original message, as
	// received (for a binary-mode event, its ce- attributes); empty, not
	// absent, when it had none. Absent in dead letters written before the
	// field existed.
	OriginalHeaders        map[string][]string `json:"original_headers,omitzero"`
	OriginalSubject        string              `json:"original_subject"`
	OriginalStreamSequence uint64              `json:"original_stream_sequence"`
	OriginalSHA256         string              `json:"original_sha256"`
	OriginalSize           int                 `json:"original_size"`
	SourceEventID          string              `json:"source_event_id,omitempty"`
	SourceEventSource      string              `json:"source_event_source,omitempty"`
	Error                  DeadLetterError     `json:"error"`
	Request                json.RawMessage     `json:"request,omitempty"`
	ACSCredential          json.RawMessage     `json:"acs_credential,omitempty"`
	Attempts               int                 `json:"attempts"`
	Deliveries             int                 `json:"deliveries"`
	FirstAttemptAt         *time.Time          `json:"first_attempt_at,omitempty"`
	LastAttemptAt          *time.Time          `json:"last_attempt_at,omitempty"`
	ReplayOf               uint64              `json:"replay_of,omitempty"`
	// WorkspaceID is the Seam workspace the event was routed to, when it got that far.
	WorkspaceID string `json:"workspace_id,omitempty"`
}
