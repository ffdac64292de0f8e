package seamtest

import (
	"encoding/json"
	"time"
)

// Provider sync, as Seam reports it: a 200 from assign or unassign means
// Seam recorded the wanted state, not that the lock or card system has it.
// The change leaves the credential with
// is_latest_desired_state_synced_with_provider false (and, for a card that
// is not encoded yet, a waiting_to_be_issued warning) until the sync delay
// has passed; then it is synced, or, when the fake was told to fail syncs,
// it stays unsynced with an error on the credential. The sync is worked
// out from timestamps whenever the credential is read, so there is no
// timer and no goroutine to stop.

// WithSyncDelay sets how long after an assign or unassign the provider
// has the change; see SetSyncDelay.
func WithSyncDelay(d time.Duration) Option { return func(f *Fake) { f.syncDelay = max(d, 0) } }

// WithSyncFailure makes every sync fail; see SetSyncFailure.
func WithSyncFailure(errorCode, message string) Option {
	return func(f *Fake) { f.syncFailCode, f.syncFailMessage = errorCode, message }
}

// WithClock replaces time.Now for the fake's timestamps and syncs, so a
// test can move time on instead of waiting.
func WithClock(now func() time.Time) Option { return func(f *Fake) { f.now = now } }

// SetSyncDelay sets how long after an assign or unassign that changed the
// credential the provider has the change, for changes made from now on.
// 0, the default, syncs at once: the answer to the change already shows
// it synced, as the fake did before it modelled sync, so tests about
// holders and effects see complete credentials.
func (f *Fake) SetSyncDelay(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.syncDelay = max(d, 0)
}

// SetSyncFailure makes the syncs of changes made from now on fail: the
// credential stays unsynced and gets an error {error_code, message,
// created_at} when its sync comes due. An empty errorCode makes syncs
// succeed again.
func (f *Fake) SetSyncFailure(errorCode, message string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.syncFailCode, f.syncFailMessage = errorCode, message
}

// pendingSync is a change the provider does not have yet.
type pendingSync struct {
	due               time.Time
	failCode, failMsg string
}

// startSync marks a changed credential as not yet synced; f.mu is held.
func (f *Fake) startSync(key string, cred *object) {
	now := f.now()
	cred.set("is_latest_desired_state_synced_with_provider", mustJSON(false))
	cred.set("errors", json.RawMessage("[]"))
	warnings := withoutWarning(cred, "waiting_to_be_issued")
	if isHeld(cred) && cred.str("access_method") == "card" && string(cred.vals["is_issued"]) != "true" {
		// A card must still be encoded before it opens a door.
		warnings = append(warnings, mustJSON(map[string]string{
			"warning_code": "waiting_to_be_issued",
			"message":      "The credential is waiting to be issued.",
			"created_at":   timestamp(now),
		}))
	}
	cred.set("warnings", mustJSON(warnings))
	f.syncs[key] = &pendingSync{due: now.Add(f.syncDelay), failCode: f.syncFailCode, failMsg: f.syncFailMessage}
	f.settle(key, cred)
}

// settle applies a sync that has come due; f.mu is held. Every read of a
// credential's object goes through it (by credential), so a sync is seen
// as soon as it is due; IsAssigned and Holder read f.creds directly, since
// settling changes no holder.
func (f *Fake) settle(key string, cred *object) {
	p, ok := f.syncs[key]
	if !ok || f.now().Before(p.due) {
		return
	}
	delete(f.syncs, key)
	if p.failCode != "" {
		cred.set("errors", mustJSON([]map[string]string{{
			"error_code": p.failCode,
			"message":    p.failMsg,
			"created_at": timestamp(p.due),
		}}))
		return
	}
	cred.set("is_latest_desired_state_synced_with_provider", mustJSON(true))
	cred.setString("latest_desired_state_synced_with_provider_at", timestamp(p.due))
}

// withoutWarning returns the credential's warnings other than code.
func withoutWarning(cred *object, code string) []json.RawMessage {
	var all, kept []json.RawMessage
	_ = json.Unmarshal(cred.vals["warnings"], &all)
	for _, w := range all {
		var v struct {
			Code string `json:"warning_code"`
		}
		if json.Unmarshal(w, &v) == nil && v.Code == code {
			continue
		}
		kept = append(kept, w)
	}
	if kept == nil {
		kept = []json.RawMessage{}
	}
	return kept
}

// credential returns the stored credential of key, the lower-cased id,
// with any due sync applied; f.mu is held.
func (f *Fake) credential(key string) (*object, bool) {
	o, ok := f.creds[key]
	if ok {
		f.settle(key, o)
	}
	return o, ok
}
