package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/keyworker/keyworker/cmd/worker/internal/cli"
)

// TestBench_TinyRunReportsEveryScenarioWithFigures runs the whole bench at
// 50 events per scenario, in process, and checks the report's shape and
// that every figure was measured. It asserts nothing about speed.
func TestBench_TinyRunReportsEveryScenarioWithFigures(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep := runScenarios(ctx, options{quick: true, events: 50})
	if broken := rep.broken(); len(broken) > 0 {
		t.Fatalf("runs broke: %v", broken)
	}
	var ids []string
	for _, s := range rep.Scenarios {
		ids = append(ids, s.ID)
		if s.Target.Missing != "" {
			t.Errorf("%s: no target figure: %s", s.ID, s.Target.Missing)
		}
		if s.ID != "P5" && s.Target.Value <= 0 {
			t.Errorf("%s: target figure %v, want > 0", s.ID, s.Target.Value)
		}
		for _, r := range []*runResult{s.Floor, s.Keyworker} {
			if r == nil {
				t.Fatalf("%s: a pipeline did not run", s.ID)
			}
			if r.Events != 50 {
				t.Errorf("%s %s: %d events observed, want 50", s.ID, r.Pipeline, r.Events)
			}
			if r.Seconds <= 0 || r.EventsPerSec <= 0 || r.E2E.P50Ms <= 0 || r.E2E.P99Ms <= 0 || r.Added.P99Ms <= 0 || r.SeamCallsPerEvent < 1 {
				t.Errorf("%s %s: a figure is zero: %+v", s.ID, r.Pipeline, *r)
			}
			if runtime.GOOS == "linux" && r.PeakRSS <= 0 {
				t.Errorf("%s %s: no peak RSS", s.ID, r.Pipeline)
			}
		}
		if s.Keyworker.SeamEffects != 50 {
			t.Errorf("%s keyworker: %d assignments in the fake, want 50", s.ID, s.Keyworker.SeamEffects)
		}
	}
	if got := strings.Join(ids, ","); got != "P1,P2,P3,P4,P5" {
		t.Fatalf("scenarios %s, want P1,P2,P3,P4,P5", got)
	}
	if p3 := rep.Scenarios[2].Keyworker; p3.SeamCallsPerEvent <= 1 {
		t.Errorf("P3: %.2f Seam calls per event: the faults were not injected", p3.SeamCallsPerEvent)
	}

	var table bytes.Buffer
	rep.writeTable(&table)
	for _, want := range []string{"P1", "P5", "keyworker", "floor", "targets", ">= 0.5", "<= 64 MiB"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	raw, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back struct {
		Scenarios []struct {
			ID        string `json:"id"`
			Keyworker struct {
				EventsPerSec float64 `json:"events_per_sec"`
			} `json:"keyworker"`
		} `json:"scenarios"`
	}
	if err := json.Unmarshal(raw, &back); err != nil || len(back.Scenarios) != 5 || back.Scenarios[0].Keyworker.EventsPerSec <= 0 {
		t.Fatalf("JSON report does not carry the scenarios: %v %s", err, raw)
	}
}

func TestBench_UnknownScenarioIsAUsageError(t *testing.T) {
	var out, errOut bytes.Buffer
	err := Run(context.Background(), []string{"--scenario", "P1,P9"}, &out, &errOut)
	var u *cli.UsageError
	if !errors.As(err, &u) || !strings.Contains(err.Error(), "P9") {
		t.Fatalf("got %v, want a usage error naming P9", err)
	}
}
