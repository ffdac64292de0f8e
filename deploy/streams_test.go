package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/consumer/embedded/natstest"
	"github.com/keyworker/keyworker/idempotency"
)

var update = flag.Bool("update", false, "rewrite deploy/nats/streams from consumer.Config")

// clusterConfig is the worker's layout on a 3-node cluster (KEYWORKER_REPLICAS=3).
func clusterConfig(t *testing.T) consumer.Config {
	t.Helper()
	c := consumer.Config{Replicas: 3}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

// streamFiles maps each file of deploy/nats/streams to the definition it must hold.
func streamFiles(t *testing.T) map[string]any {
	t.Helper()
	c := clusterConfig(t)
	files := map[string]any{}
	for _, s := range c.StreamConfigs() {
		files[s.Name+".json"] = s
	}
	files[c.InputStream+".consumer."+c.Durable+".json"] = c.ConsumerConfig()
	return files
}

func marshalDefinition(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // "credential.>" as written, not "\u003e"
	enc.SetIndent("", "  ")
	err := enc.Encode(v)
	return b.Bytes(), err
}

// TestStreamFiles_EqualWhatTheWorkerProvisions keeps deploy/nats/streams,
// the definitions for `nats stream add --config` and `nats consumer add
// --config`, equal to consumer.Config's StreamConfigs and ConsumerConfig
// with 3 replicas. Run with -update to rewrite them.
func TestStreamFiles_EqualWhatTheWorkerProvisions(t *testing.T) {
	dir := filepath.Join(suite.root, "deploy", "nats", "streams")
	want := streamFiles(t)
	if *update {
		for name, v := range want {
			b, err := marshalDefinition(v)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if _, ok := want[e.Name()]; !ok {
			t.Errorf("%s: no such stream or consumer in consumer.Config", e.Name())
		}
	}
	for name, v := range want {
		raw, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%v (go test ./deploy -run StreamFiles -update writes it)", err)
			continue
		}
		got := reflect.New(reflect.TypeOf(v))
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(got.Interface()); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !reflect.DeepEqual(got.Elem().Interface(), v) {
			b, _ := marshalDefinition(v)
			t.Errorf("%s differs from what the worker provisions (go test ./deploy -run StreamFiles -update rewrites it); want:\n%s", name, b)
		}
	}
}

// TestStreamFiles_AppliedByAnOperatorAreAcceptedByTheWorker sends each file
// to a real JetStream server as the nats CLI does (the JSON as the create
// request), with one replica since the server is alone, and then checks
// that the worker's provisioning finds nothing to change.
func TestStreamFiles_AppliedByAnOperatorAreAcceptedByTheWorker(t *testing.T) {
	_, url := natstest.StartTest(t)
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	c := clusterConfig(t)
	dir := filepath.Join(suite.root, "deploy", "nats", "streams")
	apply := func(file, subject string) {
		t.Helper()
		raw, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		var def map[string]any
		if err := json.Unmarshal(raw, &def); err != nil {
			t.Fatal(err)
		}
		def["num_replicas"] = 1
		if subject == "" { // a consumer: the create request wraps the config
			subject = fmt.Sprintf("$JS.API.CONSUMER.CREATE.%s.%s", c.InputStream, def["durable_name"])
			def = map[string]any{"stream_name": c.InputStream, "config": def, "action": "create"}
		}
		req, _ := json.Marshal(def)
		resp, err := nc.Request(subject, req, 5*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		var answer struct {
			Error *struct {
				Description string `json:"description"`
			} `json:"error"`
		}
		if err := json.Unmarshal(resp.Data, &answer); err != nil || answer.Error != nil {
			t.Fatalf("%s refused by the server: %s", file, resp.Data)
		}
	}
	for _, s := range c.StreamConfigs() {
		apply(s.Name+".json", "$JS.API.STREAM.CREATE."+s.Name)
	}
	apply(c.InputStream+".consumer."+c.Durable+".json", "")

	single := consumer.Config{Replicas: 1}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := consumer.Provision(ctx, js, single, false); err != nil {
		t.Fatalf("the worker refuses streams made from deploy/nats/streams: %v", err)
	}
}

// kvAddCommand is the nats CLI command creating a bucket as the worker would.
func kvAddCommand(kv jetstream.KeyValueConfig) string {
	cmd := fmt.Sprintf("nats kv add %s --history=%d --replicas=%d --storage=file", kv.Bucket, max(kv.History, 1), kv.Replicas)
	if kv.TTL > 0 {
		cmd += fmt.Sprintf(" --ttl=%s", strings.TrimSuffix(strings.TrimSuffix(kv.TTL.String(), "0s"), "0m"))
	}
	return cmd + fmt.Sprintf(" --description=%q", kv.Description)
}

// TestREADME_ProvisioningCommandsMatchTheWorker keeps the nats CLI commands
// of deploy/README.md equal to what the worker itself would create.
func TestREADME_ProvisioningCommandsMatchTheWorker(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(suite.root, "deploy", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	c := clusterConfig(t)
	want := []string{
		kvAddCommand(idempotency.BucketConfig(c.IdempotencyBucket, c.IdempotencyTTL, c.Replicas)),
		kvAddCommand(idempotency.StateBucketConfig(c.StateBucket, c.Replicas)),
	}
	for _, s := range c.StreamConfigs() {
		want = append(want, "nats stream add --config deploy/nats/streams/"+s.Name+".json")
	}
	want = append(want, fmt.Sprintf("nats consumer add %s --config deploy/nats/streams/%s.consumer.%s.json", c.InputStream, c.InputStream, c.Durable))
	for _, line := range want {
		if !bytes.Contains(readme, []byte(line)) {
			t.Errorf("deploy/README.md lacks the command\n  %s", line)
		}
	}
}
