package seamtest

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// FaultKind says how a faulty call is answered.
type FaultKind int

const (
	// FaultStatus answers Seam's JSON error envelope with Status and
	// ErrorType, plus a Retry-After header when RetryAfter is set.
	FaultStatus FaultKind = iota + 1
	// FaultHTML answers Status with an HTML page, as a gateway does.
	FaultHTML
	// FaultTimeout holds the call for Delay (0: until the client goes
	// away), then closes the connection. The change is not applied.
	FaultTimeout
	// FaultReset closes the connection with a TCP reset without answering.
	// The change is not applied.
	FaultReset
	// FaultAppliedThenDrop applies the change, then closes the connection
	// without answering: the client cannot know it succeeded.
	FaultAppliedThenDrop
)

func (k FaultKind) String() string {
	switch k {
	case FaultStatus:
		return "status"
	case FaultHTML:
		return "html"
	case FaultTimeout:
		return "timeout"
	case FaultReset:
		return "reset"
	case FaultAppliedThenDrop:
		return "applied_then_drop"
	}
	return "FaultKind(" + strconv.Itoa(int(k)) + ")"
}

// Fault is one scripted failure. Delay holds the answer (or the drop) back;
// for FaultTimeout it is how long to hang. A zero Kind means FaultStatus; a
// zero Status means 500.
type Fault struct {
	Kind       FaultKind
	Status     int
	ErrorType  string
	RetryAfter string
	Delay      time.Duration
	// Message is the error envelope's message (FaultStatus); empty says
	// the fault was injected. Seam's messages may quote a code.
	Message string
}

// Status429 is a 429 rate_limited answer with the given Retry-After header
// value (seconds or an HTTP date; empty sends none).
func Status429(retryAfter string) Fault {
	return Fault{Kind: FaultStatus, Status: http.StatusTooManyRequests, ErrorType: "rate_limited", RetryAfter: retryAfter}
}

// HTML is a gateway error page with the given status.
func HTML(status int) Fault { return Fault{Kind: FaultHTML, Status: status} }

// SeamError is a JSON error envelope with the given status and error type.
func SeamError(status int, typ string) Fault {
	return Fault{Kind: FaultStatus, Status: status, ErrorType: typ}
}

// Timeout hangs for d (0: until the client goes away) without applying the change.
func Timeout(d time.Duration) Fault { return Fault{Kind: FaultTimeout, Delay: d} }

// Reset drops the connection before applying the change.
func Reset() Fault { return Fault{Kind: FaultReset} }

// AppliedThenDrop applies the change and drops the connection unanswered.
func AppliedThenDrop() Fault { return Fault{Kind: FaultAppliedThenDrop} }

// RandomFaults are per-call probabilities in [0, 1]. Transient picks evenly
// among a 503 HTML page, a 502 HTML page, a 500 JSON error and a reset
// before applying (no 429: Seam answers 429 to a client over its rate,
// never at random; WithRateLimit models that); Permanent is a 400 invalid_input for that call
// only; AppliedThenDrop applies, then drops the connection. Values outside
// [0, 1] are clamped; if they add up to more than 1 the later ones get
// what is left. The same Seed gives the same sequence of draws.
type RandomFaults struct {
	Transient       float64
	Permanent       float64
	AppliedThenDrop float64
	Seed            int64
}

func (rf RandomFaults) enabled() bool {
	return rf.Transient > 0 || rf.Permanent > 0 || rf.AppliedThenDrop > 0
}

// randomFault draws the fault of one call; f.mu must be held.
func (f *Fake) randomFault() (Fault, bool) {
	if !f.random.enabled() {
		return Fault{}, false
	}
	u := f.rng.Float64()
	clamp := func(p float64) float64 { return min(max(p, 0), 1) }
	t := clamp(f.random.Transient)
	p := t + clamp(f.random.Permanent)
	a := p + clamp(f.random.AppliedThenDrop)
	switch {
	case u < t:
		return [...]Fault{
			HTML(http.StatusServiceUnavailable),
			HTML(http.StatusBadGateway),
			SeamError(http.StatusInternalServerError, "internal_server_error"),
			Reset(),
		}[f.rng.IntN(4)], true
	case u < p:
		return SeamError(http.StatusBadRequest, "invalid_input"), true
	case u < a:
		return AppliedThenDrop(), true
	}
	return Fault{}, false
}

// writeFault answers a call with f, which is not FaultAppliedThenDrop.
func writeFault(w http.ResponseWriter, r *http.Request, f Fault, requestID string) {
	if f.Kind != FaultTimeout && !sleepCtx(r.Context(), f.Delay) {
		return
	}
	status := f.Status
	if status == 0 {
		status = http.StatusInternalServerError
	}
	switch f.Kind {
	case FaultTimeout:
		if f.Delay > 0 {
			sleepCtx(r.Context(), f.Delay)
		} else {
			<-r.Context().Done()
		}
		drop(w, false)
	case FaultReset:
		drop(w, true)
	case FaultHTML:
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(status)
		text := strconv.Itoa(status) + " " + http.StatusText(status)
		_, _ = w.Write([]byte("<html>\r\n<head><title>" + text + "</title></head>\r\n<body>\r\n<center><h1>" +
			text + "</h1></center>\r\n</body>\r\n</html>\r\n"))
	default:
		typ := f.ErrorType
		if typ == "" {
			typ = strings.ReplaceAll(strings.ToLower(http.StatusText(status)), " ", "_")
		}
		if f.RetryAfter != "" {
			w.Header().Set("Retry-After", f.RetryAfter)
		}
		msg := f.Message
		if msg == "" {
			msg = "Injected by seamtest."
		}
		writeJSON(w, status, errorBody(typ, msg, requestID))
	}
}

// drop closes the connection without an answer; reset sends a TCP RST
// instead of a FIN. The request body has been read already.
func drop(w http.ResponseWriter, reset bool) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler) // HTTP/2: the server resets the stream
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok && reset {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// sleepCtx waits d and reports whether ctx is still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
