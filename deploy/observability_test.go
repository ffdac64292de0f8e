package deploy_test

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	dto "github.com/prometheus/client_model/go"

	"github.com/keyworker/keyworker/consumer/consumertest"
	"github.com/keyworker/keyworker/consumer/embedded/natstest"
	"github.com/keyworker/keyworker/schemas"
	"github.com/keyworker/keyworker/seamclient/seamtest"
)

// exported is what a Prometheus scraping the worker can query: each series
// name with the label names and values seen on it.
type exported map[string]map[string]map[string]bool

// isTargetLabel says whether Prometheus adds the label to every scraped
// series itself.
func isTargetLabel(l string) bool { return l == "job" || l == "instance" }

// workerExports runs the worker binary on an embedded JetStream server
// against the Seam fake, pushes events through it so that each outcome,
// Seam status class, retry and dead-letter kind it can produce quickly has
// happened, and returns what its /metrics serves, as Prometheus sees it.
func workerExports(t *testing.T) exported {
	t.Helper()
	bin := binary(t, suite.workerBin)
	_, url := natstest.StartTest(t)
	nc, js := natstest.ConnectTest(t, url)

	const (
		cred    = "c0000000-0000-4000-8000-000000000001"
		missing = "c0000000-0000-4000-8000-000000000404"
		holder  = "a0000000-0000-4000-8000-000000000001"
		other   = "a0000000-0000-4000-8000-000000000002"
	)
	fake := seamtest.New(seamtest.WithAPIKey("observability-test-key"))
	if err := fake.AddCredential(json.RawMessage(fmt.Sprintf(`{"acs_credential_id":%q,"access_method":"card"}`, cred))); err != nil {
		t.Fatal(err)
	}
	fake.AddUser(holder)
	fake.AddUser(other)
	// One gateway page on the first assign: a 5xx and an in-process retry.
	fake.FailNext(1, "assign", seamtest.HTML(503))
	seamURL, stop, err := fake.Serve(t.Context(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stop(t.Context()) })

	httpAddr := consumertest.FreeAddr(t)
	startProcess(t, bin, map[string]string{
		"NATS_URL": url, "SEAM_ENDPOINT": seamURL, "SEAM_API_KEY": "observability-test-key",
		"KEYWORKER_HTTP_ADDR": httpAddr, "KEYWORKER_DATA_DIR": t.TempDir(),
	}, "run")
	base := "http://" + httpAddr
	readyz(t, base, 200, 30*time.Second)

	outcomes := make(chan *nats.Msg, 64)
	for _, subj := range []string{"credential.>", schemas.DeadLetterPrefix + ">"} {
		sub, err := nc.ChanSubscribe(subj, outcomes)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now().UTC().Add(-time.Hour)
	doc := func(subject, id, credID, user string, offset time.Duration) []byte {
		data := schemas.GuestData{ACSCredentialID: credID, ACSUserID: user, ReservationID: "R-" + id}
		b, err := schemas.NewEnvelope(subject, "pms://observability-test", id, data.ReservationID, t0.Add(offset), data)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	send := func(subject string, body []byte) {
		t.Helper()
		if err := publish(t.Context(), js, event{subject: subject, doc: body}, "", 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	await := func(want ...string) {
		t.Helper()
		var got []string
		for len(got) < len(want) {
			select {
			case m := <-outcomes:
				got = append(got, m.Subject)
			case <-time.After(30 * time.Second):
				t.Fatalf("outcome events %v, want %v", got, want)
			}
		}
		sort.Strings(got)
		sort.Strings(want)
		if !slices.Equal(got, want) {
			t.Fatalf("outcome events %v, want %v", got, want)
		}
	}

	checkin := doc(schemas.SubjectCheckedIn, "in-1", cred, holder, 0)
	send(schemas.SubjectCheckedIn, checkin)
	// The check-in first, so that the check-out finds its guest holding the card.
	await("credential.assigned")
	send(schemas.SubjectCheckedIn, checkin) // a PMS retry: duplicate
	send(schemas.SubjectCheckedOut, doc(schemas.SubjectCheckedOut, "out-1", cred, holder, time.Minute))
	send(schemas.SubjectCheckedOut, doc(schemas.SubjectCheckedOut, "out-2", cred, other, 2*time.Minute)) // not the holder: skipped
	send(schemas.SubjectCheckedIn, []byte("not json"))                                                   // invalid_event
	send(schemas.SubjectCheckedIn, doc(schemas.SubjectCheckedIn, "in-404", missing, holder, 0))          // Seam 404: permanent
	await("credential.unassigned", "credential.skipped",
		schemas.DeadLetterPrefix+schemas.SubjectCheckedIn, schemas.DeadLetterPrefix+schemas.SubjectCheckedIn)

	// The counters are incremented once the outcome is published and
	// acked: wait for the worker process to count all six deliveries (a
	// hand-back while a credential is busy counts as a retry besides).
	var ex exported
	natstest.WaitFor(t, 15*time.Second, func() error {
		families := scrape(t, base)
		n := sum(families, "keyworker_events_total", nil) - sum(families, "keyworker_events_total", map[string]string{"outcome": "retry"})
		if n < 6 {
			return fmt.Errorf("keyworker_events_total counts %v deliveries ended, want 6", n)
		}
		ex = asPrometheusSees(families)
		return nil
	})
	for _, want := range []struct{ metric, label, value string }{
		{"keyworker_events_total", "outcome", "duplicate"},
		{"keyworker_dead_letters_total", "kind", "permanent"},
		{"keyworker_retries_total", "endpoint", "assign"},
		{"keyworker_seam_requests_total", "status_class", "5xx"},
		{"keyworker_seam_requests_total", "status_class", "4xx"},
	} {
		if !ex[want.metric][want.label][want.value] {
			t.Errorf("the run did not produce %s{%s=%q}: %v", want.metric, want.label, want.value, ex[want.metric])
		}
	}
	return ex
}

// asPrometheusSees turns scraped families into the series names a query
// uses: a histogram's _bucket (with le), _sum and _count, a summary's
// base name (with quantile), _sum and _count; plus up, and the target
// labels on everything.
func asPrometheusSees(families map[string]*dto.MetricFamily) exported {
	ex := exported{}
	add := func(name string, labels map[string]string) {
		if ex[name] == nil {
			ex[name] = map[string]map[string]bool{}
		}
		for k, v := range labels {
			if ex[name][k] == nil {
				ex[name][k] = map[string]bool{}
			}
			if v != "" {
				ex[name][k][v] = true
			}
		}
	}
	for name, f := range families {
		for _, m := range f.GetMetric() {
			labels := map[string]string{"job": "", "instance": ""}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			switch f.GetType() {
			case dto.MetricType_HISTOGRAM:
				add(name+"_sum", labels)
				add(name+"_count", labels)
				labels["le"] = ""
				add(name+"_bucket", labels)
			case dto.MetricType_SUMMARY:
				add(name+"_sum", labels)
				add(name+"_count", labels)
				labels["quantile"] = ""
				add(name, labels)
			default:
				add(name, labels)
			}
		}
	}
	add("up", map[string]string{"job": "", "instance": ""})
	return ex
}

// checkQueries checks that every selector of every query names a series
// in ex, with label names it has, and, for plain values and plain
// alternatives (a|b), values it was seen with (target labels aside).
func checkQueries(t *testing.T, ex exported, queries map[string]string) map[string]bool {
	t.Helper()
	used := map[string]bool{}
	plainAlternatives := regexp.MustCompile(`^[a-zA-Z0-9_]+(\|[a-zA-Z0-9_]+)*$`)
	for where, q := range queries {
		sels, err := promqlSelectors(q)
		if err != nil {
			t.Errorf("%s: %v\n  %s", where, err, q)
			continue
		}
		if len(sels) == 0 {
			t.Errorf("%s selects no metric: %s", where, q)
		}
		for _, s := range sels {
			used[s.metric] = true
			labels, ok := ex[s.metric]
			if !ok {
				t.Errorf("%s queries %s, which the worker does not export", where, s.metric)
				continue
			}
			for _, m := range s.matchers {
				values, ok := labels[m.label]
				if !ok {
					t.Errorf("%s queries %s{%s...}, which has no label %s", where, s.metric, m.label, m.label)
					continue
				}
				if isTargetLabel(m.label) || strings.Contains(m.value, "$") {
					continue
				}
				var alts []string
				switch {
				case m.op == "=" || m.op == "!=":
					alts = []string{m.value}
				case plainAlternatives.MatchString(m.value):
					alts = strings.Split(m.value, "|")
				}
				for _, v := range alts {
					if !values[v] {
						t.Errorf("%s queries %s{%s%s%q}, but %s was never seen with %s=%q (seen: %v)", where, s.metric, m.label, m.op, m.value, s.metric, m.label, v, keys(values))
					}
				}
			}
		}
	}
	return used
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// dashboardQueries returns every PromQL query of a Grafana dashboard:
// panel targets (rows' panels included) and query variables.
func dashboardQueries(t *testing.T, rel string) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(suite.root, "deploy", rel))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels     []grafanaPanel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	// Grafana's interval variables, so that the queries parse as PromQL.
	grafanaVars := strings.NewReplacer("$__rate_interval", "1m", "${__rate_interval}", "1m", "$__interval", "1m", "$__range", "1h")
	queries := map[string]string{}
	var walk func([]grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			if p.Type != "row" && len(p.Targets) == 0 {
				t.Errorf("%s: panel %q has no query", rel, p.Title)
			}
			for _, tg := range p.Targets {
				queries[fmt.Sprintf("panel %q %s", p.Title, tg.RefID)] = grafanaVars.Replace(tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)
	labelValues := regexp.MustCompile(`^\s*label_values\((.+),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$`)
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q string
		var obj struct {
			Query string `json:"query"`
		}
		if json.Unmarshal(v.Query, &q) != nil && json.Unmarshal(v.Query, &obj) == nil {
			q = obj.Query
		}
		m := labelValues.FindStringSubmatch(q)
		if m == nil {
			t.Errorf("%s: variable %s: query %q is not label_values(selector, label)", rel, v.Name, q)
			continue
		}
		queries["variable "+v.Name] = grafanaVars.Replace(m[1])
	}
	return queries
}

type grafanaPanel struct {
	Type    string `json:"type"`
	Title   string `json:"title"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"`
}

// ruleQueries returns the expression of every rule in a Prometheus rule file.
func ruleQueries(t *testing.T, rel string) map[string]string {
	t.Helper()
	queries := map[string]string{}
	doc := readYAML(t, rel)[0]
	groups, _ := doc["groups"].([]any)
	for _, g := range groups {
		rules, _ := at(g, "rules").([]any)
		for i, r := range rules {
			name := str(at(r, "alert")) + str(at(r, "record"))
			queries[fmt.Sprintf("rule %d %s", i, name)] = str(at(r, "expr"))
		}
	}
	if len(queries) == 0 {
		t.Fatalf("%s holds no rule", rel)
	}
	return queries
}

// checkSyntax has promtool parse the queries, as recording rules, when it
// is installed (.ci/run installs it).
func checkSyntax(t *testing.T, queries map[string]string) {
	t.Helper()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Log("promtool not installed: the queries' syntax was not checked by Prometheus's parser")
		return
	}
	var b strings.Builder
	b.WriteString("groups:\n  - name: syntax\n    rules:\n")
	i := 0
	for _, q := range queries {
		qj, _ := json.Marshal(q)
		fmt.Fprintf(&b, "      - record: syntax_%d\n        expr: %s\n", i, qj)
		i++
	}
	file := filepath.Join(t.TempDir(), "queries.yaml")
	if err := os.WriteFile(file, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", file).CombinedOutput(); err != nil {
		t.Errorf("promtool check rules refuses a query: %v\n%s", err, out)
	}
}

// TestObservability_DashboardAndAlertRulesQueryOnlyWhatTheWorkerExports
// runs the worker binary, pushes an assign (after a Seam 503 and a retry),
// a duplicate, an unassign, a skip and two dead letters through it, scrapes
// /metrics, and checks deploy/grafana/keyworker.json and
// deploy/prometheus/alerts.yaml against what it serves: every series each
// query selects exists, with the labels (and label values) it filters on,
// and every keyworker_ metric has a place on the dashboard.
func TestObservability_DashboardAndAlertRulesQueryOnlyWhatTheWorkerExports(t *testing.T) {
	ex := workerExports(t)
	t.Run("dashboard", func(t *testing.T) {
		queries := dashboardQueries(t, filepath.Join("grafana", "keyworker.json"))
		used := checkQueries(t, ex, queries)
		for name := range ex {
			base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
			if strings.HasPrefix(name, "keyworker_") && !used[name] && !used[base+"_bucket"] && !used[base+"_count"] && !used[base+"_sum"] {
				t.Errorf("the worker exports %s, which no panel of deploy/grafana/keyworker.json shows", name)
			}
		}
		checkSyntax(t, queries)
	})
	t.Run("alert rules", func(t *testing.T) {
		queries := ruleQueries(t, filepath.Join("prometheus", "alerts.yaml"))
		checkQueries(t, ex, queries)
		checkSyntax(t, queries)
	})
}

// promSelector is one metric a PromQL expression selects and its label
// matchers.
type promSelector struct {
	metric   string
	matchers []promMatcher
}

type promMatcher struct{ label, op, value string }

// promqlSelectors finds the metric selectors of a PromQL expression: names
// that are not functions, aggregations, keywords, grouping labels, numbers,
// durations or strings. A selector without a metric name ({__name__=...})
// is refused: the check could not tell what it selects.
func promqlSelectors(expr string) ([]promSelector, error) {
	grouping := []string{"by", "without", "on", "ignoring", "group_left", "group_right"}
	notMetrics := []string{"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio",
		"and", "or", "unless", "offset", "bool", "atan2", "inf", "nan", "start", "end"}
	var sels []promSelector
	s := []rune(expr)
	i := 0
	isIdentStart := func(r rune) bool { return r == '_' || r == ':' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' }
	isIdent := func(r rune) bool { return isIdentStart(r) || r >= '0' && r <= '9' }
	skipSpace := func() {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r') {
			i++
		}
	}
	readString := func() (string, error) {
		q := s[i]
		i++
		var b strings.Builder
		for i < len(s) && s[i] != q {
			if s[i] == '\\' && q != '`' && i+1 < len(s) {
				i++
			}
			b.WriteRune(s[i])
			i++
		}
		if i >= len(s) {
			return "", fmt.Errorf("unterminated string")
		}
		i++
		return b.String(), nil
	}
	skipTo := func(closing rune) error {
		for i < len(s) && s[i] != closing {
			if s[i] == '"' || s[i] == '\'' || s[i] == '`' {
				if _, err := readString(); err != nil {
					return err
				}
				continue
			}
			i++
		}
		if i >= len(s) {
			return fmt.Errorf("no closing %q", closing)
		}
		i++
		return nil
	}
	for i < len(s) {
		r := s[i]
		switch {
		case r == '"' || r == '\'' || r == '`':
			if _, err := readString(); err != nil {
				return nil, err
			}
		case r == '#':
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case r == '[':
			if err := skipTo(']'); err != nil {
				return nil, err
			}
		case r == '{':
			return nil, fmt.Errorf("a selector without a metric name at %d", i)
		case r >= '0' && r <= '9' || r == '.':
			for i < len(s) && (isIdent(s[i]) || s[i] == '.') {
				i++
			}
		case isIdentStart(r):
			start := i
			for i < len(s) && isIdent(s[i]) {
				i++
			}
			word := string(s[start:i])
			lower := strings.ToLower(word)
			skipSpace()
			switch {
			case slices.Contains(grouping, lower):
				if i < len(s) && s[i] == '(' {
					if err := skipTo(')'); err != nil {
						return nil, err
					}
				}
			case slices.Contains(notMetrics, lower):
				// an aggregation or a keyword
			case i < len(s) && s[i] == '(':
				// a function
			default:
				sel := promSelector{metric: word}
				if i < len(s) && s[i] == '{' {
					i++
					for {
						skipSpace()
						if i < len(s) && s[i] == ',' {
							i++
							skipSpace()
						}
						if i < len(s) && s[i] == '}' {
							i++
							break
						}
						ls := i
						for i < len(s) && isIdent(s[i]) {
							i++
						}
						m := promMatcher{label: string(s[ls:i])}
						skipSpace()
						opStart := i
						for i < len(s) && strings.ContainsRune("=!~", s[i]) {
							i++
						}
						m.op = string(s[opStart:i])
						skipSpace()
						if m.label == "" || m.op == "" || i >= len(s) || !strings.ContainsRune("\"'`", s[i]) {
							return nil, fmt.Errorf("cannot read the matchers of %s", word)
						}
						if m.label == "__name__" {
							return nil, fmt.Errorf("%s: a __name__ matcher", word)
						}
						v, err := readString()
						if err != nil {
							return nil, err
						}
						m.value = v
						sel.matchers = append(sel.matchers, m)
					}
				}
				sels = append(sels, sel)
			}
		default:
			i++
		}
	}
	return sels, nil
}

// TestPromQLSelectors_FindsMetricsNotFunctionsLabelsOrKeywords keeps the
// extractor the observability test relies on honest.
func TestPromQLSelectors_FindsMetricsNotFunctionsLabelsOrKeywords(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string
	}{
		{`histogram_quantile(0.99, sum by (le, endpoint) (rate(a_bucket{job=~"$job", instance=~"x"}[1m])))`, []string{`a_bucket{job=~"$job",instance=~"x"}`}},
		{`sum by (job, kind) (b unless b offset 10m) > 0 or c{kind="x y"} == bool 1`, []string{"b", "b", `c{kind="x y"}`}},
		{"max(d) by (job) / on (job) group_left (state) e{state!=\"a\"}\n# f\n", []string{"d", `e{state!="a"}`}},
		{`min_over_time((max by (job) (g) + max by (job) (h))[15m:1m]) > 0 and on (job) max by (job) (g offset 15m)`, []string{"g", "h", "g"}},
		{`absent(up{job="keyworker"}) or vector(0) * 1e-3 + Inf`, []string{`up{job="keyworker"}`}},
		{`count (i:rate5m)`, []string{"i:rate5m"}},
	} {
		sels, err := promqlSelectors(tc.expr)
		if err != nil {
			t.Errorf("%s: %v", tc.expr, err)
			continue
		}
		var got []string
		for _, s := range sels {
			g := s.metric
			if len(s.matchers) > 0 {
				var ms []string
				for _, m := range s.matchers {
					ms = append(ms, fmt.Sprintf("%s%s%q", m.label, m.op, m.value))
				}
				g += "{" + strings.Join(ms, ",") + "}"
			}
			got = append(got, g)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s:\n got  %v\n want %v", tc.expr, got, tc.want)
		}
	}
	if _, err := promqlSelectors(`{__name__="x"}`); err == nil {
		t.Error("a selector without a metric name was accepted")
	}
}

// TestCompose_ObservabilityProfileScrapesTheWorkersWithTheTestedRulesAndDashboard
// checks the compose file's optional observability profile: Prometheus,
// Grafana and Jaeger exist only in that profile, with pinned images and
// loopback-only ports; every file they mount exists; Prometheus loads the
// alert rules promtool tests and scrapes every worker service on the port
// its KEYWORKER_HTTP_ADDR listens on, under the job name the rules expect;
// Grafana's data source is that Prometheus and its dashboard provider
// reads the mounted dashboard. With docker compose installed, the file
// with the profile enabled is validated too.
func TestCompose_ObservabilityProfileScrapesTheWorkersWithTheTestedRulesAndDashboard(t *testing.T) {
	compose := readYAML(t, "docker-compose.yml")[0]
	services, _ := compose["services"].(map[string]any)
	declared, _ := compose["volumes"].(map[string]any)
	observability := []string{"prometheus", "grafana", "jaeger"}
	for name, svc := range services {
		profiles := toStrings(at(svc, "profiles"))
		if slices.Contains(observability, name) != slices.Equal(profiles, []string{"observability"}) {
			t.Errorf("%s: profiles %v; want [observability] exactly for %v, none for the rest", name, profiles, observability)
		}
	}
	// mounts maps each observability service's mount destinations to sources.
	mounts := map[string]map[string]string{}
	for _, name := range observability {
		svc := services[name]
		if svc == nil {
			t.Fatalf("no service %s", name)
		}
		image := str(at(svc, "image"))
		if m := regexp.MustCompile(`^\$\{[A-Z_]+:-(.+)\}$`).FindStringSubmatch(image); m != nil {
			image = m[1]
		}
		if _, tag, ok := strings.Cut(image, ":"); !ok || !regexp.MustCompile(`^v?[0-9]+\.[0-9]+\.[0-9]+$`).MatchString(tag) {
			t.Errorf("%s: image %q is not pinned to a version", name, image)
		}
		for _, p := range toStrings(at(svc, "ports")) {
			if !strings.HasPrefix(p, "127.0.0.1:") {
				t.Errorf("%s publishes %s beyond loopback", name, p)
			}
		}
		mounts[name] = map[string]string{}
		for _, v := range toStrings(at(svc, "volumes")) {
			parts := strings.Split(v, ":")
			if len(parts) < 2 {
				t.Errorf("%s: volume %q", name, v)
				continue
			}
			src, dst := parts[0], parts[1]
			mounts[name][dst] = src
			if strings.HasPrefix(src, "./") {
				if _, err := os.Stat(filepath.Join(suite.root, "deploy", src)); err != nil {
					t.Errorf("%s mounts %s, which does not exist: %v", name, src, err)
				}
			} else if _, ok := declared[src]; !ok {
				t.Errorf("%s: volume %q is not declared", name, src)
			}
		}
	}

	// Prometheus: its configuration, the rules promtool tests, the workers.
	var configFile string
	for _, a := range toStrings(at(services["prometheus"], "command")) {
		if v, ok := strings.CutPrefix(a, "--config.file="); ok {
			configFile = v
		}
	}
	if src := mounts["prometheus"][configFile]; src != "./prometheus/prometheus.yml" {
		t.Fatalf("Prometheus reads %q, mounted from %q, want ./prometheus/prometheus.yml", configFile, src)
	}
	prom := readYAML(t, filepath.Join("prometheus", "prometheus.yml"))[0]
	rules := toStrings(prom["rule_files"])
	if len(rules) != 1 || mounts["prometheus"][rules[0]] != "./prometheus/alerts.yaml" {
		t.Errorf("Prometheus loads rules %v, want the mount of ./prometheus/alerts.yaml (%v)", rules, mounts["prometheus"])
	}
	var workers []string
	for name, svc := range services {
		if addr := str(at(svc, "environment", "KEYWORKER_HTTP_ADDR")); addr != "" {
			_, port, err := net.SplitHostPort(addr)
			if err != nil {
				t.Fatalf("%s: KEYWORKER_HTTP_ADDR %q: %v", name, addr, err)
			}
			workers = append(workers, name+":"+port)
		}
	}
	sort.Strings(workers)
	if len(workers) < 2 {
		t.Fatalf("worker services listening for /metrics: %v", workers)
	}
	var job any
	for _, sc := range at(prom, "scrape_configs").([]any) {
		if str(at(sc, "job_name")) == "keyworker" {
			job = sc
		}
	}
	alerts, err := os.ReadFile(filepath.Join(suite.root, "deploy", "prometheus", "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if job == nil || !strings.Contains(string(alerts), `up{job="keyworker"}`) {
		t.Fatal(`no scrape job "keyworker", the job the alert rules watch with up{job="keyworker"}`)
	}
	if p := str(at(job, "metrics_path")); p != "" && p != "/metrics" {
		t.Errorf("scrape job keyworker: metrics_path %q", p)
	}
	var targets []string
	for _, sc := range at(job, "static_configs").([]any) {
		targets = append(targets, toStrings(at(sc, "targets"))...)
	}
	sort.Strings(targets)
	if !slices.Equal(targets, workers) {
		t.Errorf("Prometheus scrapes %v, the workers serve /metrics on %v", targets, workers)
	}

	// Grafana: data source, dashboard provider, dashboard.
	var ds, provider map[string]any
	for dst, src := range mounts["grafana"] {
		switch {
		case strings.HasPrefix(dst, "/etc/grafana/provisioning/datasources/"):
			ds = readYAML(t, src)[0]
		case strings.HasPrefix(dst, "/etc/grafana/provisioning/dashboards/"):
			provider = readYAML(t, src)[0]
		}
	}
	if ds == nil || provider == nil {
		t.Fatalf("Grafana mounts no data source or no dashboard provider: %v", mounts["grafana"])
	}
	if str(at(ds, "datasources", 0, "type")) != "prometheus" || str(at(ds, "datasources", 0, "url")) != "http://prometheus:9090" || at(ds, "datasources", 0, "isDefault") != true {
		t.Errorf("Grafana's data source is not the compose file's Prometheus (http://prometheus:9090) as default: %v", at(ds, "datasources", 0))
	}
	dir := str(at(provider, "providers", 0, "options", "path"))
	if src := mounts["grafana"][dir+"/keyworker.json"]; src != "./grafana/keyworker.json" {
		t.Errorf("Grafana's dashboard provider reads %s, where ./grafana/keyworker.json is not mounted (%v)", dir, mounts["grafana"])
	}
	if at(services["jaeger"], "environment", "COLLECTOR_OTLP_ENABLED") != "true" {
		t.Error("jaeger: OTLP reception is not enabled")
	}

	cli := composeCLI()
	if cli == nil {
		t.Log("docker compose not installed: the profile was checked structurally only")
		return
	}
	cmd := exec.Command(cli[0], append(cli[1:], "--env-file", filepath.Join(suite.root, "deploy", ".env.example"),
		"-f", filepath.Join(suite.root, "deploy", "docker-compose.yml"), "--profile", "observability", "config", "-q")...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("%v --profile observability config: %v\n%s", cli, err, out)
	}
}
