package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/internal/fleet"
	"github.com/tollgate-go/tollgate/internal/fleet/peers"
)

// The scenarios of bench --scenario: fleets whose calls carry priorities or
// tenants, each run through tollgate with them and side by side through
// tollgate without them (FIFO: the same fleet, the same calls, one queue in
// arrival order).
const (
	scenarioPriority = "priority"
	scenarioTenants  = "tenants"
)

// The groups of the scenarios' fleets.
const (
	groupBackground  = "background"
	groupInteractive = "interactive"
	groupTenantA     = "tenant-a"
	groupTenantB     = "tenant-b"
)

// The runs of the scenarios.
const (
	runPriorities = "priorities"
	runNoHeadroom = "priorities, no headroom"
	runFIFO       = "FIFO"
	runIdle       = "idle key"
	runFairShare  = "fair share"
)

// scenarioFlags are the flags of bench --scenario.
type scenarioFlags struct {
	name         string
	interactive  int
	every        time.Duration
	tenantAgents string // "12,4"
	weights      string // "1,1"
}

func (s *scenarioFlags) add(f *fleetFlags) {
	f.fs.StringVar(&s.name, "scenario", "",
		"run a scenario instead of --clients: priority (--agents Background agents and --interactive Interactive agents "+
			"that each start a call every --every, through tollgate with priorities, without headroom, without priorities "+
			"(FIFO), and the Interactive agents alone on an idle key) or tenants (two tenants of --tenant-agents agents, "+
			"weighted --tenant-weights, with fair share and FIFO)")
	f.fs.IntVar(&s.interactive, "interactive", 2, "--scenario priority: Interactive agents")
	f.fs.DurationVar(&s.every, "every", 5*time.Second, "--scenario priority: how often each Interactive agent starts a call")
	f.fs.StringVar(&s.tenantAgents, "tenant-agents", "12,4", "--scenario tenants: the agents of tenant a and of tenant b")
	f.fs.StringVar(&s.weights, "tenant-weights", "1,1", "--scenario tenants: the weights of tenant a and of tenant b")
}

// apply sets the scenario's fleet in cfg and returns its runs; none without
// a scenario.
func (s *scenarioFlags) apply(f *fleetFlags, cfg *fleet.Config) ([]fleet.Client, error) {
	switch s.name {
	case "":
		return nil, nil
	case scenarioPriority:
		if s.interactive < 1 || s.every <= 0 {
			return nil, usagef("--interactive must be at least 1 and --every positive")
		}
		cfg.Groups = []fleet.Group{
			{Name: groupBackground, Agents: f.agents},
			{Name: groupInteractive, Agents: s.interactive, Every: s.every},
		}
		f.fleet = fmt.Sprintf("%d Background agents and %d Interactive agents (a call every %s each) per run", f.agents, s.interactive, s.every)
		classes := map[string]peers.Class{
			groupBackground:  {Priority: tollgate.Background},
			groupInteractive: {Priority: tollgate.Interactive},
		}
		return []fleet.Client{
			peers.TollgateClasses(runPriorities, classes, nil),
			peers.TollgateClasses(runNoHeadroom, classes, nil, tollgate.WithInteractiveHeadroom(0)),
			peers.TollgateClasses(runFIFO, nil, nil),
			peers.TollgateClasses(runIdle, classes, []string{groupInteractive}),
		}, nil
	case scenarioTenants:
		agents, err := pair(s.tenantAgents, "--tenant-agents", strconv.Atoi)
		if err != nil {
			return nil, err
		}
		weights, err := pair(s.weights, "--tenant-weights", func(v string) (float64, error) { return strconv.ParseFloat(v, 64) })
		if err != nil {
			return nil, err
		}
		if agents[0] < 1 || agents[1] < 1 {
			return nil, usagef("--tenant-agents must be two numbers of at least 1")
		}
		cfg.Groups = []fleet.Group{{Name: groupTenantA, Agents: agents[0]}, {Name: groupTenantB, Agents: agents[1]}}
		f.fleet = fmt.Sprintf("tenant a: %d agents (weight %g), tenant b: %d agents (weight %g) per run", agents[0], weights[0], agents[1], weights[1])
		classes := map[string]peers.Class{groupTenantA: {Tenant: "a"}, groupTenantB: {Tenant: "b"}}
		return []fleet.Client{
			peers.TollgateClasses(runFairShare, classes, nil, tollgate.WithTenantWeights(map[string]float64{"a": weights[0], "b": weights[1]})),
			peers.TollgateClasses(runFIFO, nil, nil),
		}, nil
	}
	return nil, usagef("--scenario must be %s or %s, not %q", scenarioPriority, scenarioTenants, s.name)
}

// pair parses "x,y".
func pair[T any](v, flag string, parse func(string) (T, error)) ([2]T, error) {
	var out [2]T
	parts := strings.Split(v, ",")
	if len(parts) != 2 {
		return out, usagef("%s must be two values separated by a comma, not %q", flag, v)
	}
	for i, p := range parts {
		x, err := parse(strings.TrimSpace(p))
		if err != nil {
			return out, usagef("%s: %v", flag, err)
		}
		out[i] = x
	}
	return out, nil
}

// groupOf returns the result of group name in r.
func groupOf(r fleet.Result, name string) fleet.GroupResult {
	for _, g := range r.Groups {
		if g.Name == name {
			return g
		}
	}
	return fleet.GroupResult{Name: name}
}

// writePriorityRows prints the priority scenario: per run, what the fleet
// got of the limit, and the latencies of each group, the Interactive ones
// next to the same calls on an idle key.
func writePriorityRows(w io.Writer, results []fleet.Result) {
	var idle fleet.GroupResult
	for _, r := range results {
		if r.Client == runIdle {
			idle = groupOf(r, groupInteractive)
		}
	}
	ratio := func(d, base time.Duration) string {
		if base <= 0 {
			return seconds(d)
		}
		return fmt.Sprintf("%s (%.1f×)", seconds(d), float64(d)/float64(base))
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "run\tshare of binding limit\tfailed calls\t429s\tinteractive OK\tinteractive p50 (× idle)\tinteractive p95 (× idle)\tbackground OK\tbackground p50\tbackground p95\tbackground max\t")
	for _, r := range results {
		in, bg := groupOf(r, groupInteractive), groupOf(r, groupBackground)
		share := shareString(r.Binding)
		if r.Client == runIdle {
			share = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\t%s\t%d\t%s\t%s\t%s\t\n", r.Client, share, r.Failed, r.RateLimited,
			in.OK, ratio(in.P50, idle.P50), ratio(in.P95, idle.P95), bg.OK, seconds(bg.P50), seconds(bg.P95), seconds(bg.Max))
	}
	_ = tw.Flush()
}

// writeTenantRows prints the tenants scenario: per run, what the fleet got
// of the limit, and each tenant's share of the input tokens served.
func writeTenantRows(w io.Writer, results []fleet.Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	var a, b fleet.GroupResult
	if len(results) > 0 {
		a, b = groupOf(results[0], groupTenantA), groupOf(results[0], groupTenantB)
	}
	fmt.Fprintf(tw, "run\tshare of binding limit\tfailed calls\t429s\ttenant a (%d agents): input tokens\ttenant b (%d agents): input tokens\ta p50\tb p50\t\n",
		a.Agents, b.Agents)
	for _, r := range results {
		a, b := groupOf(r, groupTenantA), groupOf(r, groupTenantB)
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s (%.1f %%)\t%s (%.1f %%)\t%s\t%s\t\n", r.Client, shareString(r.Binding), r.Failed, r.RateLimited,
			count(float64(a.InputTokens)), 100*a.InputShare, count(float64(b.InputTokens)), 100*b.InputShare, seconds(a.P50), seconds(b.P50))
	}
	_ = tw.Flush()
}
