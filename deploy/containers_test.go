package deploy_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	mobynet "github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/network"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/keyworker/keyworker/consumer/embedded/natstest"
)

// Passwords the tests give the users of deploy/nats/nats-server.conf.
var natsPasswords = map[string]string{
	"KEYWORKER_NATS_PASSWORD": "worker-secret-7f3a",
	"PMS_NATS_PASSWORD":       "pms-secret-19cc",
	"ADMIN_NATS_PASSWORD":     "admin-secret-5e21",
	"SYS_NATS_PASSWORD":       "sys-secret-0b44",
}

const (
	simulatorKey   = "sim-key-d00r"
	simulatorAlias = "seam-simulator"
)

// loopbackPorts publishes ports (e.g. "9090/tcp") on 127.0.0.1 only, at
// ports Docker picks.
func loopbackPorts(ports ...string) testcontainers.CustomizeRequestOption {
	return func(req *testcontainers.GenericContainerRequest) error {
		req.ExposedPorts = ports
		prev := req.HostConfigModifier
		req.HostConfigModifier = func(hc *container.HostConfig) {
			if prev != nil {
				prev(hc)
			}
			if hc.PortBindings == nil {
				hc.PortBindings = mobynet.PortMap{}
			}
			for _, p := range ports {
				hc.PortBindings[mobynet.MustParsePort(p)] = []mobynet.PortBinding{{HostIP: netip.MustParseAddr("127.0.0.1")}}
			}
		}
		return nil
	}
}

// startContainer runs image on nw under alias, removes it when the test
// ends, and prints its log when the test failed.
func startContainer(t *testing.T, image, alias string, nw *testcontainers.DockerNetwork, opts ...testcontainers.ContainerCustomizer) *testcontainers.DockerContainer {
	t.Helper()
	c, err := runContainer(t, image, alias, nw, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// runContainer is startContainer for any goroutine: it reports instead of failing.
func runContainer(t *testing.T, image, alias string, nw *testcontainers.DockerNetwork, opts ...testcontainers.ContainerCustomizer) (*testcontainers.DockerContainer, error) {
	opts = append([]testcontainers.ContainerCustomizer{network.WithNetwork([]string{alias}, nw)}, opts...)
	c, err := testcontainers.Run(t.Context(), image, opts...)
	testcontainers.CleanupContainer(t, c)
	if c != nil {
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("--- log of %s ---\n%s", alias, tail(containerLog(c), 60))
			}
		})
	}
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", alias, err)
	}
	return c, nil
}

// containerLog returns everything the container wrote.
func containerLog(c *testcontainers.DockerContainer) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rc, err := c.Logs(ctx)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	return string(b)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// endpoint is host:port of a container port published on the loopback.
func endpoint(t *testing.T, c *testcontainers.DockerContainer, port string) string {
	t.Helper()
	ep, err := c.PortEndpoint(t.Context(), port, "")
	if err != nil {
		t.Fatalf("port %s: %v", port, err)
	}
	return ep
}

// newNetwork creates a Docker network for one test.
func newNetwork(t *testing.T) *testcontainers.DockerNetwork {
	t.Helper()
	nw, err := network.New(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	testcontainers.CleanupNetwork(t, nw)
	return nw
}

// natsCluster is three nodes running deploy/nats/nats-server.conf.
type natsCluster struct {
	nodes map[string]*testcontainers.DockerContainer // by server name: nats-1, nats-2, nats-3
	names []string
}

// internalURL is the NATS_URL of a container on the cluster's network.
func (c *natsCluster) internalURL() string {
	var urls []string
	for _, n := range c.names {
		urls = append(urls, "nats://"+n+":4222")
	}
	return strings.Join(urls, ",")
}

// startCluster starts the three nodes at once and waits until JetStream
// has a meta leader, as seen by the admin user.
func startCluster(t *testing.T, image string, nw *testcontainers.DockerNetwork) *natsCluster {
	t.Helper()
	conf, err := os.ReadFile(filepath.Join(suite.root, "deploy", "nats", "nats-server.conf"))
	if err != nil {
		t.Fatal(err)
	}
	c := &natsCluster{nodes: map[string]*testcontainers.DockerContainer{}, names: []string{"nats-1", "nats-2", "nats-3"}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, name := range c.names {
		env := map[string]string{"NATS_SERVER_NAME": name}
		for k, v := range natsPasswords {
			env[k] = v
		}
		wg.Go(func() {
			node, err := runContainer(t, image, name, nw,
				testcontainers.WithEnv(env),
				testcontainers.WithCmd("--config", "/etc/nats/nats-server.conf"),
				testcontainers.WithFiles(testcontainers.ContainerFile{
					Reader: strings.NewReader(string(conf)), ContainerFilePath: "/etc/nats/nats-server.conf", FileMode: 0o644,
				}),
				loopbackPorts("4222/tcp", "8222/tcp"),
				testcontainers.WithWaitStrategy(wait.ForLog("Server is ready").WithStartupTimeout(60*time.Second)),
			)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			c.nodes[name] = node
			mu.Unlock()
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	c.waitHealthy(t, 60*time.Second)
	return c
}

// waitHealthy waits until every running node's monitoring /healthz is 200:
// JetStream is up and current with the cluster's meta leader, what a
// Kubernetes readiness probe on NATS waits for.
func (c *natsCluster) waitHealthy(t *testing.T, within time.Duration) {
	t.Helper()
	natstest.WaitFor(t, within, func() error {
		for _, n := range c.names {
			if st, _ := c.nodes[n].State(t.Context()); st == nil || !st.Running {
				continue
			}
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
			code, body, err := httpGet(ctx, "http://"+endpoint(t, c.nodes[n], "8222/tcp")+"/healthz")
			cancel()
			if err != nil {
				return fmt.Errorf("%s: %w", n, err)
			}
			if code != http.StatusOK {
				return fmt.Errorf("%s /healthz: %d %s", n, code, body)
			}
		}
		return nil
	})
}

// natsClient is a NATS connection from the test process.
type natsClient struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	errors chan error // asynchronous errors, permission violations among them
}

// connect connects to the running nodes' published ports as user.
func (c *natsCluster) connect(t *testing.T, user string, opts ...nats.Option) *natsClient {
	t.Helper()
	var urls []string
	for _, n := range c.names {
		if running, _ := c.nodes[n].State(t.Context()); running != nil && running.Running {
			urls = append(urls, "nats://"+endpoint(t, c.nodes[n], "4222/tcp"))
		}
	}
	return connectAs(t, strings.Join(urls, ","), user, opts...)
}

// userPasswords maps the users of nats-server.conf to their password.
var userPasswords = map[string]string{
	"keyworker": natsPasswords["KEYWORKER_NATS_PASSWORD"],
	"pms":       natsPasswords["PMS_NATS_PASSWORD"],
	"admin":     natsPasswords["ADMIN_NATS_PASSWORD"],
}

func connectAs(t *testing.T, urls, user string, opts ...nats.Option) *natsClient {
	t.Helper()
	cl := &natsClient{errors: make(chan error, 64)}
	opts = append([]nats.Option{
		nats.UserInfo(user, userPasswords[user]),
		nats.Name("deploy-test-" + user),
		// Servers advertise addresses on the container network; the test
		// reaches them only through published ports.
		nats.IgnoreDiscoveredServers(),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(200 * time.Millisecond),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case cl.errors <- err:
			default:
			}
		}),
	}, opts...)
	nc, err := nats.Connect(urls, opts...)
	if err != nil {
		t.Fatalf("connect as %s to %s: %v", user, urls, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	cl.nc, cl.js = nc, js
	return cl
}

// startSimulator runs `worker seam-simulator` in a container of its own.
func startSimulator(t *testing.T, image string, nw *testcontainers.DockerNetwork, args ...string) *simulator {
	t.Helper()
	c := startContainer(t, image, simulatorAlias, nw,
		testcontainers.WithCmd(append([]string{"seam-simulator", "--addr", "0.0.0.0:8080", "--api-key", simulatorKey, "--inspect"}, args...)...),
		loopbackPorts("8080/tcp"),
		testcontainers.WithWaitStrategy(wait.ForLog("serving a Seam SIMULATOR").WithStartupTimeout(30*time.Second)),
	)
	return &simulator{base: "http://" + endpoint(t, c, "8080/tcp")}
}

// simulator reads the state of the Seam simulator container.
type simulator struct{ base string }

type simulatorStats struct {
	Calls                      map[string]int `json:"calls"`
	Effects                    int            `json:"effects"`
	MaxConcurrentPerCredential int            `json:"max_concurrent_per_credential"`
}

type pairState struct {
	Assigned bool `json:"assigned"`
	Effects  int  `json:"effects"`
}

func (s *simulator) get(t *testing.T, path string, v any) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, s.base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+simulatorKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}

func (s *simulator) stats(t *testing.T) simulatorStats {
	t.Helper()
	var st simulatorStats
	s.get(t, "/_fake/stats", &st)
	return st
}

func (s *simulator) pair(t *testing.T, cred, user string) pairState {
	t.Helper()
	var p pairState
	s.get(t, "/_fake/assigned?credential="+cred+"&user="+user, &p)
	return p
}

// workerEnv is the environment of a worker container on the cluster's
// network, as the least-privilege user.
func workerEnv(c *natsCluster, extra map[string]string) map[string]string {
	env := map[string]string{
		"NATS_URL":               c.internalURL(),
		"NATS_USER":              "keyworker",
		"NATS_PASSWORD":          natsPasswords["KEYWORKER_NATS_PASSWORD"],
		"KEYWORKER_REPLICAS":     "3",
		"SEAM_ENDPOINT":          "http://" + simulatorAlias + ":8080",
		"SEAM_API_KEY":           simulatorKey,
		"KEYWORKER_HTTP_ADDR":    "0.0.0.0:9090",
		"KEYWORKER_SEAM_TIMEOUT": "5s",
		"LOG_LEVEL":              "info",
	}
	// The simulator container is plain http on the test network.
	env["KEYWORKER_ALLOW_INSECURE_SEAM"] = "true"
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// startWorker runs a worker container and waits until /readyz is 200.
func startWorker(t *testing.T, image, alias string, nw *testcontainers.DockerNetwork, env map[string]string) *testcontainers.DockerContainer {
	t.Helper()
	c, err := runWorker(t, image, alias, nw, env)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// runWorker is startWorker for any goroutine.
func runWorker(t *testing.T, image, alias string, nw *testcontainers.DockerNetwork, env map[string]string) (*testcontainers.DockerContainer, error) {
	return runContainer(t, image, alias, nw,
		testcontainers.WithEnv(env),
		loopbackPorts("9090/tcp"),
		testcontainers.WithWaitStrategy(wait.ForHTTP("/readyz").WithPort("9090/tcp").
			WithStatusCodeMatcher(func(s int) bool { return s == http.StatusOK }).
			WithStartupTimeout(90*time.Second)),
	)
}

// kill sends SIGKILL: no graceful shutdown, in-flight events are abandoned.
func kill(t *testing.T, c *testcontainers.DockerContainer) {
	t.Helper()
	cli, err := testcontainers.NewDockerClientWithOpts(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.ContainerKill(t.Context(), c.GetContainerID(), client.ContainerKillOptions{Signal: "KILL"}); err != nil {
		t.Fatalf("kill: %v", err)
	}
}

// logLines returns the container's log lines.
func logLines(c *testcontainers.DockerContainer) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(containerLog(c)))
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

// httpGet fetches url and returns the status and body.
func httpGet(ctx context.Context, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// readyz polls a worker's /readyz until it answers want, and returns the body.
func readyz(t *testing.T, base string, want int, within time.Duration) []byte {
	t.Helper()
	var body []byte
	natstest.WaitFor(t, within, func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		code, b, err := httpGet(ctx, base+"/readyz")
		if err != nil {
			return err
		}
		if code != want {
			return fmt.Errorf("/readyz %d %s, want %d", code, b, want)
		}
		body = b
		return nil
	})
	return body
}
