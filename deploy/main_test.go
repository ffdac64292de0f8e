package deploy_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/nats-io/nuid"
	"github.com/testcontainers/testcontainers-go"
)

// artefacts builds the worker and nats-server binaries, and images of
// them, once per test run, and removes the images at the end.
type artefacts struct {
	dir  string // temporary; binaries and build contexts
	root string // the module root

	workerBin, natsBin     func() (string, error)
	workerImage, natsImage func() (string, error)

	mu    sync.Mutex
	built []string // image tags to remove
}

// suite is set by TestMain before any test runs and only read after.
var suite *artefacts

func TestMain(m *testing.M) {
	// Ryuk, testcontainers' reaper, is an image pull away; containers are
	// removed by t.Cleanup instead.
	setDefaultEnv("TESTCONTAINERS_RYUK_DISABLED", "true")
	if h := os.Getenv("DOCKER_HOST"); h == "" || strings.HasPrefix(h, "unix://") {
		// Ports are published on the IPv4 loopback only.
		setDefaultEnv("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
	}
	dir, err := os.MkdirTemp("", "keyworker-deploy-*")
	if err != nil {
		fmt.Fprintln(os.Stderr, "deploy:", err)
		os.Exit(1)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		fmt.Fprintln(os.Stderr, "deploy:", err)
		os.Exit(1)
	}
	suite = newArtefacts(dir, root)
	code := m.Run()
	suite.removeImages()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func setDefaultEnv(k, v string) {
	if os.Getenv(k) == "" {
		_ = os.Setenv(k, v)
	}
}

func newArtefacts(dir, root string) *artefacts {
	a := &artefacts{dir: dir, root: root}
	a.workerBin = sync.OnceValues(func() (string, error) {
		return a.goBuild("worker", "./cmd/worker")
	})
	a.natsBin = sync.OnceValues(func() (string, error) {
		return a.goBuild("nats-server", "github.com/nats-io/nats-server/v2")
	})
	a.workerImage = sync.OnceValues(func() (string, error) {
		bin, err := a.workerBin()
		if err != nil {
			return "", err
		}
		certs := "/etc/ssl/certs/ca-certificates.crt"
		if _, err := os.Stat(certs); err != nil {
			certs = "" // an empty bundle: the tests reach no TLS server from a container
		}
		return a.buildImage("worker", filepath.Join(root, "deploy", "Dockerfile.offline"),
			map[string]string{"worker": bin, "ca-certificates.crt": certs, "data/": ""})
	})
	a.natsImage = sync.OnceValues(func() (string, error) {
		if img := os.Getenv("KEYWORKER_NATS_IMAGE"); img != "" {
			return img, nil
		}
		bin, err := a.natsBin()
		if err != nil {
			return "", err
		}
		return a.buildImage("nats", filepath.Join(root, "deploy", "nats", "Dockerfile.offline"),
			map[string]string{"nats-server": bin, "nats-server.conf": filepath.Join(root, "deploy", "nats", "nats-server.conf")})
	})
	return a
}

// goBuild builds a static binary of pkg from the module.
func (a *artefacts) goBuild(name, pkg string) (string, error) {
	out := filepath.Join(a.dir, "bin", name)
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, pkg)
	cmd.Dir = a.root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return out, nil
}

// buildImage builds dockerfile in a fresh context holding files (context
// name -> host path; "" is an empty file, a name ending in / an empty
// directory) and returns the image tag.
func (a *artefacts) buildImage(name, dockerfile string, files map[string]string) (string, error) {
	ctxDir, err := os.MkdirTemp(a.dir, "context-"+name+"-*")
	if err != nil {
		return "", err
	}
	files["Dockerfile"] = dockerfile
	for dst, src := range files {
		target := filepath.Join(ctxDir, dst)
		switch {
		case strings.HasSuffix(dst, "/"):
			err = os.MkdirAll(target, 0o755)
		case src == "":
			err = os.WriteFile(target, nil, 0o644)
		default:
			err = copyFile(src, target)
		}
		if err != nil {
			return "", err
		}
	}
	provider, err := testcontainers.NewDockerProvider()
	if err != nil {
		return "", err
	}
	defer provider.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var log strings.Builder
	tag, err := provider.BuildImage(ctx, &testcontainers.ContainerRequest{FromDockerfile: testcontainers.FromDockerfile{
		Context:        ctxDir,
		Dockerfile:     "Dockerfile",
		Repo:           "keyworker-deploy-test/" + name,
		Tag:            strings.ToLower(nuid.Next()),
		KeepImage:      true,
		BuildLogWriter: &log,
	}})
	if err != nil {
		return "", fmt.Errorf("build image %s: %w\n%s", name, err, log.String())
	}
	a.mu.Lock()
	a.built = append(a.built, tag)
	a.mu.Unlock()
	return tag, nil
}

func (a *artefacts) removeImages() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.built) == 0 {
		return
	}
	cli, err := testcontainers.NewDockerClientWithOpts(context.Background())
	if err != nil {
		return
	}
	defer cli.Close()
	for _, tag := range a.built {
		_, _ = cli.ImageRemove(context.Background(), tag, client.ImageRemoveOptions{Force: true, PruneChildren: true})
	}
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, st.Mode().Perm()|0o444)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// binary returns the path of a host binary, failing the test if it does not build.
func binary(t *testing.T, get func() (string, error)) string {
	t.Helper()
	p, err := get()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// requireDocker skips, with one line saying why, under -short or when no
// Docker engine answers; otherwise it returns the worker and NATS images.
func requireDocker(t *testing.T) (workerImage, natsImage string) {
	t.Helper()
	if testing.Short() {
		t.Skip("deploy: container test skipped under -short")
	}
	provider, err := testcontainers.NewDockerProvider()
	if err == nil {
		err = provider.Health(t.Context())
		provider.Close()
	}
	if err != nil {
		t.Skipf("deploy: container test skipped: no Docker engine reachable (%s)", firstLine(err))
	}
	w, err := suite.workerImage()
	if err != nil {
		t.Fatal(err)
	}
	n, err := suite.natsImage()
	if err != nil {
		t.Fatal(err)
	}
	return w, n
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}
