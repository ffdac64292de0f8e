package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httputil"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyworker/keyworker/consumer/consumertest"
	"github.com/keyworker/keyworker/consumer/embedded/natstest"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

const (
	hygieneAPIKey    = "seam_live_SECRETKEY_12345"
	hygieneNATSPass  = "NATSPASS_SECRET_987"
	hygieneWrongPass = "NATSPASS_WRONG_555"
	hygienePIN       = "918273"
)

// hygieneLeaks returns what each secret looks like in a line that leaks it.
func hygieneLeaks() map[string]*regexp.Regexp {
	return map[string]*regexp.Regexp{
		"seam api key":        regexp.MustCompile(`SECRETKEY_12345`),
		"nats password":       regexp.MustCompile(`NATSPASS_SECRET_987`),
		"wrong nats password": regexp.MustCompile(`NATSPASS_WRONG_555`),
		// Digits that are not part of a longer number, a hex id or a decimal.
		"credential pin": regexp.MustCompile(`(^|[^0-9A-Za-z.])` + hygienePIN + `([^0-9A-Za-z.]|$)`),
	}
}

// TestLogHygiene_NoSecretInAnyLogLineOrDeadLetterError runs the worker at
// debug level through failures that put server text into errors (a real
// 401 for a refused key, a 400 echoing the request with its Authorization
// header, a 502 page echoing the request and a credential with its PIN, an
// undecodable 2xx carrying the PIN), a NATS password in NATS_PASSWORD and in
// NATS_URL with a nats-server restart, and a refused NATS password; no
// log line of any run, and no dead letter's error, may hold a secret.
func TestLogHygiene_NoSecretInAnyLogLineOrDeadLetterError(t *testing.T) {
	natsSrv := procStartNATS(t, "u", hygieneNATSPass)
	client := procConnect(t, natsSrv)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	at := time.Now().Add(-time.Hour)
	published := 0
	publish := func(subject, cred, user string) {
		t.Helper()
		id := newUUID()
		doc := consumertest.Event(subject, "pms://hygiene-test", id, at, schemas.GuestData{ACSCredentialID: cred, ACSUserID: user})
		if _, err := client.publish(ctx, subject, doc, id); err != nil {
			t.Fatal(err)
		}
		published++
	}
	waitAll := func() {
		t.Helper()
		natstest.WaitFor(t, 60*time.Second, func() error {
			if err := client.drained(); err != nil {
				return err
			}
			c, err := client.outcomeCount()
			if err == nil && c < published {
				err = fmt.Errorf("%d outcomes, want %d", c, published)
			}
			return err
		})
	}
	var workers []*procWorker
	newWorker := func(seamURL string, env ...string) *procWorker {
		w := procNewWorker(t, append([]string{"SEAM_ENDPOINT=" + seamURL, "SEAM_API_KEY=" + hygieneAPIKey, "LOG_LEVEL=debug",
			"KEYWORKER_SEAM_TIMEOUT=2s"}, env...)...)
		workers = append(workers, w)
		return w
	}
	natsEnv := []string{"NATS_URL=" + natsSrv.URL(), "NATS_USER=u", "NATS_PASSWORD=" + hygieneNATSPass}

	// Run 1: Seam refuses the key with a real 401.
	refusing := procNewSeam(t, seamtest.WithAPIKey("seam_live_the_right_one"), seamtest.WithAutoCreate())
	w1 := newWorker(refusing.URL, natsEnv...)
	w1.start()
	w1.waitReady(30 * time.Second)
	// The event waits for a key that works (run 2 handles it): nothing is dead-lettered.
	publish(schemas.SubjectCheckedIn, newUUID(), newUUID())
	natstest.WaitFor(t, 10*time.Second, func() error {
		code, body, err := w1.readyz()
		if err == nil && (code != http.StatusServiceUnavailable || !strings.Contains(body, "401")) {
			err = fmt.Errorf("readyz %d %s after a 401, want 503 naming it", code, body)
		}
		return err
	})
	if code, _ := w1.terminate(15 * time.Second); code != 0 {
		t.Errorf("run 1 exit code %d", code)
	}

	// Run 2: the right key, and a Seam that echoes secrets into errors.
	seam := procNewSeam(t, seamtest.WithAPIKey(hygieneAPIKey))
	pinCred, echoReq, htmlCred, badJSONCred := newUUID(), newUUID(), newUUID(), newUUID()
	guest := newUUID()
	seam.AddUser(guest)
	addPINCredentials(t, seam, pinCred, echoReq, htmlCred, badJSONCred)
	pinObject, _ := seam.Credential(pinCred)
	var gateway atomic.Int32
	seam.setIntercept(func(w http.ResponseWriter, r *http.Request, body []byte) bool {
		dump, _ := httputil.DumpRequest(r, false)
		switch procRequestCredential(body) {
		case echoReq:
			// A 400 whose message repeats the whole request, headers included.
			msg := "invalid request: " + string(dump) + string(body)
			writeSeamError(w, http.StatusBadRequest, "invalid_input", msg)
		case htmlCred:
			// A gateway page echoing the request and the credential; transient.
			if r.URL.Path == seamtest.PathGet || gateway.Add(1) > 2 {
				return false
			}
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusBadGateway)
			fmt.Fprintf(w, "<html><body><h1>502</h1><pre>%s</pre><pre>%s</pre></body></html>", dump, pinObject)
		case badJSONCred:
			if r.URL.Path == seamtest.PathGet {
				return false
			}
			// Applied, then an answer that cannot be decoded.
			rec := newDiscardWriter()
			seam.Fake.ServeHTTP(rec, r)
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"acs_credential": {"code": "%s", "acs_credential_id": `, hygienePIN)
		default:
			return false
		}
		return true
	})
	w2 := newWorker(seam.URL, natsEnv...)
	w2.start()
	w2.waitReady(30 * time.Second)
	for _, cred := range []string{pinCred, echoReq, htmlCred, badJSONCred} {
		publish(schemas.SubjectCheckedIn, cred, guest)
	}
	waitAll()
	if code, _ := w2.terminate(15 * time.Second); code != 0 {
		t.Errorf("run 2 exit code %d", code)
	}

	// Run 3: the password in NATS_URL, and nats-server restarted under the
	// worker, so it logs the disconnect and the reconnect.
	w3 := newWorker(seam.URL, "NATS_URL=nats://u:"+hygieneNATSPass+"@127.0.0.1:"+fmt.Sprint(natsSrv.port))
	w3.start()
	w3.waitReady(30 * time.Second)
	natsSrv.kill()
	natstest.WaitFor(t, 15*time.Second, func() error {
		code, body, err := w3.readyz()
		if err == nil && code == http.StatusOK {
			err = fmt.Errorf("readyz 200 with nats-server down: %s", body)
		}
		return err
	})
	natsSrv.start()
	w3.waitReady(30 * time.Second)
	publish(schemas.SubjectCheckedOut, pinCred, guest)
	waitAll()
	if code, _ := w3.terminate(15 * time.Second); code != 0 {
		t.Errorf("run 3 exit code %d", code)
	}

	// Run 4: NATS refuses the password; the worker exits with one line.
	w4 := newWorker(seam.URL, "NATS_URL="+natsSrv.URL(), "NATS_USER=u", "NATS_PASSWORD="+hygieneWrongPass)
	w4.start()
	select {
	case <-w4.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("worker with a refused NATS password still running after 30 s")
	}
	if code := w4.cmd.ProcessState.ExitCode(); code == 0 {
		t.Errorf("worker with a refused NATS password exited 0")
	}
	w4.finish()

	// The failures happened, so their error text had its chance to leak.
	outcomes := client.outcomes()
	kinds := map[string]int{}
	for _, o := range outcomes {
		if o.DeadLetter {
			kinds[fmt.Sprint(o.DL.Error.HTTPStatus)]++
		} else {
			kinds[o.Subject]++
		}
	}
	// The check-in refused with 401 in run 1 waited for a key that works and
	// was handled in run 2, whose Seam does not know its credential: 404.
	if kinds["401"] != 0 || kinds["404"] != 1 || kinds["400"] != 1 || kinds[schemas.SubjectAssigned] != 3 || kinds[schemas.SubjectUnassigned] != 1 {
		t.Fatalf("outcomes %v: want no 401 dead letter, one 404 and one 400 dead letter, 3 assigned, 1 unassigned", kinds)
	}

	lines := 0
	for i, w := range workers {
		for _, line := range w.logLines() {
			lines++
			for name, re := range hygieneLeaks() {
				if re.MatchString(line) {
					t.Errorf("run %d logs the %s: %s", i+1, name, line)
				}
			}
		}
	}
	for _, o := range outcomes {
		if !o.DeadLetter {
			continue
		}
		for name, re := range hygieneLeaks() {
			if re.MatchString(o.DL.Error.Message) {
				t.Errorf("dead letter %d error message holds the %s: %s", o.Seq, name, o.DL.Error.Message)
			}
		}
	}
	t.Logf("%d log lines from %d runs checked; outcomes %v", lines, len(workers), kinds)
}

// TestLogHygiene_SeamErrorQuotingACredentialPINLeaksNoPIN: Seam error
// messages may quote the credential they are about, PIN included (a
// transient 409 twice, then success; a permanent 400). The PIN must reach
// neither the log nor the dead letter's error message.
func TestLogHygiene_SeamErrorQuotingACredentialPINLeaksNoPIN(t *testing.T) {
	natsSrv := procStartNATS(t, "", "")
	client := procConnect(t, natsSrv)
	seam := procNewSeam(t, seamtest.WithAPIKey(hygieneAPIKey))
	busyCred, refusedCred, guest := newUUID(), newUUID(), newUUID()
	seam.AddUser(guest)
	addPINCredentials(t, seam, busyCred, refusedCred)
	var conflicts atomic.Int32
	seam.setIntercept(func(w http.ResponseWriter, r *http.Request, body []byte) bool {
		cred := procRequestCredential(body)
		if r.URL.Path == seamtest.PathGet || cred == busyCred && conflicts.Add(1) > 2 {
			return false
		}
		obj, _ := seam.Credential(cred)
		switch cred {
		case busyCred:
			writeSeamError(w, http.StatusConflict, "credential_busy", "credential is being changed: "+string(obj))
		case refusedCred:
			writeSeamError(w, http.StatusBadRequest, "invalid_input", "cannot assign credential "+string(obj))
		default:
			return false
		}
		return true
	})
	worker := procNewWorker(t, "NATS_URL="+natsSrv.URL(), "SEAM_ENDPOINT="+seam.URL, "SEAM_API_KEY="+hygieneAPIKey, "LOG_LEVEL=debug")
	worker.start()
	worker.waitReady(30 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, cred := range []string{busyCred, refusedCred} {
		id := newUUID()
		doc := consumertest.Event(schemas.SubjectCheckedIn, "pms://hygiene-test", id, time.Now().Add(-time.Hour),
			schemas.GuestData{ACSCredentialID: cred, ACSUserID: guest})
		if _, err := client.publish(ctx, schemas.SubjectCheckedIn, doc, id); err != nil {
			t.Fatal(err)
		}
	}
	natstest.WaitFor(t, 30*time.Second, func() error {
		c, err := client.outcomeCount()
		if err == nil && c < 2 {
			err = fmt.Errorf("%d outcomes, want 2", c)
		}
		return err
	})
	if code, _ := worker.terminate(15 * time.Second); code != 0 {
		t.Errorf("exit code %d", code)
	}
	pin := hygieneLeaks()["credential pin"]
	for _, line := range worker.logLines() {
		if pin.MatchString(line) {
			t.Errorf("log line holds the PIN: %s", line)
		}
	}
	for _, o := range client.outcomes() {
		if o.DeadLetter && pin.MatchString(o.DL.Error.Message) {
			t.Errorf("dead letter error message holds the PIN: %s", o.DL.Error.Message)
		}
	}
}

// addPINCredentials adds PIN-code credentials whose code is hygienePIN.
func addPINCredentials(t *testing.T, seam *procSeam, ids ...string) {
	t.Helper()
	for _, id := range ids {
		obj := fmt.Sprintf(`{"acs_credential_id":%q,"access_method":"code","code":%q,"display_name":"Room 101 PIN","is_managed":true}`, id, hygienePIN)
		if err := seam.AddCredential(json.RawMessage(obj)); err != nil {
			t.Fatal(err)
		}
	}
}

func writeSeamError(w http.ResponseWriter, status int, typ, msg string) {
	b, _ := json.Marshal(map[string]any{"error": map[string]string{"type": typ, "message": msg}, "ok": false})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// discardWriter is a ResponseWriter that keeps nothing.
type discardWriter struct{ h http.Header }

func newDiscardWriter() *discardWriter       { return &discardWriter{h: http.Header{}} }
func (d *discardWriter) Header() http.Header { return d.h }
func (d *discardWriter) Write(b []byte) (int, error) {
	return len(b), nil
}
func (d *discardWriter) WriteHeader(int) {}
