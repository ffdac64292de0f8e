package deploy_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// workerVariables are the environment variables `worker run` reads, taken
// from its own --help.
func workerVariables(t *testing.T) map[string]bool {
	t.Helper()
	out, err := exec.Command(binary(t, suite.workerBin), "run", "--help").Output()
	if err != nil {
		t.Fatalf("worker run --help: %v", err)
	}
	vars := map[string]bool{}
	for _, m := range regexp.MustCompile(`\(\$([A-Z0-9_]+)\)`).FindAllStringSubmatch(string(out), -1) {
		vars[m[1]] = true
	}
	if !vars["NATS_URL"] || !vars["SEAM_API_KEY"] {
		t.Fatalf("worker run --help names no NATS_URL or SEAM_API_KEY:\n%s", out)
	}
	return vars
}

func readYAML(t *testing.T, rel string) []map[string]any {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(suite.root, "deploy", rel))
	if err != nil {
		t.Fatal(err)
	}
	var docs []map[string]any
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	for {
		var d map[string]any
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", rel, err)
		}
		docs = append(docs, d)
	}
	return docs
}

// at walks a decoded YAML document: keys for maps, integers for lists.
func at(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func str(v any) string {
	if v == nil {
		return ""
	}
	return fmt.Sprint(v)
}

// TestCompose_DescribesAThreeNodeClusterAndTwoLeastPrivilegeWorkers checks
// deploy/docker-compose.yml: three JetStream nodes with their own volumes,
// two workers on the cluster as user keyworker with R3 streams, the
// simulator from the worker image, and only variables the worker reads.
// When docker compose (or docker-compose) is installed it also validates
// the file with deploy/.env.example, and without the passwords.
func TestCompose_DescribesAThreeNodeClusterAndTwoLeastPrivilegeWorkers(t *testing.T) {
	vars := workerVariables(t)
	compose := readYAML(t, "docker-compose.yml")[0]
	services, _ := compose["services"].(map[string]any)
	volumes := map[string]bool{}
	for _, n := range []string{"nats-1", "nats-2", "nats-3"} {
		svc := services[n]
		if svc == nil {
			t.Fatalf("no service %s", n)
		}
		if got := str(at(svc, "environment", "NATS_SERVER_NAME")); got != n {
			t.Errorf("%s: NATS_SERVER_NAME %q, want %q (the routes name the services)", n, got, n)
		}
		var data string
		for _, v := range at(svc, "volumes").([]any) {
			src, dst, _ := strings.Cut(str(v), ":")
			switch {
			case strings.HasPrefix(dst, "/data"):
				data = src
			case strings.HasPrefix(dst, "/etc/nats/nats-server.conf") && src != "./nats/nats-server.conf":
				t.Errorf("%s mounts %s as its configuration, want ./nats/nats-server.conf", n, src)
			}
		}
		if data == "" || volumes[data] {
			t.Errorf("%s: JetStream data volume %q missing or shared", n, data)
		}
		volumes[data] = true
		if _, ok := at(compose, "volumes").(map[string]any)[data]; !ok {
			t.Errorf("%s: volume %q is not declared", n, data)
		}
		if cmd := at(svc, "command"); !slices.Equal(toStrings(cmd), []string{"--config", "/etc/nats/nats-server.conf"}) {
			t.Errorf("%s: command %v", n, cmd)
		}
	}
	for _, n := range []string{"worker-1", "worker-2"} {
		svc := services[n]
		if svc == nil {
			t.Fatalf("no service %s", n)
		}
		env, _ := at(svc, "environment").(map[string]any)
		for k := range env {
			if !vars[k] {
				t.Errorf("%s sets %s, which the worker does not read", n, k)
			}
		}
		for k, want := range map[string]string{
			"NATS_URL": "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222", "NATS_USER": "keyworker",
			"KEYWORKER_REPLICAS": "3", "KEYWORKER_HTTP_ADDR": "0.0.0.0:9090",
		} {
			if got := str(env[k]); got != want {
				t.Errorf("%s: %s=%q, want %q", n, k, got, want)
			}
		}
		if !strings.Contains(str(env["NATS_PASSWORD"]), "KEYWORKER_NATS_PASSWORD") {
			t.Errorf("%s: NATS_PASSWORD %q does not come from KEYWORKER_NATS_PASSWORD", n, env["NATS_PASSWORD"])
		}
		if at(svc, "read_only") != true || str(at(svc, "user")) != "65532:65532" {
			t.Errorf("%s: want read_only and user 65532:65532", n)
		}
		if str(at(svc, "build", "dockerfile")) != "deploy/Dockerfile" {
			t.Errorf("%s: not built from deploy/Dockerfile", n)
		}
	}
	sim := services["seam-simulator"]
	if cmd := toStrings(at(sim, "command")); !slices.Equal(cmd, []string{"seam-simulator", "--addr", "0.0.0.0:8080"}) {
		t.Errorf("seam-simulator: command %v", cmd)
	}
	if !strings.Contains(str(at(services["worker-1"], "environment", "SEAM_ENDPOINT")), "http://seam-simulator:8080") {
		t.Error("the workers do not default to the simulator service")
	}

	cli := composeCLI()
	if cli == nil {
		t.Log("docker compose not installed: the file was checked structurally only")
		return
	}
	file := filepath.Join(suite.root, "deploy", "docker-compose.yml")
	validate := func(envFile string) (string, error) {
		cmd := exec.Command(cli[0], append(cli[1:], "--env-file", envFile, "-f", file, "config", "-q")...)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := validate(filepath.Join(suite.root, "deploy", ".env.example")); err != nil {
		t.Errorf("%v config with .env.example: %v\n%s", cli, err, out)
	}
	empty := filepath.Join(t.TempDir(), "empty.env")
	if err := os.WriteFile(empty, []byte("# nothing\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := validate(empty); err == nil || !strings.Contains(out, "KEYWORKER_NATS_PASSWORD") {
		t.Errorf("%v config without passwords: err %v, want a refusal naming KEYWORKER_NATS_PASSWORD\n%s", cli, err, out)
	}
}

// composeCLI finds `docker compose` or docker-compose.
func composeCLI() []string {
	if err := exec.Command("docker", "compose", "version").Run(); err == nil {
		return []string{"docker", "compose"}
	}
	if p, err := exec.LookPath("docker-compose"); err == nil {
		return []string{p}
	}
	return nil
}

func toStrings(v any) []string {
	l, _ := v.([]any)
	out := make([]string, len(l))
	for i, x := range l {
		out[i] = str(x)
	}
	return out
}

// TestKubernetes_DeploymentProbesRunsNonRootAndReadsOnlyKnownSettings
// checks deploy/kubernetes: two replicas with /healthz and /readyz probes on
// the port KEYWORKER_HTTP_ADDR listens on, a non-root read-only container,
// secrets from the Secret whose example holds them, a grace period longer
// than the worker's shutdown grace, and a PodDisruptionBudget and Service
// selecting the pods.
func TestKubernetes_DeploymentProbesRunsNonRootAndReadsOnlyKnownSettings(t *testing.T) {
	vars := workerVariables(t)
	kinds := map[string]map[string]any{}
	var secrets []map[string]any
	kust := readYAML(t, filepath.Join("kubernetes", "kustomization.yaml"))[0]
	for _, r := range toStrings(kust["resources"]) {
		for _, d := range readYAML(t, filepath.Join("kubernetes", r)) {
			kinds[str(d["kind"])] = d
		}
	}
	secrets = append(secrets, readYAML(t, filepath.Join("kubernetes", "secret.example.yaml"))...)
	dep := kinds["Deployment"]
	if dep == nil || kinds["PodDisruptionBudget"] == nil || kinds["Service"] == nil {
		t.Fatalf("kustomization.yaml lacks a Deployment, PodDisruptionBudget or Service: %v", kinds)
	}
	if r := at(dep, "spec", "replicas"); r != 2 {
		t.Errorf("replicas %v, want 2", r)
	}
	pod := at(dep, "spec", "template", "spec")
	c := at(pod, "containers", 0)
	env := map[string]string{}
	for _, e := range at(c, "env").([]any) {
		name := str(at(e, "name"))
		env[name] = str(at(e, "value"))
		if !vars[name] {
			t.Errorf("the Deployment sets %s, which the worker does not read", name)
		}
	}
	if env["KEYWORKER_HTTP_ADDR"] != "0.0.0.0:9090" || at(c, "ports", 0, "containerPort") != 9090 || str(at(c, "ports", 0, "name")) != "http" {
		t.Errorf("KEYWORKER_HTTP_ADDR %q and container port %v/%v disagree", env["KEYWORKER_HTTP_ADDR"], at(c, "ports", 0, "name"), at(c, "ports", 0, "containerPort"))
	}
	if env["KEYWORKER_REPLICAS"] != "3" || env["NATS_USER"] != "keyworker" {
		t.Errorf("want KEYWORKER_REPLICAS=3 and NATS_USER=keyworker, got %q and %q", env["KEYWORKER_REPLICAS"], env["NATS_USER"])
	}
	for probe, path := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"} {
		if got := str(at(c, probe, "httpGet", "path")); got != path || str(at(c, probe, "httpGet", "port")) != "http" {
			t.Errorf("%s: GET %s on %v, want %s on http", probe, got, at(c, probe, "httpGet", "port"), path)
		}
	}
	for _, check := range []struct {
		v    any
		want any
		what string
	}{
		{at(pod, "securityContext", "runAsNonRoot"), true, "pod runAsNonRoot"},
		{at(pod, "securityContext", "runAsUser"), 65532, "pod runAsUser"},
		{at(c, "securityContext", "readOnlyRootFilesystem"), true, "readOnlyRootFilesystem"},
		{at(c, "securityContext", "allowPrivilegeEscalation"), false, "allowPrivilegeEscalation"},
		{str(at(c, "securityContext", "capabilities", "drop", 0)), "ALL", "capabilities dropped"},
		{str(at(c, "image")), "keyworker", "image (set by kustomization.yaml)"},
		{str(at(kust, "images", 0, "name")), "keyworker", "kustomization image name"},
	} {
		if check.v != check.want {
			t.Errorf("%s: %v, want %v", check.what, check.v, check.want)
		}
	}
	if at(c, "resources", "requests", "cpu") == nil || at(c, "resources", "limits", "memory") == nil {
		t.Error("no resource requests or limits")
	}
	grace, err := time.ParseDuration(env["KEYWORKER_SHUTDOWN_GRACE"])
	if err != nil {
		t.Fatalf("KEYWORKER_SHUTDOWN_GRACE: %v", err)
	}
	if tg, _ := at(pod, "terminationGracePeriodSeconds").(int); time.Duration(tg)*time.Second <= grace {
		t.Errorf("terminationGracePeriodSeconds %d is not longer than KEYWORKER_SHUTDOWN_GRACE %s", tg, grace)
	}

	secretName := str(at(c, "envFrom", 0, "secretRef", "name"))
	var secret map[string]any
	for _, s := range secrets {
		if str(at(s, "metadata", "name")) == secretName {
			secret = s
		}
	}
	if secret == nil {
		t.Fatalf("secret.example.yaml has no Secret %q", secretName)
	}
	keys, _ := secret["stringData"].(map[string]any)
	for k, v := range keys {
		if !vars[k] {
			t.Errorf("Secret %s key %s is not a variable the worker reads", secretName, k)
		}
		if !strings.Contains(str(v), "REPLACE_ME") {
			t.Errorf("Secret %s key %s holds a value, want a REPLACE_ME placeholder", secretName, k)
		}
	}
	for _, k := range []string{"SEAM_API_KEY", "NATS_PASSWORD"} {
		if _, ok := keys[k]; !ok {
			t.Errorf("Secret %s lacks %s", secretName, k)
		}
	}

	labels := at(dep, "spec", "template", "metadata", "labels").(map[string]any)
	for kind, sel := range map[string]any{
		"Deployment":          at(dep, "spec", "selector", "matchLabels"),
		"PodDisruptionBudget": at(kinds["PodDisruptionBudget"], "spec", "selector", "matchLabels"),
		"Service":             at(kinds["Service"], "spec", "selector"),
	} {
		m, _ := sel.(map[string]any)
		if len(m) == 0 {
			t.Errorf("%s selects nothing", kind)
		}
		for k, v := range m {
			if labels[k] != v {
				t.Errorf("%s selects %s=%v, the pods have %v", kind, k, v, labels[k])
			}
		}
	}
	if at(kinds["PodDisruptionBudget"], "spec", "minAvailable") != 1 {
		t.Error("the PodDisruptionBudget does not keep one worker available")
	}
	if str(at(kinds["Service"], "spec", "ports", 0, "targetPort")) != "http" {
		t.Error("the metrics Service does not target port http")
	}
}

// TestDockerfiles_BuildStaticNonRootImagesWithTheWorkerAsEntrypoint checks
// both worker Dockerfiles' final stage; Dockerfile.offline is also built
// and run by every container test.
func TestDockerfiles_BuildStaticNonRootImagesWithTheWorkerAsEntrypoint(t *testing.T) {
	for _, name := range []string{"Dockerfile", "Dockerfile.offline"} {
		raw, err := os.ReadFile(filepath.Join(suite.root, "deploy", name))
		if err != nil {
			t.Fatal(err)
		}
		text := string(raw)
		final := text[strings.LastIndex(text, "\nFROM "):]
		for _, want := range []string{"FROM scratch", "USER 65532:65532", `ENTRYPOINT ["/worker"]`, `CMD ["run"]`, "/etc/ssl/certs/ca-certificates.crt", "KEYWORKER_DATA_DIR=/data"} {
			if !strings.Contains(final, want) {
				t.Errorf("%s: final stage lacks %s", name, want)
			}
		}
		if name == "Dockerfile" && !strings.Contains(text, "CGO_ENABLED=0") {
			t.Errorf("%s: the binary is not static (CGO_ENABLED=0)", name)
		}
	}
}
