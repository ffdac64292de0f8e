// Package cli is what the worker's commands share: the configuration from
// flags and environment variables, the NATS connection, usage errors and
// the guest events they publish.
package cli

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/keyworker/keyworker/consumer"
	"github.com/keyworker/keyworker/seamclient"
)

// Config is the worker's configuration (DESIGN section 4). Every field is
// an environment variable and a flag of the same meaning; a flag wins.
type Config struct {
	NATSURL      string
	NATSCreds    string
	NATSNKey     string
	NATSToken    string
	NATSUser     string
	NATSPassword string
	TLSCA        string
	TLSCert      string
	TLSKey       string

	SeamAPIKey      string
	SeamEndpoint    string
	SeamWorkspaceID string
	SeamTimeout     time.Duration
	// Workspaces is the routing file (KEYWORKER_WORKSPACES); Routing is
	// what it held at start-up, API keys read.
	Workspaces string
	Routing    []WorkspaceSpec

	Concurrency   int
	SeamRPS       float64
	HTTPAddr      string
	DataDir       string
	LogLevel      string
	LogFormat     string
	MaxClockSkew  time.Duration
	MaxDeliver    int
	RetryFor      time.Duration
	AwaitSync     time.Duration
	DupWindow     time.Duration
	ShutdownGrace time.Duration
	Replicas      int
	UpdateStreams bool
	// AllowInsecureSeam permits a plain http SEAM_ENDPOINT to a host that
	// is not loopback.
	AllowInsecureSeam bool

	// worker is set when the worker's own settings were registered: the
	// operator commands have only the NATS ones.
	worker bool
}

// binding ties a flag to its environment variable.
type binding struct{ flag, env string }

// ConfigFlags is a Config bound to flags and environment variables;
// bindings is filled by RegisterConfig in flag order; the README lists the same.
type ConfigFlags struct {
	cfg      Config
	bindings []binding
}

// Config is the configuration the flags and variables set.
func (c *ConfigFlags) Config() *Config { return &c.cfg }

// RegisterConfig defines the configuration flags on fs.
func RegisterConfig(fs *flag.FlagSet, withWorker bool) *ConfigFlags {
	c := &ConfigFlags{}
	str := func(p *string, name, env, def, usage string) {
		fs.StringVar(p, name, def, usage+" ($"+env+")")
		c.bindings = append(c.bindings, binding{name, env})
	}
	str(&c.cfg.NATSURL, "nats-url", "NATS_URL", "", "NATS servers, comma separated; empty starts an embedded JetStream server")
	str(&c.cfg.NATSCreds, "nats-creds", "NATS_CREDS", "", "NATS credentials file")
	str(&c.cfg.NATSNKey, "nats-nkey", "NATS_NKEY", "", "NATS nkey seed file")
	str(&c.cfg.NATSToken, "nats-token", "NATS_TOKEN", "", "NATS token")
	str(&c.cfg.NATSUser, "nats-user", "NATS_USER", "", "NATS user")
	str(&c.cfg.NATSPassword, "nats-password", "NATS_PASSWORD", "", "NATS password")
	str(&c.cfg.TLSCA, "nats-tls-ca", "NATS_TLS_CA", "", "CA certificate file to verify the NATS server")
	str(&c.cfg.TLSCert, "nats-tls-cert", "NATS_TLS_CERT", "", "client certificate file for NATS")
	str(&c.cfg.TLSKey, "nats-tls-key", "NATS_TLS_KEY", "", "client key file for NATS")
	str(&c.cfg.DataDir, "data-dir", "KEYWORKER_DATA_DIR", "./data", "embedded NATS storage")
	str(&c.cfg.LogLevel, "log-level", "LOG_LEVEL", "info", "trace, debug, info, warn or error")
	str(&c.cfg.LogFormat, "log-format", "LOG_FORMAT", "json", "json, or console for people")
	fs.IntVar(&c.cfg.Replicas, "replicas", 1, "stream and bucket replicas when creating them ($KEYWORKER_REPLICAS)")
	c.bindings = append(c.bindings, binding{"replicas", "KEYWORKER_REPLICAS"})
	if !withWorker {
		return c
	}
	c.cfg.worker = true
	str(&c.cfg.SeamAPIKey, "seam-api-key", "SEAM_API_KEY", "", "Seam API key; empty uses the built-in Seam simulator")
	str(&c.cfg.SeamEndpoint, "seam-endpoint", "SEAM_ENDPOINT", seamclient.DefaultEndpoint, "Seam base URL")
	str(&c.cfg.SeamWorkspaceID, "seam-workspace-id", "SEAM_WORKSPACE_ID", "", "sent as seam-workspace, for personal access tokens")
	str(&c.cfg.Workspaces, "workspaces", "KEYWORKER_WORKSPACES", "", "routing file (YAML or JSON): property_id to Seam workspace, each with its own key; empty: one workspace from SEAM_API_KEY")
	str(&c.cfg.HTTPAddr, "http-addr", "KEYWORKER_HTTP_ADDR", "127.0.0.1:9090", "address of /metrics, /healthz, /readyz")
	fs.DurationVar(&c.cfg.SeamTimeout, "seam-timeout", 10*time.Second, "per-request Seam timeout ($KEYWORKER_SEAM_TIMEOUT)")
	fs.IntVar(&c.cfg.Concurrency, "concurrency", consumer.DefaultConcurrency, "events processed at once ($KEYWORKER_CONCURRENCY)")
	fs.Float64Var(&c.cfg.SeamRPS, "seam-rps", 0, "ceiling on Seam requests per second, 0 for none ($KEYWORKER_SEAM_RPS)")
	fs.DurationVar(&c.cfg.MaxClockSkew, "max-clock-skew", 5*time.Minute, "refuse events dated further in the future ($KEYWORKER_MAX_CLOCK_SKEW)")
	fs.IntVar(&c.cfg.MaxDeliver, "max-deliver", 10, "deliveries of an event that may end without a decision (the worker crashed or hung handling it) before it is dead-lettered ($KEYWORKER_MAX_DELIVER)")
	fs.DurationVar(&c.cfg.RetryFor, "retry-for", 24*time.Hour, "how long transient Seam failures are retried, from an event's first attempt, before a dead letter ($KEYWORKER_RETRY_FOR)")
	fs.DurationVar(&c.cfg.AwaitSync, "await-sync", 0, "how long to wait, after Seam accepted a change, for the lock or card system to have it before publishing the result; 0 publishes at once ($KEYWORKER_AWAIT_SYNC)")
	fs.DurationVar(&c.cfg.DupWindow, "duplicate-window", 2*time.Minute, "JetStream duplicate window of the streams, when creating them ($KEYWORKER_DUPLICATE_WINDOW)")
	fs.DurationVar(&c.cfg.ShutdownGrace, "shutdown-grace", 25*time.Second, "time in-flight events get to finish on SIGTERM ($KEYWORKER_SHUTDOWN_GRACE)")
	fs.BoolVar(&c.cfg.AllowInsecureSeam, "allow-insecure-seam", false, "allow a plain http SEAM_ENDPOINT to a host that is not loopback: the API key is sent in clear ($KEYWORKER_ALLOW_INSECURE_SEAM)")
	fs.BoolVar(&c.cfg.UpdateStreams, "update-streams", false, "update existing streams, consumer and buckets whose settings differ, instead of refusing to start ($KEYWORKER_UPDATE_STREAMS)")
	c.bindings = append(c.bindings,
		binding{"seam-timeout", "KEYWORKER_SEAM_TIMEOUT"},
		binding{"concurrency", "KEYWORKER_CONCURRENCY"},
		binding{"seam-rps", "KEYWORKER_SEAM_RPS"},
		binding{"max-clock-skew", "KEYWORKER_MAX_CLOCK_SKEW"},
		binding{"max-deliver", "KEYWORKER_MAX_DELIVER"},
		binding{"retry-for", "KEYWORKER_RETRY_FOR"},
		binding{"await-sync", "KEYWORKER_AWAIT_SYNC"},
		binding{"duplicate-window", "KEYWORKER_DUPLICATE_WINDOW"},
		binding{"shutdown-grace", "KEYWORKER_SHUTDOWN_GRACE"},
		binding{"update-streams", "KEYWORKER_UPDATE_STREAMS"},
		binding{"allow-insecure-seam", "KEYWORKER_ALLOW_INSECURE_SEAM"},
	)
	return c
}

// ParseFlags parses args, applies environment variables to flags not given
// on the command line, and validates. Errors name the variable or flag.
func ParseFlags(fs *flag.FlagSet, c *ConfigFlags, args []string, getenv func(string) string) error {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &UsageError{Msg: err.Error()}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for _, b := range c.bindings {
		v := getenv(b.env)
		if set[b.flag] || v == "" {
			continue
		}
		if err := fs.Set(b.flag, v); err != nil {
			// The flag package's error says what is wrong without the
			// value; the value could be a key pasted in the wrong variable.
			return &UsageError{Msg: fmt.Sprintf("%s: %v%s (value not shown)", b.env, err, want(fs.Lookup(b.flag)))}
		}
	}
	if err := c.cfg.validate(); err != nil {
		return err
	}
	if c.cfg.worker && c.cfg.Workspaces != "" {
		if c.cfg.SeamAPIKey != "" || c.cfg.SeamWorkspaceID != "" {
			return &UsageError{Msg: "KEYWORKER_WORKSPACES: the routing file names each workspace's key: unset SEAM_API_KEY and SEAM_WORKSPACE_ID"}
		}
		specs, err := c.cfg.LoadRouting(getenv)
		if err != nil {
			return err
		}
		c.cfg.Routing = specs
	}
	return nil
}

// LoadRouting reads the routing file (KEYWORKER_WORKSPACES), at start and
// on reload, and holds each workspace's endpoint (its own, or SEAM_ENDPOINT)
// to the same rule as SEAM_ENDPOINT: no key in clear to another host.
func (c *Config) LoadRouting(getenv func(string) string) ([]WorkspaceSpec, error) {
	specs, err := LoadWorkspaces(c.Workspaces, getenv)
	if err != nil {
		return nil, err
	}
	for _, s := range specs {
		if c.sendsKeyInClear(cmp.Or(s.Endpoint, c.SeamEndpoint)) {
			return nil, &UsageError{Msg: "KEYWORKER_WORKSPACES: " + c.Workspaces + ": workspace " + s.ID + ": " + inClear}
		}
	}
	return specs, nil
}

// inClear says why a key may not go to a plain http endpoint.
const inClear = "plain http to a host that is not loopback would send the API key in clear: use https, or set KEYWORKER_ALLOW_INSECURE_SEAM=true (--allow-insecure-seam) for a trusted network"

// sendsKeyInClear reports whether a request with an API key to endpoint
// would cross the network unencrypted without it being allowed.
func (c *Config) sendsKeyInClear(endpoint string) bool {
	u, err := url.Parse(endpoint)
	return err == nil && u.Scheme == "http" && !c.AllowInsecureSeam && !isLoopback(u.Hostname())
}

// want says what kind of value a flag takes, for an error that may not
// quote the value it got.
func want(f *flag.Flag) string {
	g, ok := f.Value.(flag.Getter)
	if !ok {
		return ""
	}
	switch g.Get().(type) {
	case bool:
		return ": want true or false"
	case int:
		return ": want a whole number"
	case float64:
		return ": want a number"
	case time.Duration:
		return ": want a duration such as 30s or 5m"
	}
	return ""
}

// validate checks the configuration. Its errors name the variable and
// what is wrong, never the value: a value may hold a password or be a key
// pasted into the wrong variable.
func (c *Config) validate() error {
	bad := func(name, format string, a ...any) error {
		return &UsageError{Msg: name + ": " + fmt.Sprintf(format, a...)}
	}
	if c.NATSURL != "" {
		servers := strings.Split(c.NATSURL, ",")
		for i, s := range servers {
			if err := checkServerURL(strings.TrimSpace(s)); err != "" {
				return bad("NATS_URL", "%s %s (value not shown; a password in a URL must be percent-encoded)", serverName(i, len(servers)), err)
			}
		}
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return bad("NATS_TLS_CERT", "NATS_TLS_CERT and NATS_TLS_KEY go together")
	}
	for _, f := range []struct{ env, path string }{
		{"NATS_CREDS", c.NATSCreds}, {"NATS_NKEY", c.NATSNKey}, {"NATS_TLS_CA", c.TLSCA}, {"NATS_TLS_CERT", c.TLSCert}, {"NATS_TLS_KEY", c.TLSKey},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			// Only the reason: a seed or token pasted instead of a path
			// would otherwise be printed.
			reason := "cannot read the file it names"
			var pe *fs.PathError
			if errors.As(err, &pe) {
				reason += ": " + pe.Err.Error()
			}
			return bad(f.env, "%s (it takes a file path; value not shown)", reason)
		}
	}
	if (c.NATSUser == "") != (c.NATSPassword == "") {
		return bad("NATS_USER", "NATS_USER and NATS_PASSWORD go together")
	}
	if _, err := zerolog.ParseLevel(c.LogLevel); err != nil || c.LogLevel == "" {
		return bad("LOG_LEVEL", "not one of trace, debug, info, warn, error")
	}
	if c.LogFormat != "json" && c.LogFormat != "console" {
		return bad("LOG_FORMAT", "not json or console")
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		return bad("KEYWORKER_REPLICAS", "%d is not between 1 and 5", c.Replicas)
	}
	if !c.worker {
		return nil
	}
	if err := c.checkSeamEndpoint(); err != nil {
		return err
	}
	if c.HTTPAddr != "" {
		if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
			return bad("KEYWORKER_HTTP_ADDR", "not host:port such as 127.0.0.1:9090")
		}
	}
	switch {
	case c.Concurrency < 1 || c.Concurrency > 4096:
		return bad("KEYWORKER_CONCURRENCY", "%d is not between 1 and 4096", c.Concurrency)
	case c.SeamRPS < 0:
		return bad("KEYWORKER_SEAM_RPS", "%v must not be negative", c.SeamRPS)
	case c.MaxClockSkew < 0:
		return bad("KEYWORKER_MAX_CLOCK_SKEW", "%s must not be negative", c.MaxClockSkew)
	case c.MaxDeliver < 1:
		return bad("KEYWORKER_MAX_DELIVER", "%d must be at least 1", c.MaxDeliver)
	case c.RetryFor <= 0:
		return bad("KEYWORKER_RETRY_FOR", "%s must be positive", c.RetryFor)
	case c.AwaitSync < 0:
		return bad("KEYWORKER_AWAIT_SYNC", "%s must not be negative", c.AwaitSync)
	case c.DupWindow <= 0:
		return bad("KEYWORKER_DUPLICATE_WINDOW", "%s must be positive", c.DupWindow)
	case c.ShutdownGrace < 0:
		return bad("KEYWORKER_SHUTDOWN_GRACE", "%s must not be negative", c.ShutdownGrace)
	case c.SeamTimeout <= 0:
		return bad("KEYWORKER_SEAM_TIMEOUT", "%s must be positive", c.SeamTimeout)
	}
	return nil
}

// checkServerURL says what is wrong with one NATS server URL, without
// quoting any of it, or returns "".
func checkServerURL(s string) string {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return "is not a URL such as nats://127.0.0.1:4222"
	case u.Scheme == "" || u.Host == "":
		return "is not a server URL such as nats://127.0.0.1:4222"
	}
	return ""
}

func serverName(i, n int) string {
	if n == 1 {
		return "the server"
	}
	return fmt.Sprintf("server %d of %d", i+1, n)
}

// checkSeamEndpoint refuses an endpoint that is no http(s) URL, and plain
// http to anything but loopback unless allowed: the API key would cross
// the network in clear. The value is never quoted, since a key pasted
// here instead of into SEAM_API_KEY is a common slip.
func (c *Config) checkSeamEndpoint() error {
	if c.SeamEndpoint == "" {
		return nil
	}
	bad := func(format string, a ...any) error {
		return &UsageError{Msg: "SEAM_ENDPOINT: " + fmt.Sprintf(format, a...)}
	}
	u, err := url.Parse(c.SeamEndpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		if strings.HasPrefix(c.SeamEndpoint, "seam_") {
			return bad("not an http(s) URL; it looks like an API key, which goes in SEAM_API_KEY (value not shown)")
		}
		return bad("not an http(s) URL such as %s (value not shown)", seamclient.DefaultEndpoint)
	}
	if u.User != nil {
		return bad("must not carry user info; the key goes in SEAM_API_KEY (value not shown)")
	}
	if c.SeamAPIKey != "" && c.sendsKeyInClear(c.SeamEndpoint) {
		return bad(inClear)
	}
	return nil
}

// isLoopback reports whether host is localhost or a loopback address.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ConsumerConfig maps the command's configuration onto the consumer's.
func (c *Config) ConsumerConfig() consumer.Config {
	cc := consumer.Config{
		Concurrency:     c.Concurrency,
		MaxClockSkew:    c.MaxClockSkew,
		MaxDeliver:      c.MaxDeliver,
		RetryFor:        c.RetryFor,
		AwaitSync:       c.AwaitSync,
		DuplicateWindow: c.DupWindow,
		ShutdownGrace:   c.ShutdownGrace,
		Replicas:        c.Replicas,
		SeamTimeout:     c.SeamTimeout,
	}
	if c.SeamTimeout > 0 {
		cc.Lease = max(30*time.Second, 3*c.SeamTimeout)
	}
	if c.Concurrency > 512 {
		cc.MaxAckPending = 2 * c.Concurrency
	}
	return cc
}

// NewLogger builds the zerolog logger the configuration asks for.
func NewLogger(c *Config, w io.Writer) zerolog.Logger {
	lvl, _ := zerolog.ParseLevel(c.LogLevel)
	if c.LogFormat == "console" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger()
}
