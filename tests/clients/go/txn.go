// txn-copy (franz-go): exactly-once consume-transform-produce with kgo.GroupTransactSession.
// Consumes --input in group --group (read_committed, stable offsets), copies every record
// (key and value unchanged) to the same partition of --output and commits the consumed
// offsets in the same transaction. A transaction the session cannot commit (a rebalance, an
// abortable error) is aborted, and the session rewinds to the group's committed offsets.
//
//	client-check txn-copy --bootstrap H:P[,H:P] --input T --output T2 --group G
//	    --transactional-id X --input-records N [--max-poll-records N] [--txn-delay-ms N]
//	    [--max-seconds S]
//
// --txn-delay-ms sleeps inside each transaction after its records were produced, before it
// ends. Exit 0 once the group's committed offsets of --input add up to --input-records (every
// input record copied); 3 at --max-seconds; 2 when End returns an error (franz-go: none is
// retryable); 1 on bad arguments. Progress on stderr, one JSON summary line on stdout.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

type txnSummary struct {
	Client       string  `json:"client"`
	Exit         string  `json:"exit"`
	Transactions int64   `json:"transactions"`
	Aborted      int64   `json:"aborted"`
	Copied       int64   `json:"copied"`
	ErrorClass   *string `json:"error_class"`
	ErrorMessage *string `json:"error_message"`
}

func txnCopy(args []string) int {
	fs := flag.NewFlagSet("txn-copy", flag.ContinueOnError)
	var (
		bootstrap  = fs.String("bootstrap", "", "HOST:PORT[,HOST:PORT...]")
		input      = fs.String("input", "", "input topic")
		output     = fs.String("output", "", "output topic")
		group      = fs.String("group", "", "group id")
		txnID      = fs.String("transactional-id", "", "transactional.id")
		want       = fs.Int64("input-records", -1, "records in --input: exit once the group committed them all")
		maxRecords = fs.Int("max-poll-records", 50, "records per transaction at most")
		delayMs    = fs.Int("txn-delay-ms", 0, "sleep inside each transaction before ending it")
		maxSeconds = fs.Float64("max-seconds", 120, "give up after this many seconds")
	)
	if err := fs.Parse(args); err != nil {
		return 1
	}
	if *bootstrap == "" || *input == "" || *output == "" || *group == "" || *txnID == "" || *want < 0 {
		fmt.Fprintln(os.Stderr, "usage: client-check txn-copy --bootstrap H:P --input T --output T2 --group G --transactional-id X --input-records N [...]")
		return 1
	}
	sum := txnSummary{Client: "franz-go", Exit: "done"}
	fail := func(err error) {
		cls := fmt.Sprintf("%T", err)
		msg := err.Error()
		sum.ErrorClass, sum.ErrorMessage = &cls, &msg
		sum.Exit = "error"
	}
	level := kgo.LogLevelInfo
	if os.Getenv("CLIENT_CHECK_DEBUG") != "" {
		level = kgo.LogLevelDebug
	}
	sess, err := kgo.NewGroupTransactSession(
		kgo.SeedBrokers(strings.Split(*bootstrap, ",")...),
		kgo.ClientID(fmt.Sprintf("txn-copy-franz-go-%d", os.Getpid())),
		kgo.TransactionalID(*txnID),
		kgo.TransactionTimeout(10*time.Second),
		kgo.ConsumerGroup(*group),
		kgo.ConsumeTopics(*input),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.RequireStableFetchOffsets(),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.SessionTimeout(6*time.Second),
		kgo.HeartbeatInterval(time.Second),
		kgo.FetchMaxWait(100*time.Millisecond),
		kgo.MetadataMinAge(250*time.Millisecond),
		kgo.WithLogger(kgo.BasicLogger(os.Stderr, level, nil)),
	)
	if err != nil {
		fail(err)
	} else {
		ctx := context.Background()
		start := time.Now()
	loop:
		for {
			var committed int64
			for _, p := range sess.Client().CommittedOffsets()[*input] {
				committed += p.Offset
			}
			switch {
			case committed >= *want:
				break loop
			case time.Since(start).Seconds() >= *maxSeconds:
				sum.Exit = "max-seconds"
				break loop
			}
			pctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
			fetches := sess.PollRecords(pctx, *maxRecords)
			cancel()
			if fetches.IsClientClosed() {
				fail(kgo.ErrClientClosed)
				break
			}
			fetches.EachError(func(t string, p int32, err error) {
				if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
					fmt.Fprintf(os.Stderr, "[txn-copy franz-go] fetch error %s[%d]: %v\n", t, p, err)
				}
			})
			recs := fetches.Records()
			if len(recs) == 0 {
				continue
			}
			if err := sess.Begin(); err != nil {
				fail(err)
				break
			}
			for _, r := range recs {
				out := &kgo.Record{Topic: *output, Partition: r.Partition, Key: r.Key, Value: r.Value}
				sess.Produce(ctx, out, func(_ *kgo.Record, err error) {
					if err != nil {
						fmt.Fprintf(os.Stderr, "[txn-copy franz-go] produce failed (the transaction will abort): %v\n", err)
					}
				})
			}
			if *delayMs > 0 {
				time.Sleep(time.Duration(*delayMs) * time.Millisecond)
			}
			ok, err := sess.End(ctx, kgo.TryCommit)
			if err != nil {
				fail(err)
				break
			}
			if ok {
				sum.Transactions++
				sum.Copied += int64(len(recs))
				fmt.Fprintf(os.Stderr, "[txn-copy franz-go] committed transaction %d (%d records copied)\n", sum.Transactions, sum.Copied)
			} else {
				sum.Aborted++
				fmt.Fprintf(os.Stderr, "[txn-copy franz-go] transaction aborted; rewound to the committed offsets\n")
			}
		}
		sess.Close()
	}
	b, _ := json.Marshal(sum)
	fmt.Println(string(b))
	switch {
	case sum.ErrorClass != nil:
		return 2
	case sum.Exit == "max-seconds":
		return 3
	}
	return 0
}
