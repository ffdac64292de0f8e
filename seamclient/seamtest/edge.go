package seamtest

import (
	"bufio"
	"math"
	"net"
	"net/http"
	"strconv"
	"time"

	"golang.org/x/time/rate"
)

// Seam's bad days: an outage, a refused key and an enforced rate limit.
// They are decided at Seam's edge, in this order, as soon as a call has
// been recorded (it still counts in Calls and Requests, so a test can
// measure what the worker sends meanwhile): before the latency, the
// routing, the scripted and random faults and the change itself. A call
// refused at the edge applies nothing, uses up no queued fault and draws
// no random one, so a script survives the bad day intact. Each setting
// holds until it is switched off.

// DownMode says how the fake answers while Seam is down.
type DownMode int

const (
	// DownOff serves calls normally. It is the default.
	DownOff DownMode = iota
	// DownReset closes each call's connection with a TCP reset, without
	// an answer. The fake has read the request by then, so seamclient
	// reports a *TransportError with Sent true (Classify: OutcomeUnknown),
	// the same as a drop after applying, although nothing was applied. A
	// dial that is refused outright (Sent false, Transient) needs a port
	// nobody listens on; the fake cannot refuse per call.
	DownReset
	// Down503 answers a gateway's HTML 503 page, without a seam-request-id
	// since Seam never saw the call. seamclient reports an *APIError with
	// StatusCode 503, no Type, the page's start in Body (Transient).
	Down503
	// DownMixed alternates DownReset and Down503 call by call, starting
	// with a reset each time it is set, as a failing load balancer does.
	DownMixed
)

func (m DownMode) String() string {
	switch m {
	case DownOff:
		return "off"
	case DownReset:
		return "reset"
	case Down503:
		return "503"
	case DownMixed:
		return "mixed"
	}
	return "DownMode(" + strconv.Itoa(int(m)) + ")"
}

// WithDown starts the fake down; see SetDown.
func WithDown(mode DownMode) Option { return func(f *Fake) { f.down = mode } }

// WithRefuseKey starts the fake refusing every key; see SetRefuseKey.
func WithRefuseKey() Option { return func(f *Fake) { f.refuseKey = true } }

// WithRateLimit makes the fake enforce a rate limit; see SetRateLimit.
func WithRateLimit(perSecond float64, burst int) Option {
	return func(f *Fake) { f.limiter = newLimiter(perSecond, burst) }
}

// SetDown takes Seam down (or, with DownOff, back up): every call fails as
// mode says, before anything is applied.
func (f *Fake) SetDown(mode DownMode) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down, f.downCalls = mode, 0
}

// SetRefuseKey makes every call, whatever its bearer token, fail with 401
// unauthorized, as after the key was rotated or revoked at Seam, until it
// is switched off. seamclient reports an *APIError with StatusCode 401
// (Classify: Permanent). WithAPIKey's check of a fixed key stays as it is.
func (f *Fake) SetRefuseKey(refuse bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refuseKey = refuse
}

// SetRateLimit enforces a token bucket of perSecond calls a second and
// burst calls at once (at least 1) across all endpoints, as Seam does
// unannounced; perSecond <= 0 switches it off. It starts with a full
// bucket. A call over the limit is answered 429 rate_limited with a
// Retry-After of the whole seconds until a token is free (rounded up, at
// least 1), which seamclient puts in APIError.RetryAfter. Such calls take
// no token, so a client that keeps knocking does not push the limit back.
func (f *Fake) SetRateLimit(perSecond float64, burst int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.limiter = newLimiter(perSecond, burst)
}

func newLimiter(perSecond float64, burst int) *rate.Limiter {
	if !(perSecond > 0) { // NaN too
		return nil
	}
	return rate.NewLimiter(rate.Limit(perSecond), max(burst, 1))
}

// RateLimited counts the calls the rate limit refused with 429, since New
// or ResetCounters. Scripted and random 429 faults are not among them;
// Answers(429) counts both.
func (f *Fake) RateLimited() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rateLimited
}

// Answers counts the calls answered with status, since New or
// ResetCounters, whatever decided the answer (the edge, a fault, the call
// itself). Answers(0) counts the calls that got no answer: reset, dropped,
// hung until the client gave up.
func (f *Fake) Answers(status int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.answers[status]
}

// edge answers a call the way Seam's edge does on a bad day, and reports
// whether it did; false lets the call through.
func (f *Fake) edge(w http.ResponseWriter, r *http.Request, requestID string) bool {
	f.mu.Lock()
	down := f.down
	if down == DownMixed {
		down = [...]DownMode{DownReset, Down503}[f.downCalls%2]
		f.downCalls++
	}
	refuse := f.refuseKey
	var retryAfter int
	if down == DownOff && !refuse && f.limiter != nil {
		if now := time.Now(); !f.limiter.AllowN(now, 1) {
			retryAfter = secondsToToken(f.limiter, now)
			f.rateLimited++
		}
	}
	f.mu.Unlock()

	switch {
	case down == DownReset:
		drop(w, true)
	case down != DownOff:
		w.Header().Del("seam-request-id")
		writeFault(w, r, HTML(http.StatusServiceUnavailable), requestID)
	case refuse:
		writeJSON(w, http.StatusUnauthorized, errorBody("unauthorized", "Unauthorized.", requestID))
	case retryAfter > 0:
		// The envelope of Status429, with Seam's wording instead of "Injected".
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
		writeJSON(w, http.StatusTooManyRequests, errorBody("rate_limited", "Too many requests.", requestID))
	default:
		return false
	}
	return true
}

// secondsToToken is the wait until lim has a whole token, in whole seconds
// rounded up, at least 1; lim must be guarded by the caller.
func secondsToToken(lim *rate.Limiter, now time.Time) int {
	secs := math.Ceil((1 - lim.TokensAt(now)) / float64(lim.Limit()))
	return int(min(max(secs, 1), math.MaxInt32))
}

// answerWriter counts the answer of a call for Answers as soon as it is
// decided (status written, connection hijacked to drop it), so the count
// is there before the client can see the answer. It passes Hijack
// through, for the faults that drop the connection.
type answerWriter struct {
	http.ResponseWriter
	f       *Fake
	counted bool
}

func (w *answerWriter) count(status int) {
	if w.counted {
		return
	}
	w.counted = true
	w.f.mu.Lock()
	defer w.f.mu.Unlock()
	w.f.answers[status]++
}

func (w *answerWriter) WriteHeader(code int) {
	if code >= 200 {
		w.count(code)
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *answerWriter) Write(b []byte) (int, error) {
	w.count(http.StatusOK)
	return w.ResponseWriter.Write(b)
}

func (w *answerWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.count(0)
	hj, ok := w.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, http.ErrNotSupported
	}
	return hj.Hijack()
}

// Unwrap lets http.ResponseController reach the server's writer.
func (w *answerWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// done counts a call the handler left unanswered: the client went away.
func (w *answerWriter) done() { w.count(0) }
