// group-consume (franz-go): consume a topic as a member of a classic consumer group,
// log every processed record and every rebalance, commit synchronously after each
// poll batch. Same interface as the Java, Python and kafkajs programs (the interface is
// described in tests/test_group_clients.py):
//
//	client-check group-consume --bootstrap H:P[,H:P] --topic T --group G --out FILE
//	    [--max-seconds S] [--idle-exit-ms N] [--assignor range|cooperative-sticky]
//	    [--instance-id ID] [--session-timeout-ms N] [--heartbeat-interval-ms N]
//	    [--max-poll-records N]
//
// FILE: one "partition offset value" line per processed record, flushed after every
// batch (before the batch's commit). FILE.rebalance: "epoch_ms event partitions [detail]"
// lines. One JSON summary line on stdout. Exit 0 on SIGTERM, idle exit or max-seconds
// (after Close, which leaves the group); 2 if the consumer failed; 1 on bad arguments.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

type groupRun struct {
	mu     sync.Mutex
	events *os.File
	sum    groupSummary
}

type groupSummary struct {
	Client         string  `json:"client"`
	Consumed       int64   `json:"consumed"`
	Batches        int64   `json:"batches"`
	Commits        int64   `json:"commits"`
	CommitFailures int64   `json:"commit_failures"`
	Exit           string  `json:"exit"`
	ErrorClass     *string `json:"error_class"`
	ErrorMessage   *string `json:"error_message"`
}

func (g *groupRun) event(what string, parts []int32, detail string) {
	ps := "-"
	if len(parts) > 0 {
		sorted := append([]int32(nil), parts...)
		sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
		strs := make([]string, len(sorted))
		for i, p := range sorted {
			strs[i] = strconv.Itoa(int(p))
		}
		ps = strings.Join(strs, ",")
	}
	line := fmt.Sprintf("%d %s %s", time.Now().UnixMilli(), what, ps)
	if detail != "" {
		line += " " + strings.ReplaceAll(detail, "\n", " ")
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	fmt.Fprintln(g.events, line)
	fmt.Fprintln(os.Stderr, "[group-consume franz-go] "+line)
}

func (g *groupRun) fail(err error) {
	cls := fmt.Sprintf("%T", err)
	msg := err.Error()
	g.sum.ErrorClass, g.sum.ErrorMessage = &cls, &msg
	g.sum.Exit = "error"
	g.event("error", nil, cls+": "+msg)
}

func partsOf(m map[string][]int32) []int32 {
	var out []int32
	for _, ps := range m {
		out = append(out, ps...)
	}
	return out
}

func groupConsume(args []string) int {
	fs := flag.NewFlagSet("group-consume", flag.ContinueOnError)
	var (
		bootstrap  = fs.String("bootstrap", "", "HOST:PORT[,HOST:PORT...]")
		topic      = fs.String("topic", "", "topic")
		group      = fs.String("group", "", "group id")
		out        = fs.String("out", "", "record log file (FILE.rebalance gets the rebalance log)")
		maxSeconds = fs.Float64("max-seconds", 120, "exit after this many seconds")
		idleExitMs = fs.Int64("idle-exit-ms", 0, "exit when idle this long after having consumed something (0: never)")
		assignor   = fs.String("assignor", "range", "range|cooperative-sticky")
		instanceID = fs.String("instance-id", "", "group.instance.id (static membership)")
		sessionMs  = fs.Int("session-timeout-ms", 6000, "session timeout")
		hbMs       = fs.Int("heartbeat-interval-ms", 1000, "heartbeat interval")
		maxRecords = fs.Int("max-poll-records", 500, "records per poll")
	)
	if err := fs.Parse(args); err != nil {
		return 1
	}
	if *bootstrap == "" || *topic == "" || *group == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "usage: client-check group-consume --bootstrap H:P --topic T --group G --out FILE [...]")
		return 1
	}
	var balancer kgo.GroupBalancer
	switch *assignor {
	case "range":
		balancer = kgo.RangeBalancer()
	case "cooperative-sticky":
		balancer = kgo.CooperativeStickyBalancer()
	default:
		fmt.Fprintln(os.Stderr, "--assignor must be range or cooperative-sticky")
		return 1
	}
	recFile, err := os.OpenFile(*out, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer recFile.Close()
	evFile, err := os.OpenFile(*out+".rebalance", os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer evFile.Close()
	g := &groupRun{events: evFile, sum: groupSummary{Client: "franz-go"}}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	opts := []kgo.Opt{
		kgo.SeedBrokers(strings.Split(*bootstrap, ",")...),
		kgo.ClientID(fmt.Sprintf("group-consume-franz-go-%d", os.Getpid())),
		kgo.ConsumerGroup(*group),
		kgo.ConsumeTopics(*topic),
		kgo.DisableAutoCommit(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.Balancers(balancer),
		kgo.SessionTimeout(time.Duration(*sessionMs) * time.Millisecond),
		kgo.HeartbeatInterval(time.Duration(*hbMs) * time.Millisecond),
		kgo.FetchMaxWait(100 * time.Millisecond),
		kgo.MetadataMinAge(250 * time.Millisecond),
		kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			g.event("assigned", partsOf(m), "")
		}),
		kgo.OnPartitionsRevoked(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			g.event("revoked", partsOf(m), "")
		}),
		kgo.OnPartitionsLost(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			g.event("lost", partsOf(m), "")
		}),
	}
	if *instanceID != "" {
		opts = append(opts, kgo.InstanceID(*instanceID))
	}
	// Info level on stderr (the group's life: joins, assignments, fetched offsets, retries);
	// CLIENT_CHECK_DEBUG=1: every request.
	level := kgo.LogLevelInfo
	if os.Getenv("CLIENT_CHECK_DEBUG") != "" {
		level = kgo.LogLevelDebug
	}
	opts = append(opts, kgo.WithLogger(kgo.BasicLogger(os.Stderr, level, nil)))
	g.event("start", nil, fmt.Sprintf("client=franz-go assignor=%s pid=%d", *assignor, os.Getpid()))
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		g.fail(err)
	} else {
		start := time.Now()
		last := start
	loop:
		for {
			switch {
			case ctx.Err() != nil:
				g.sum.Exit = "sigterm"
				break loop
			case time.Since(start).Seconds() >= *maxSeconds:
				g.sum.Exit = "max-seconds"
				break loop
			case *idleExitMs > 0 && g.sum.Consumed > 0 && time.Since(last).Milliseconds() >= *idleExitMs:
				g.sum.Exit = "idle"
				break loop
			}
			pctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
			fetches := cl.PollRecords(pctx, *maxRecords)
			cancel()
			if fetches.IsClientClosed() {
				g.fail(kgo.ErrClientClosed)
				break
			}
			fetches.EachError(func(t string, p int32, err error) {
				if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
					g.event("client-error", nil, fmt.Sprintf("%s[%d]: %v", t, p, err))
				}
			})
			recs := fetches.Records()
			if len(recs) == 0 {
				continue
			}
			last = time.Now()
			var sb strings.Builder
			parts := map[int32]bool{}
			for _, r := range recs {
				v := "null"
				if r.Value != nil {
					v = string(r.Value)
				}
				fmt.Fprintf(&sb, "%d %d %s\n", r.Partition, r.Offset, v)
				parts[r.Partition] = true
			}
			if _, err := recFile.WriteString(sb.String()); err != nil {
				g.fail(err)
				break
			}
			g.sum.Consumed += int64(len(recs))
			g.sum.Batches++
			// The signal context is not used here: a SIGTERM must not cancel the batch's commit.
			cctx, ccancel := context.WithTimeout(context.Background(), 15*time.Second)
			err := cl.CommitRecords(cctx, recs...)
			ccancel()
			if err != nil {
				g.sum.CommitFailures++
				var ps []int32
				for p := range parts {
					ps = append(ps, p)
				}
				g.event("commit-failed", ps, fmt.Sprintf("n=%d %v", len(recs), err))
			} else {
				g.sum.Commits++
			}
		}
		g.event("closing", nil, g.sum.Exit)
		cl.Close() // leaves the group (dynamic member)
	}
	g.event("exit", nil, g.sum.Exit)
	b, _ := json.Marshal(g.sum)
	fmt.Println(string(b))
	if g.sum.ErrorClass != nil {
		return 2
	}
	return 0
}
