// forward-producer: the producer of bench/forward.py. One franz-go client
// (idempotent, acks=all, its defaults otherwise) writes --records records, or
// --rate records/s for --seconds, round-robin over --partitions partitions of
// --topic, and prints one JSON line: how many were acknowledged, how fast, and
// the send-to-ack latency percentiles.
//
// --dial-map HOST:PORT=HOST:PORT[,...] makes the client dial the right-hand
// address whenever it would dial the left-hand one. The benchmark's "direct"
// path uses it to reach the home region's brokers through wan-sim TCP
// proxies: the brokers advertise their own addresses, and only this client's
// connections cross the simulated WAN.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

type summary struct {
	Records       int            `json:"records"`
	Acked         int            `json:"acked"`
	Failed        int            `json:"failed"`
	FirstError    string         `json:"first_error,omitempty"`
	Seconds       float64        `json:"seconds"`
	MsgsPerSec    float64        `json:"msgs_per_sec"`
	LatencyMs     map[string]any `json:"latency_ms"`
	MeasuredAfter float64        `json:"measured_after_s"`
	Rate          float64        `json:"rate"`
}

func percentile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q * float64(len(sorted)-1))
	return sorted[i]
}

func main() {
	bootstrap := flag.String("bootstrap", "", "HOST:PORT[,...]")
	topic := flag.String("topic", "", "topic to write")
	partitions := flag.Int("partitions", 1, "partitions of the topic, written round-robin")
	records := flag.Int("records", 0, "records to write as fast as the client goes (max mode)")
	rate := flag.Float64("rate", 0, "records per second (rate mode; with --seconds)")
	seconds := flag.Float64("seconds", 0, "length of the rate mode")
	warmup := flag.Float64("warmup-seconds", 5, "rate mode: latencies of records sent before this are left out")
	size := flag.Int("record-size", 1024, "value bytes per record")
	linger := flag.Duration("linger", 5*time.Millisecond, "producer linger")
	dialMap := flag.String("dial-map", "", "FROM=TO[,...]: dial TO instead of FROM")
	timeout := flag.Duration("timeout", 300*time.Second, "give up after this long")
	inflight := flag.Int("inflight", 1, "produce requests in flight per broker; above 1 the client is not idempotent (franz-go allows one in flight for an idempotent producer)")
	flag.Parse()
	if *bootstrap == "" || *topic == "" || (*records <= 0) == (*rate <= 0 || *seconds <= 0) {
		fmt.Fprintln(os.Stderr, "usage: forward-producer --bootstrap B --topic T --partitions P (--records N | --rate R --seconds S) [--dial-map FROM=TO,...]")
		os.Exit(2)
	}
	redirect := map[string]string{}
	for _, kv := range strings.Split(*dialMap, ",") {
		if from, to, ok := strings.Cut(kv, "="); ok {
			redirect[from] = to
		}
	}
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	opts := []kgo.Opt{}
	if *inflight > 1 {
		opts = append(opts, kgo.DisableIdempotentWrite(), kgo.MaxProduceRequestsInflightPerBroker(*inflight))
	}
	cl, err := kgo.NewClient(append(opts,
		kgo.SeedBrokers(strings.Split(*bootstrap, ",")...),
		kgo.DefaultProduceTopic(*topic),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(*linger),
		kgo.ProducerBatchCompression(kgo.NoCompression()),
		kgo.Dialer(func(ctx context.Context, network, host string) (net.Conn, error) {
			if to, ok := redirect[host]; ok {
				host = to
			}
			return dialer.DialContext(ctx, network, host)
		}),
	)...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		os.Exit(1)
	}
	defer cl.Close()

	// Random A-Z values, as bench/dclink.py's producer sends: the dc-link
	// compresses forward frames, and a repeating pattern would flatter it.
	rng := rand.New(rand.NewPCG(1, 2))
	values := make([][]byte, 256)
	for v := range values {
		values[v] = make([]byte, *size)
		for i := range values[v] {
			values[v][i] = byte('A' + rng.IntN(26))
		}
	}
	n := *records
	if n == 0 {
		n = int(*rate * *seconds)
	}
	var mu sync.Mutex
	lat := make([]float64, 0, n)
	s := summary{Records: n, Rate: *rate}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var wg sync.WaitGroup
	start := time.Now()
	measureFrom := start
	if *rate > 0 {
		measureFrom = start.Add(time.Duration(*warmup * float64(time.Second)))
		s.MeasuredAfter = *warmup
	}
	for i := 0; i < n; i++ {
		if *rate > 0 {
			due := start.Add(time.Duration(float64(i) / *rate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
		}
		sent := time.Now()
		wg.Add(1)
		cl.Produce(ctx, &kgo.Record{Value: values[i%len(values)], Partition: int32(i % *partitions)}, func(r *kgo.Record, err error) {
			done := time.Now()
			mu.Lock()
			if err != nil {
				s.Failed++
				if s.FirstError == "" {
					s.FirstError = err.Error()
				}
			} else {
				s.Acked++
				if !sent.Before(measureFrom) {
					lat = append(lat, float64(done.Sub(sent).Microseconds())/1000)
				}
			}
			mu.Unlock()
			wg.Done()
		})
	}
	wg.Wait()
	s.Seconds = time.Since(start).Seconds()
	s.MsgsPerSec = float64(s.Acked) / s.Seconds
	sort.Float64s(lat)
	s.LatencyMs = map[string]any{"samples": len(lat), "p50": percentile(lat, 0.5), "p99": percentile(lat, 0.99),
		"max": percentile(lat, 1)}
	out, _ := json.Marshal(s)
	fmt.Println(string(out))
	if s.Failed > 0 {
		os.Exit(1)
	}
}
