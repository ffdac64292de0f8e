// Package seamtest is an in-process fake of the Seam endpoints keyworker
// calls (/acs/credentials/assign, /unassign, /get), for tests and for the
// worker's built-in simulator. It sits beside seamclient the way
// net/http/httptest sits beside net/http.
//
// The fake keeps credentials and users, applies assign and unassign with
// Seam's one-holder semantics (by default an assign takes a held credential
// over and an unassign by a non-holder is a no-op; WithExclusiveAssign and
// WithStrictUnassign make both refusals instead), injects scripted or
// random faults, plays Seam's bad days (SetDown, SetRefuseKey,
// SetRateLimit), and counts calls, answers and effective state changes per
// (credential, user) pair, so a test can prove each effect happened exactly
// once. It never logs, so neither the API key nor a credential code can
// leak through it.
package seamtest

import (
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/keyworker/keyworker/seamclient"
)

// Endpoint paths the fake serves: seamclient's, repeated here for tests
// that only speak to the fake.
const (
	PathAssign   = seamclient.PathAssign
	PathUnassign = seamclient.PathUnassign
	PathGet      = seamclient.PathGet
)

// maxRequestBody bounds what the fake reads of a request.
const maxRequestBody = 1 << 20

// Option configures a Fake.
type Option func(*Fake)

// WithAPIKey makes the fake refuse, with 401 unauthorized, any bearer token
// other than key. Without it any non-empty bearer token is accepted.
func WithAPIKey(key string) Option { return func(f *Fake) { f.apiKey = key } }

// WithAutoCreate makes every well-formed uuid exist: a credential is created
// on first use with a realistic "code" object, and any acs_user_id or
// user_identity_id is a known user.
func WithAutoCreate() Option { return func(f *Fake) { f.autoCreate = true } }

// WithEmptySuccess makes assign and unassign answer {} instead of
// {"acs_credential": ..., "ok": true}, as the current API may.
func WithEmptySuccess() Option { return func(f *Fake) { f.emptySuccess = true } }

// WithExclusiveAssign makes an assign naming a user other than the
// credential's current holder fail with 409 and error type
// seamclient.ErrorTypeAlreadyAssigned, changing nothing: the holder must be
// unassigned first. Assigning to the current holder stays a successful
// no-op, and a credential nobody holds can be assigned as before. Without
// it the new user takes the credential over.
func WithExclusiveAssign() Option { return func(f *Fake) { f.exclusiveAssign = true } }

// WithStrictUnassign makes an unassign naming a user who does not hold the
// credential (someone else holds it, or nobody does) fail with 400 and error
// type seamclient.ErrorTypeNotAssigned, changing nothing. Without it such an
// unassign is a successful no-op.
func WithStrictUnassign() Option { return func(f *Fake) { f.strictUnassign = true } }

// WithLatency makes every call wait d before it is handled.
func WithLatency(d time.Duration) Option { return func(f *Fake) { f.latency = d } }

// WithRequestLog keeps at most the last n requests for Requests (0: none),
// so a long-running simulator does not grow without bound. By default
// every request is kept, as tests want.
func WithRequestLog(n int) Option { return func(f *Fake) { f.maxRequests = max(n, 0) } }

// WithRandomFaults injects faults at random with the given probabilities.
func WithRandomFaults(rf RandomFaults) Option { return func(f *Fake) { f.setRandomFaults(rf) } }

// Fake is an http.Handler serving the Seam credential endpoints. It is safe
// for concurrent use. Tests usually start it with NewServer.
type Fake struct {
	apiKey     string
	autoCreate bool

	mu              sync.Mutex
	emptySuccess    bool
	exclusiveAssign bool
	strictUnassign  bool
	latency         time.Duration
	random          RandomFaults
	rng             *mrand.Rand
	queue           []queuedFault
	creds           map[string]*object // by lower-case acs_credential_id
	users           map[string]bool    // lower-case acs_user_id
	identities      map[string]bool    // lower-case user_identity_id
	calls           map[string]int
	totalCalls      int
	effects         map[pair]int
	totalEffects    int
	inflight        map[string]int
	maxInflight     int
	requests        []RecordedRequest
	maxRequests     int         // -1: keep every request
	answers         map[int]int // by status, 0: no answer

	// Provider sync (sync.go).
	now             func() time.Time
	syncDelay       time.Duration
	syncFailCode    string
	syncFailMessage string
	syncs           map[string]*pendingSync // by lower-case acs_credential_id

	// Seam's bad days, decided by edge.
	down        DownMode
	downCalls   int // calls since SetDown, for DownMixed
	refuseKey   bool
	limiter     *rate.Limiter // nil: no rate limit
	rateLimited int
}

type queuedFault struct {
	path  string
	n     int
	fault Fault
}

// pair is a credential and the user id the call named (acs_user_id or
// user_identity_id), both lower case.
type pair struct{ cred, user string }

// RecordedRequest is one call as the fake received it.
type RecordedRequest struct {
	Method string
	Path   string
	Body   []byte
	At     time.Time
	// Header is the request's header without Authorization.
	Header http.Header
}

// New returns an empty Fake.
func New(opts ...Option) *Fake {
	f := &Fake{
		creds:      map[string]*object{},
		users:      map[string]bool{},
		identities: map[string]bool{},
		calls:      map[string]int{},
		effects:    map[pair]int{},
		inflight:   map[string]int{},
		answers:    map[int]int{},
		syncs:      map[string]*pendingSync{},

		maxRequests: -1,
		now:         time.Now,
	}
	f.setRandomFaults(RandomFaults{})
	for _, opt := range opts {
		opt(f)
	}
	return f
}

// SetEmptySuccess switches between {} and the full envelope for assign and unassign.
func (f *Fake) SetEmptySuccess(empty bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.emptySuccess = empty
}

// SetExclusiveAssign switches between refusing (409
// acs_credential_already_assigned) and taking over an assign to a credential
// another user holds; see WithExclusiveAssign.
func (f *Fake) SetExclusiveAssign(exclusive bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.exclusiveAssign = exclusive
}

// SetStrictUnassign switches between refusing (400
// acs_credential_not_assigned) and accepting as a no-op an unassign by a
// user who does not hold the credential; see WithStrictUnassign.
func (f *Fake) SetStrictUnassign(strict bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.strictUnassign = strict
}

// SetLatency sets the wait before each call is handled.
func (f *Fake) SetLatency(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.latency = d
}

// SetRandomFaults replaces the random fault probabilities and reseeds.
func (f *Fake) SetRandomFaults(rf RandomFaults) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.setRandomFaults(rf)
}

func (f *Fake) setRandomFaults(rf RandomFaults) {
	f.random = rf
	f.rng = mrand.New(mrand.NewPCG(uint64(rf.Seed), 0x5ea3))
}

// FailNext makes the next n calls to path ("" for any endpoint; a bare
// "assign" means /acs/credentials/assign) fail with f. Queued faults are
// used in order, before random ones.
func (f *Fake) FailNext(n int, path string, fault Fault) {
	if n <= 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.queue = append(f.queue, queuedFault{path: normalizePath(path), n: n, fault: fault})
}

func normalizePath(p string) string {
	if p != "" && !strings.HasPrefix(p, "/") {
		return "/acs/credentials/" + p
	}
	return p
}

// AddCredential stores a credential object, keeping every field verbatim,
// unknown ones included. Its id is its acs_credential_id; an existing
// credential with that id is replaced. A holder named in the object
// (acs_user_id, user_identity_id) becomes a known user.
func (f *Fake) AddCredential(obj json.RawMessage) error {
	o, err := parseObject(obj)
	if err != nil {
		return fmt.Errorf("seamtest: add credential: %w", err)
	}
	id := o.str("acs_credential_id")
	if !isUUID(id) {
		return errors.New("seamtest: add credential: acs_credential_id must be a uuid")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.creds[strings.ToLower(id)] = o
	delete(f.syncs, strings.ToLower(id))
	if u := o.str("acs_user_id"); u != "" {
		f.users[strings.ToLower(u)] = true
	}
	if u := o.str("user_identity_id"); u != "" {
		f.identities[strings.ToLower(u)] = true
	}
	return nil
}

// AddUser makes an acs_user_id known.
func (f *Fake) AddUser(acsUserID string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.users[strings.ToLower(acsUserID)] = true
}

// AddUserIdentity makes a user_identity_id known, together with the ACS
// user Seam links to it (DerivedACSUserID).
func (f *Fake) AddUserIdentity(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addIdentity(id)
}

func (f *Fake) addIdentity(id string) {
	f.identities[strings.ToLower(id)] = true
	f.users[DerivedACSUserID(id)] = true
}

// DerivedACSUserID is the acs_user_id the fake gives the ACS user behind a
// user identity: a name-based uuid, the same for the same identity.
func DerivedACSUserID(userIdentityID string) string {
	return nameUUID("acs_user:" + strings.ToLower(userIdentityID))
}

// Credential returns the current object of a credential, exactly what /get
// would return.
func (f *Fake) Credential(id string) (json.RawMessage, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	o, ok := f.credential(strings.ToLower(id))
	if !ok {
		return nil, false
	}
	return o.marshal(), true
}

// IsAssigned reports whether the credential is held by userID, an
// acs_user_id or a user_identity_id.
func (f *Fake) IsAssigned(credID, userID string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	o, ok := f.creds[strings.ToLower(credID)]
	if !ok || userID == "" {
		return false
	}
	return strings.EqualFold(o.str("acs_user_id"), userID) || strings.EqualFold(o.str("user_identity_id"), userID)
}

// Holder returns the current holder of a credential: its acs_user_id and,
// when it was assigned by user identity, its user_identity_id. Both are
// empty when nobody holds it; ok is false when the credential does not
// exist (auto-create does not create it here).
func (f *Fake) Holder(credID string) (acsUserID, userIdentityID string, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	o, ok := f.creds[strings.ToLower(credID)]
	if !ok {
		return "", "", false
	}
	return o.str("acs_user_id"), o.str("user_identity_id"), true
}

// Calls counts the calls to path ("" for all, "assign" for
// /acs/credentials/assign), faulty ones included.
func (f *Fake) Calls(path string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if path == "" {
		return f.totalCalls
	}
	return f.calls[normalizePath(path)]
}

// Effects counts the effective state changes for a credential and the user
// id a call named: an assign that changed the holder, an unassign that
// removed it. No-op successes are not effects.
func (f *Fake) Effects(credID, userID string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.effects[pair{strings.ToLower(credID), strings.ToLower(userID)}]
}

// TotalEffects counts all effective state changes.
func (f *Fake) TotalEffects() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.totalEffects
}

// MaxConcurrentPerCredential is the peak number of calls being handled at
// once for any single credential, since New or ResetCounters. A call counts
// from its arrival (latency included) until the fake has decided its answer;
// the time a fault holds an answer back (Delay, a FaultTimeout's hang) is
// not counted, as the call is then lost in the network, not processed. The
// count ends before the answer is written, so a client that has its answer
// never overlaps its own next call; a client that gave up during the
// latency, though, leaves its call counted until the server notices the
// closed connection, which a retry sent at once can overlap.
func (f *Fake) MaxConcurrentPerCredential() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.maxInflight
}

// Requests returns a copy of every call received, in arrival order.
func (f *Fake) Requests() []RecordedRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]RecordedRequest, len(f.requests))
	for i, r := range f.requests {
		r.Body = slices.Clone(r.Body)
		r.Header = r.Header.Clone()
		out[i] = r
	}
	return out
}

// ResetCounters forgets calls, answers, effects, recorded requests and the
// concurrency peak; credentials, users, queued faults and the bad-day
// settings stay.
func (f *Fake) ResetCounters() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.calls)
	clear(f.effects)
	clear(f.answers)
	f.totalCalls, f.totalEffects, f.maxInflight, f.rateLimited = 0, 0, 0, 0
	f.requests = nil
}

// ServeHTTP handles one call: record it, let the edge refuse it on a bad
// day, wait the latency, apply a fault if one is due, else authenticate,
// validate and apply it.
func (f *Fake) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	requestID := newRequestID()
	rw.Header().Set("seam-request-id", requestID)
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBody+1))
	if err != nil {
		return // the client went away
	}
	f.record(r, body)
	w := &answerWriter{ResponseWriter: rw, f: f}
	defer w.done()
	if f.edge(w, r, requestID) {
		return
	}
	if len(body) > maxRequestBody {
		writeJSON(w, http.StatusRequestEntityTooLarge, errorBody("payload_too_large", "Request body too large.", requestID))
		return
	}
	ep, ok := route(r.URL.Path)
	if !ok {
		writeJSON(w, http.StatusNotFound, errorBody("not_found", "Endpoint not found.", requestID))
		return
	}
	if !slices.Contains(ep.methods, r.Method) {
		w.Header().Set("Allow", strings.Join(ep.methods, ", "))
		writeJSON(w, http.StatusMethodNotAllowed, errorBody("method_not_allowed", "Method not allowed.", requestID))
		return
	}

	release := f.enter(peekCredentialID(r, body))
	defer release()
	f.mu.Lock()
	latency := f.latency
	f.mu.Unlock()
	if !sleepCtx(r.Context(), latency) {
		return // the client gave up before the fake acted: nothing applied
	}
	fault, faulty := f.nextFault(r.URL.Path)
	if faulty && fault.Kind != FaultAppliedThenDrop {
		release()
		writeFault(w, r, fault, requestID)
		return
	}
	status, payload := f.handle(r, ep, body, requestID)
	release() // before answering: once the client sees the answer, the call is over
	if faulty {
		sleepCtx(r.Context(), fault.Delay)
		drop(w, false)
		return
	}
	writeJSON(w, status, payload)
}

type endpoint struct {
	name    string
	methods []string
}

// route maps a path to its endpoint. Seam takes POST and PATCH for assign
// and unassign, POST and GET (with a query) for get.
func route(path string) (endpoint, bool) {
	switch path {
	case seamclient.PathAssign:
		return endpoint{"assign", []string{http.MethodPost, http.MethodPatch}}, true
	case seamclient.PathUnassign:
		return endpoint{"unassign", []string{http.MethodPost, http.MethodPatch}}, true
	case seamclient.PathGet:
		return endpoint{"get", []string{http.MethodPost, http.MethodGet}}, true
	}
	return endpoint{}, false
}

func (f *Fake) record(r *http.Request, body []byte) {
	h := r.Header.Clone()
	h.Del("Authorization")
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[r.URL.Path]++
	f.totalCalls++
	if f.maxRequests == 0 {
		return
	}
	if f.maxRequests > 0 && len(f.requests) >= f.maxRequests {
		// Drop the oldest half at once: amortised O(1) per request.
		f.requests = append(f.requests[:0], f.requests[len(f.requests)-f.maxRequests/2:]...)
	}
	f.requests = append(f.requests, RecordedRequest{
		Method: r.Method, Path: r.URL.Path, Body: body, At: f.now(), Header: h,
	})
}

// enter counts a call in flight for a credential and returns its release,
// which may be called more than once.
func (f *Fake) enter(credID string) func() {
	if credID == "" {
		return func() {}
	}
	f.mu.Lock()
	f.inflight[credID]++
	f.maxInflight = max(f.maxInflight, f.inflight[credID])
	f.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.inflight[credID]--; f.inflight[credID] == 0 {
				delete(f.inflight, credID)
			}
		})
	}
}

func (f *Fake) nextFault(path string) (Fault, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.queue {
		q := &f.queue[i]
		if q.path != "" && q.path != path {
			continue
		}
		fault := q.fault
		if q.n--; q.n == 0 {
			f.queue = slices.Delete(f.queue, i, i+1)
		}
		return fault, true
	}
	return f.randomFault()
}

// input is a validated call body.
type input struct {
	credID, userID, identityID string
}

// user is the id the call named, for effect counting.
func (in input) user() string {
	if in.identityID != "" {
		return strings.ToLower(in.identityID)
	}
	return strings.ToLower(in.userID)
}

// handle authenticates, validates and applies one call, and returns the
// answer.
func (f *Fake) handle(r *http.Request, ep endpoint, body []byte, requestID string) (int, []byte) {
	if !f.authorized(r) {
		return http.StatusUnauthorized, errorBody("unauthorized", "Unauthorized.", requestID)
	}
	in, err := decodeInput(ep, r, body)
	if err != nil {
		return http.StatusBadRequest, errorBody("invalid_input", err.Error(), requestID)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	cred := f.lookupCredential(in.credID)
	if cred == nil {
		return http.StatusNotFound, errorBody("acs_credential_not_found", "Could not find an acs_credential with that acs_credential_id.", requestID)
	}
	if ep.name == "get" {
		return http.StatusOK, envelope(cred)
	}
	if code, typ, ok := f.lookupUser(in); !ok {
		return code, errorBody(typ, "Could not find the user.", requestID)
	}
	var changed bool
	if ep.name == "assign" {
		if f.exclusiveAssign && isHeld(cred) && !heldBy(cred, in) {
			return http.StatusConflict, errorBody(seamclient.ErrorTypeAlreadyAssigned, "The credential is assigned to another user.", requestID)
		}
		changed = assign(cred, in)
	} else {
		if f.strictUnassign && !heldBy(cred, in) {
			return http.StatusBadRequest, errorBody(seamclient.ErrorTypeNotAssigned, "The credential is not assigned to this user.", requestID)
		}
		changed = unassign(cred, in)
	}
	if changed {
		f.effects[pair{strings.ToLower(in.credID), in.user()}]++
		f.totalEffects++
		f.startSync(strings.ToLower(in.credID), cred)
	}
	if f.emptySuccess {
		return http.StatusOK, []byte("{}")
	}
	return http.StatusOK, envelope(cred)
}

func (f *Fake) authorized(r *http.Request) bool {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || strings.TrimSpace(token) == "" {
		return false
	}
	return f.apiKey == "" || subtle.ConstantTimeCompare([]byte(token), []byte(f.apiKey)) == 1
}

// decodeInput reads the body (or, for GET /get, the query) and checks it
// against the OpenAPI request schema.
func decodeInput(ep endpoint, r *http.Request, body []byte) (input, error) {
	var in input
	if r.Method == http.MethodGet {
		in.credID = r.URL.Query().Get("acs_credential_id")
	} else {
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(body, &fields); err != nil || fields == nil {
			return in, errors.New("request body must be a json object")
		}
		for _, fld := range []struct {
			key string
			dst *string
		}{
			{"acs_credential_id", &in.credID},
			{"acs_user_id", &in.userID},
			{"user_identity_id", &in.identityID},
		} {
			raw, ok := fields[fld.key]
			if !ok || string(raw) == "null" || ep.name == "get" && fld.key != "acs_credential_id" {
				continue
			}
			if json.Unmarshal(raw, fld.dst) != nil || !isUUID(*fld.dst) {
				return in, fmt.Errorf("%s must be a uuid", fld.key)
			}
		}
	}
	if !isUUID(in.credID) {
		return in, errors.New("acs_credential_id is required and must be a uuid")
	}
	if ep.name != "get" && (in.userID == "") == (in.identityID == "") {
		return in, errors.New("exactly one of acs_user_id and user_identity_id is required")
	}
	return in, nil
}

// lookupCredential finds a credential, creating it under auto-create; f.mu is held.
func (f *Fake) lookupCredential(id string) *object {
	key := strings.ToLower(id)
	if o, ok := f.credential(key); ok {
		return o
	}
	if !f.autoCreate {
		return nil
	}
	o := newCredential(id, f.now())
	f.creds[key] = o
	return o
}

// lookupUser checks that the user a call names exists; f.mu is held.
func (f *Fake) lookupUser(in input) (int, string, bool) {
	if in.identityID != "" {
		if !f.identities[strings.ToLower(in.identityID)] {
			if !f.autoCreate {
				return http.StatusNotFound, "user_identity_not_found", false
			}
			f.addIdentity(in.identityID)
		}
		return 0, "", true
	}
	if !f.users[strings.ToLower(in.userID)] {
		if !f.autoCreate {
			return http.StatusNotFound, "acs_user_not_found", false
		}
		f.users[strings.ToLower(in.userID)] = true
	}
	return 0, "", true
}

// assign makes the named user the credential's only holder and reports
// whether that changed anything.
func assign(cred *object, in input) bool {
	holder := in.userID
	if in.identityID != "" {
		holder = DerivedACSUserID(in.identityID)
	}
	if strings.EqualFold(cred.str("acs_user_id"), holder) {
		return false
	}
	cred.setString("acs_user_id", holder)
	if in.identityID != "" {
		cred.setString("user_identity_id", in.identityID)
	} else {
		cred.del("user_identity_id")
	}
	// is_issued says a card was encoded, which assigning does not do.
	return true
}

// isHeld reports whether anybody holds the credential.
func isHeld(cred *object) bool {
	return cred.str("acs_user_id") != "" || cred.str("user_identity_id") != ""
}

// heldBy reports whether the user the call names holds the credential: by
// acs_user_id, or by user_identity_id or the ACS user derived from it.
func heldBy(cred *object, in input) bool {
	holder := cred.str("acs_user_id")
	if in.identityID != "" {
		return strings.EqualFold(cred.str("user_identity_id"), in.identityID) ||
			strings.EqualFold(holder, DerivedACSUserID(in.identityID))
	}
	return strings.EqualFold(holder, in.userID)
}

// unassign removes the holder if it is the named user and reports whether
// that changed anything.
func unassign(cred *object, in input) bool {
	if !heldBy(cred, in) {
		return false
	}
	cred.del("acs_user_id")
	cred.del("user_identity_id")
	return true
}

// newCredential builds a realistic PIN-code credential. Its code and the
// ids around it derive from the credential id, so runs are repeatable.
func newCredential(id string, now time.Time) *object {
	sum := sha256.Sum256([]byte(strings.ToLower(id)))
	code := make([]byte, 4+int(sum[0])%3)
	for i := range code {
		code[i] = '0' + sum[i+1]%10
	}
	o := &object{vals: map[string]json.RawMessage{}}
	o.setString("acs_credential_id", id)
	o.setString("acs_system_id", nameUUID("acs_system"))
	o.setString("connected_account_id", nameUUID("connected_account"))
	o.setString("workspace_id", nameUUID("workspace"))
	o.setString("display_name", "Guest PIN")
	o.setString("code", string(code))
	o.setString("access_method", "code")
	o.set("is_one_time_use", mustJSON(false))
	o.set("is_multi_phone_sync_credential", mustJSON(false))
	o.set("is_issued", mustJSON(false))
	o.set("issued_at", mustJSON(nil))
	o.set("is_latest_desired_state_synced_with_provider", mustJSON(true))
	o.setString("latest_desired_state_synced_with_provider_at", timestamp(now))
	o.setString("created_at", timestamp(now))
	o.set("errors", json.RawMessage("[]"))
	o.set("warnings", json.RawMessage("[]"))
	o.set("is_managed", mustJSON(true))
	return o
}

func envelope(cred *object) []byte {
	return append(append([]byte(`{"acs_credential":`), cred.marshal()...), `,"ok":true}`...)
}

func errorBody(typ, msg, requestID string) []byte {
	return mustJSON(map[string]any{
		"error": map[string]string{"type": typ, "message": msg, "request_id": requestID},
		"ok":    false,
	})
}

func writeJSON(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// peekCredentialID reads the credential id of a call before validation, to
// count calls in flight per credential.
func peekCredentialID(r *http.Request, body []byte) string {
	if r.Method == http.MethodGet {
		return strings.ToLower(r.URL.Query().Get("acs_credential_id"))
	}
	var v struct {
		ID json.RawMessage `json:"acs_credential_id"`
	}
	var id string
	if json.Unmarshal(body, &v) != nil || json.Unmarshal(v.ID, &id) != nil {
		return ""
	}
	return strings.ToLower(id)
}

func timestamp(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return formatUUID(b)
}

// nameUUID is a version-5 style uuid of name in a fixed namespace.
func nameUUID(name string) string {
	sum := sha1.Sum([]byte("seamtest:" + name))
	var b [16]byte
	copy(b[:], sum[:16])
	b[6] = b[6]&0x0f | 0x50
	b[8] = b[8]&0x3f | 0x80
	return formatUUID(b)
}

func formatUUID(b [16]byte) string {
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
