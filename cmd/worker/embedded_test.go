package main

// Tests of the embedded NATS server a worker starts with no NATS_URL: it
// lets in only holders of the nkey generated in the data directory, one
// worker owns a data directory at a time, and operator commands attach to it.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/consumer/dlq"
	"github.com/keyworker/keyworker/schemas"
)

// embeddedWorker prepares a worker binary with no NATS_URL (so its embedded
// server) on dataDir and the built-in simulator, without building
// nats-server. It does not start it.
func embeddedWorker(t *testing.T, dataDir string) *procWorker {
	t.Helper()
	return procNewWorker(t, "KEYWORKER_DATA_DIR="+dataDir) // the later value wins
}

// command runs `worker args...` to its end with w's environment and
// returns its output and exit code.
func (w *procWorker) command(args ...string) (stdout, stderr string, code int) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, w.bin, args...)
	cmd.Env = w.env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		w.t.Fatalf("worker %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errb.String(), cmd.ProcessState.ExitCode()
}

// nkeyConnect connects to the embedded server advertised in dataDir with
// the data directory's nkey, as the nats CLI would with --nkey.
func nkeyConnect(t *testing.T, dataDir string) jetstream.JetStream {
	t.Helper()
	auth, err := nats.NkeyOptionFromSeed(filepath.Join(dataDir, "nats.nkey"))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(readURLFile(t, dataDir), auth)
	if err != nil {
		t.Fatalf("connect with the data directory's nkey: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func readURLFile(t *testing.T, dataDir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, "nats.url"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// awaitStream returns the first message of stream that match accepts,
// reading it from the start as it fills.
func awaitStream(t *testing.T, js jetstream.JetStream, stream string, match func(jetstream.Msg) bool) jetstream.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for {
		m, err := c.Next(jetstream.FetchContext(ctx))
		if err != nil {
			t.Fatalf("waiting on %s: %v", stream, err)
		}
		if match(m) {
			return m
		}
	}
}

// publishAndAwaitAssigned runs `worker publish checkin` with w's
// environment and waits for the worker's credential.assigned for it.
func publishAndAwaitAssigned(t *testing.T, w *procWorker, js jetstream.JetStream) {
	t.Helper()
	id := "evt-" + newUUID()
	out, errOut, code := w.command("publish", "checkin", "--credential", newUUID(), "--user", newUUID(), "--id", id)
	if code != 0 {
		t.Fatalf("worker publish: exit %d\n%s%s", code, out, errOut)
	}
	awaitStream(t, js, consumer.DefaultResultsStream, func(m jetstream.Msg) bool {
		var env schemas.Envelope
		var r schemas.CredentialResult
		return m.Subject() == schemas.SubjectAssigned && json.Unmarshal(m.Data(), &env) == nil &&
			json.Unmarshal(env.Data, &r) == nil && r.SourceEventID == id
	})
}

func TestEmbedded_RefusesClientsWithoutTheDataDirNKeyAndOperatorCommandsAttach(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	w := embeddedWorker(t, dataDir)
	w.start()
	w.waitReady(60 * time.Second)

	url := readURLFile(t, dataDir)
	if nc, err := nats.Connect(url); err == nil {
		nc.Close()
		t.Fatal("the embedded server let in a client without credentials")
	} else if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("connect without credentials: %v, want an authorization violation", err)
	}
	for name, want := range map[string]os.FileMode{".": 0o700, "nats.nkey": 0o600, "nats.url": 0o600} {
		st, err := os.Stat(filepath.Join(dataDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := st.Mode().Perm(); got != want {
			t.Errorf("%s: mode %o, want %o", name, got, want)
		}
	}
	js := nkeyConnect(t, dataDir)

	// The worker handles what `worker publish` sent: publish reached its server.
	publishAndAwaitAssigned(t, w, js)

	// A dead letter, listed by `worker dlq list` through the worker's server.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.Publish(ctx, schemas.SubjectCheckedIn, []byte("not an event")); err != nil {
		t.Fatal(err)
	}
	dl := awaitStream(t, js, consumer.DefaultDeadLetterStream, func(jetstream.Msg) bool { return true })
	meta, err := dl.Metadata()
	if err != nil {
		t.Fatal(err)
	}
	out, errOut, code := w.command("dlq", "list", "--json")
	if code != 0 {
		t.Fatalf("worker dlq list: exit %d\n%s%s", code, out, errOut)
	}
	var listed []dlq.Summary
	if err := json.Unmarshal([]byte(out), &listed); err != nil {
		t.Fatalf("dlq list --json: %v\n%s", err, out)
	}
	if len(listed) != 1 || listed[0].Sequence != meta.Sequence.Stream || listed[0].OriginalSubject != schemas.SubjectCheckedIn {
		t.Fatalf("dlq list: %+v, want the one dead letter, seq %d", listed, meta.Sequence.Stream)
	}
	if out, errOut, code := w.command("status", "--json"); code != 0 {
		t.Fatalf("worker status: exit %d\n%s%s", code, out, errOut)
	}

	seed, err := os.ReadFile(filepath.Join(dataDir, "nats.nkey"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range w.logLines() {
		if strings.Contains(l, strings.TrimSpace(string(seed))) {
			t.Fatalf("the nkey seed is in the log: %s", l)
		}
	}
}

func TestEmbedded_SecondWorkerOnTheDataDirExits2AndANewOneStartsAfterTheFirstDies(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	first := embeddedWorker(t, dataDir)
	first.start()
	first.waitReady(60 * time.Second)
	url := readURLFile(t, dataDir)

	second := embeddedWorker(t, dataDir)
	out, errOut, code := second.command("run")
	line := strings.TrimSpace(errOut)
	if code != 2 || out != "" || strings.Contains(line, "\n") || !strings.Contains(line, strconv.Itoa(first.cmd.Process.Pid)) {
		t.Fatalf("second worker run: exit %d, stdout %q, stderr %q; want exit 2 and one line naming pid %d",
			code, out, errOut, first.cmd.Process.Pid)
	}

	if !first.running() {
		t.Fatal("the first worker stopped")
	}
	if got := readURLFile(t, dataDir); got != url {
		t.Fatalf("nats.url changed from %s to %s", url, got)
	}
	publishAndAwaitAssigned(t, first, nkeyConnect(t, dataDir))

	// SIGKILL: no clean-up runs, the kernel drops the lock with the process
	// and nats.url is left behind, naming a server that is gone.
	first.kill()
	if out, errOut, code := second.command("status"); code != 0 {
		t.Fatalf("worker status with no worker running: exit %d\n%s%s", code, out, errOut)
	}
	second.start()
	second.waitReady(60 * time.Second)
	publishAndAwaitAssigned(t, second, nkeyConnect(t, dataDir))
}
