package deploy_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/keyworker/keyworker/consumer/consumertest"
)

// pki is a CA with a server and a client certificate, as PEM files.
type pki struct {
	caFile, serverCert, serverKey, clientCert, clientKey string
	pool                                                 *x509.CertPool
}

// newPKI generates a CA, a certificate for 127.0.0.1 and localhost, and a
// client certificate, and writes them to dir.
func newPKI(t *testing.T, dir string) *pki {
	t.Helper()
	now := time.Now()
	caKey := newKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "keyworker test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	p.caFile = writePEM(t, dir, "ca.crt", "CERTIFICATE", caDER)
	issue := func(name string, serial int64, usage x509.ExtKeyUsage, ips []net.IP, dns []string) (string, string) {
		key := newKey(t)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: ips, DNSNames: dns,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return writePEM(t, dir, name+".crt", "CERTIFICATE", der), writePEM(t, dir, name+".key", "PRIVATE KEY", keyDER)
	}
	p.serverCert, p.serverKey = issue("nats-server", 2, x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)}, []string{"localhost"})
	p.clientCert, p.clientKey = issue("keyworker", 3, x509.ExtKeyUsageClientAuth, nil, nil)
	return p
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// startTLSServer runs a JetStream server on 127.0.0.1:port (0 for any)
// that requires a client certificate signed by the CA.
func startTLSServer(t *testing.T, p *pki, port int, storeDir string) *server.Server {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(p.serverCert, p.serverKey)
	if err != nil {
		t.Fatal(err)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	s, err := server.NewServer(&server.Options{
		ServerName: "tls-test", Host: "127.0.0.1", Port: port,
		JetStream: true, StoreDir: storeDir, NoSigs: true, NoLog: true,
		TLS: true, TLSVerify: true, TLSTimeout: 2,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			ClientCAs:    p.pool,
			ClientAuth:   tls.RequireAndVerifyClientCert,
			MinVersion:   tls.VersionTLS12,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("TLS NATS server not ready in 10 s")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// process is a worker binary running on the host.
type process struct {
	cmd    *exec.Cmd
	output *consumertest.LockedBuffer
	done   chan struct{}
	err    error
}

// startProcess runs the worker binary with only env (and PATH, HOME) in
// its environment, and stops it when the test ends.
func startProcess(t *testing.T, bin string, env map[string]string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	p := &process{cmd: cmd, output: &consumertest.LockedBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.output, p.output
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("--- output of worker %v ---\n%s", args, tail(p.output.String(), 40))
		}
	})
	return p
}

// exit waits up to d for the process to end and returns its exit code.
func (p *process) exit(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(d):
		t.Fatalf("worker still running after %s:\n%s", d, p.output.String())
		return -1
	}
}

// TestTLS_WorkerConnectsWithAClientCertificateAndReportsNATSOutages runs the
// worker binary against a JetStream server that requires TLS with a client
// certificate: it becomes ready, reports 503 with a reason while the
// server is down, is ready again once a server is back on the same
// address, and stops cleanly on SIGTERM.
func TestTLS_WorkerConnectsWithAClientCertificateAndReportsNATSOutages(t *testing.T) {
	bin := binary(t, suite.workerBin)
	p := newPKI(t, t.TempDir())
	store := t.TempDir()
	s := startTLSServer(t, p, 0, store)
	port := s.Addr().(*net.TCPAddr).Port
	httpAddr := consumertest.FreeAddr(t)
	w := startProcess(t, bin, map[string]string{
		"NATS_URL":            fmt.Sprintf("tls://127.0.0.1:%d", port),
		"NATS_TLS_CA":         p.caFile,
		"NATS_TLS_CERT":       p.clientCert,
		"NATS_TLS_KEY":        p.clientKey,
		"KEYWORKER_HTTP_ADDR": httpAddr,
		"KEYWORKER_DATA_DIR":  t.TempDir(),
	}, "run")
	base := "http://" + httpAddr
	readyz(t, base, 200, 30*time.Second)

	s.Shutdown()
	s.WaitForShutdown()
	body := readyz(t, base, 503, 15*time.Second)
	if !strings.Contains(string(body), `"nats: `) {
		t.Errorf("/readyz body %s does not give NATS as the reason", body)
	}

	startTLSServer(t, p, port, store)
	readyz(t, base, 200, 30*time.Second)

	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := w.exit(t, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM, want 0:\n%s", code, w.output.String())
	}
}

// TestTLS_WorkerWithoutTheRightCertificatesExitsWithOneClearLine starts the
// worker against the same server without a client certificate, and
// without the CA that signed the server's: each exits 1 with one line.
func TestTLS_WorkerWithoutTheRightCertificatesExitsWithOneClearLine(t *testing.T) {
	bin := binary(t, suite.workerBin)
	p := newPKI(t, t.TempDir())
	s := startTLSServer(t, p, 0, t.TempDir())
	url := fmt.Sprintf("tls://127.0.0.1:%d", s.Addr().(*net.TCPAddr).Port)
	other := newPKI(t, t.TempDir())
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"no client certificate", map[string]string{"NATS_TLS_CA": p.caFile}, "NATS_URL: connecting to " + url},
		{"server signed by an unknown CA", map[string]string{"NATS_TLS_CA": other.caFile, "NATS_TLS_CERT": p.clientCert, "NATS_TLS_KEY": p.clientKey}, "certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"NATS_URL": url, "KEYWORKER_HTTP_ADDR": consumertest.FreeAddr(t), "KEYWORKER_DATA_DIR": t.TempDir()}
			for k, v := range tc.env {
				env[k] = v
			}
			w := startProcess(t, bin, env, "run")
			if code := w.exit(t, 30*time.Second); code != 1 {
				t.Fatalf("exit code %d, want 1:\n%s", code, w.output.String())
			}
			lines := strings.Split(strings.TrimSpace(w.output.String()), "\n")
			last := lines[len(lines)-1]
			if !strings.HasPrefix(last, "worker: ") || !strings.Contains(last, tc.want) {
				t.Fatalf("last line %q, want one line starting \"worker: \" and naming %q", last, tc.want)
			}
		})
	}
}
