// client-check (franz-go): produce N deterministic records to a Kafka-compatible
// broker, consume them back with manual partition assignment (no consumer group),
// and verify every field. See ../README.md for the contract shared with the
// Java program in ../java.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

const (
	maxErrors      = 20
	consumeTimeout = 120 * time.Second
)

// ---------------------------------------------------------------------------
// Deterministic record generator. MUST stay byte-for-byte identical to
// Gen.java in ../java (checked with --gen-digest).

const (
	golden   = 0x9E3779B97F4A7C15
	perIndex = 0xD1B54A32D192ED03
)

type rng struct{ s uint64 }

func newRng(seed int64, i int) *rng {
	return &rng{s: uint64(seed) ^ (uint64(i)+1)*perIndex}
}

func (r *rng) next() uint64 {
	r.s += golden
	z := r.s
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

func (r *rng) n(bound int) int { return int(r.next() % uint64(bound)) }

func (r *rng) fillRandom(b []byte) {
	for j := 0; j < len(b); j += 8 {
		v := r.next()
		for k := 0; k < 8 && j+k < len(b); k++ {
			b[j+k] = byte(v >> (8 * k))
		}
	}
}

var words = []string{
	"kafka", "chronik", "broker", "partition", "offset", "record", "batch",
	"leader", "replica", "segment", "index", "topic", "consumer", "producer",
	"compression", "zstd", "lz4", "snappy", "gzip", "header", "timestamp",
	"the", "a", "of", "and", "to", "in", "is", "0", "42", "1337", "\u00e9t\u00e9",
}

var headerKeys = []string{"trace-id", "content-type", "x-seq", "dup", "h", "", "k\u00f8y"}

const keyAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

type header struct {
	key   string
	value []byte // nil = null
}

type genRecord struct {
	key     []byte // nil = null
	value   []byte // nil = null
	headers []header
}

func genValue(r *rng, size int) []byte {
	v := make([]byte, size)
	switch r.n(3) {
	case 0:
		r.fillRandom(v)
	case 1:
		j := 0
		for j < size {
			w := words[r.n(len(words))]
			j += copy(v[j:], w)
			if j < size {
				v[j] = ' '
				j++
			}
		}
	default:
		b := r.n(256)
		for j := range v {
			v[j] = byte(b + j%17)
		}
	}
	return v
}

func gen(seed int64, i int) genRecord {
	r := newRng(seed, i)
	var g genRecord

	switch k := r.n(100); {
	case k < 5:
		g.key = nil
	case k < 7:
		g.key = []byte{}
	default:
		s := []byte("key-" + strconv.Itoa(i) + "-")
		extra := r.n(24)
		for j := 0; j < extra; j++ {
			s = append(s, keyAlphabet[r.n(len(keyAlphabet))])
		}
		g.key = s
	}

	switch v := r.n(1000); {
	case v < 10:
		g.value = nil
	case v < 40:
		g.value = []byte{}
	case v < 42:
		g.value = genValue(r, 96*1024+r.n(8*1024+1))
	case v < 100:
		g.value = genValue(r, 1024+r.n(9*1024+1))
	default:
		g.value = genValue(r, 10+r.n(191))
	}

	hc := r.n(4)
	for h := 0; h < hc; h++ {
		hk := headerKeys[r.n(len(headerKeys))]
		var hv []byte
		switch t := r.n(10); {
		case t < 2:
			hv = nil
		case t < 3:
			hv = []byte{}
		default:
			hv = make([]byte, r.n(65))
			r.fillRandom(hv)
		}
		g.headers = append(g.headers, header{hk, hv})
	}
	return g
}

func digestBytes(h interface{ Write([]byte) (int, error) }, b []byte, null bool) {
	var l [4]byte
	if null {
		binary.BigEndian.PutUint32(l[:], 0xFFFFFFFF)
		h.Write(l[:])
		return
	}
	binary.BigEndian.PutUint32(l[:], uint32(len(b)))
	h.Write(l[:])
	h.Write(b)
}

func genDigest(seed int64, n int) string {
	h := sha256.New()
	for i := 0; i < n; i++ {
		g := gen(seed, i)
		digestBytes(h, g.key, g.key == nil)
		digestBytes(h, g.value, g.value == nil)
		var c [4]byte
		binary.BigEndian.PutUint32(c[:], uint32(len(g.headers)))
		h.Write(c[:])
		for _, hd := range g.headers {
			digestBytes(h, []byte(hd.key), false)
			digestBytes(h, hd.value, hd.value == nil)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// ---------------------------------------------------------------------------

type errList struct {
	mu    sync.Mutex
	list  []string
	count int
}

func (e *errList) add(format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.count++
	if len(e.list) < maxErrors {
		e.list = append(e.list, fmt.Sprintf(format, args...))
	}
}

type summary struct {
	Client      string   `json:"client"`
	Produced    int      `json:"produced"`
	Consumed    int      `json:"consumed"`
	Errors      []string `json:"errors"`
	ErrorCount  int      `json:"error_count"`
	Topic       string   `json:"topic"`
	Partitions  int      `json:"partitions"`
	Compression string   `json:"compression"`
	Seed        int64    `json:"seed"`
	ProduceMs   int64    `json:"produce_ms"`
	ConsumeMs   int64    `json:"consume_ms"`
}

func compressionCodec(name string) (kgo.CompressionCodec, error) {
	switch name {
	case "none":
		return kgo.NoCompression(), nil
	case "gzip":
		return kgo.GzipCompression(), nil
	case "snappy":
		return kgo.SnappyCompression(), nil
	case "lz4":
		return kgo.Lz4Compression(), nil
	case "zstd":
		return kgo.ZstdCompression(), nil
	}
	return kgo.CompressionCodec{}, fmt.Errorf("unknown compression %q", name)
}

func nullStr(b []byte) string {
	if b == nil {
		return "null"
	}
	if len(b) > 32 {
		return fmt.Sprintf("%d bytes %x...", len(b), b[:32])
	}
	return fmt.Sprintf("%d bytes %x", len(b), b)
}

func sameNullable(a, b []byte) bool {
	return (a == nil) == (b == nil) && bytes.Equal(a, b)
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "group-consume" {
		os.Exit(groupConsume(os.Args[2:])) // group.go
	}
	if len(os.Args) > 1 && os.Args[1] == "txn-copy" {
		os.Exit(txnCopy(os.Args[2:])) // txn.go
	}
	os.Exit(run())
}

func run() int {
	var (
		bootstrap   = flag.String("bootstrap", "", "HOST:PORT[,HOST:PORT...]")
		topic       = flag.String("topic", "", "topic name")
		messages    = flag.Int("messages", -1, "number of messages")
		compression = flag.String("compression", "", "none|gzip|snappy|lz4|zstd")
		seed        = flag.Int64("seed", 1, "content seed")
		partitions  = flag.Int("partitions", 3, "partitions to create the topic with")
		digest      = flag.Bool("gen-digest", false, "only print the SHA-256 of the generated content and exit")
		verifySeed  = flag.Int64("verify-seed", 0, "self-test only: verify consumed records against this seed instead of --seed (must fail)")
	)
	sec := addSecurityFlags(flag.CommandLine)
	flag.Parse()

	sum := summary{Client: "franz-go", Errors: []string{}, Topic: *topic, Compression: *compression, Seed: *seed}
	errs := &errList{}
	finish := func() int {
		errs.mu.Lock()
		sum.Errors = append(sum.Errors, errs.list...)
		sum.ErrorCount = errs.count
		errs.mu.Unlock()
		out, _ := json.Marshal(sum)
		fmt.Println(string(out))
		if len(sum.Errors) == 0 && sum.Produced == *messages && sum.Consumed == *messages {
			return 0
		}
		return 1
	}

	if *digest {
		if *messages < 0 {
			fmt.Fprintln(os.Stderr, "--gen-digest needs --messages")
			return 1
		}
		fmt.Println(genDigest(*seed, *messages))
		return 0
	}

	codec, cerr := compressionCodec(*compression)
	switch {
	case *bootstrap == "" || *topic == "" || *messages < 0:
		errs.add("usage: --bootstrap HOST:PORT --topic T --messages N --compression none|gzip|snappy|lz4|zstd [--seed S] [--partitions P] " + securityUsage)
		return finish()
	case cerr != nil:
		errs.add("%v", cerr)
		return finish()
	case *partitions < 1:
		errs.add("--partitions must be >= 1")
		return finish()
	}
	secOpts, serr := sec.opts()
	if serr != nil {
		errs.add("usage: %v", serr)
		return finish()
	}
	n := *messages
	vseed := *seed
	flag.Visit(func(f *flag.Flag) {
		if f.Name == "verify-seed" {
			vseed = *verifySeed
		}
	})

	// Default metadata min age is 5s; after a NOT_LEADER retry on a brand-new
	// topic that would stall the producer for 5s. Be snappier.
	// secOpts: TLS / SASL (none for PLAINTEXT). A failed login is not retried: the
	// admin call below fails with it and the run ends.
	commonOpts := append([]kgo.Opt{kgo.MetadataMinAge(250 * time.Millisecond)}, secOpts...)
	if os.Getenv("CLIENT_CHECK_DEBUG") != "" {
		// Debug level logs every request as "wrote <Api> v<version>".
		commonOpts = append(commonOpts, kgo.WithLogger(kgo.BasicLogger(os.Stderr, kgo.LogLevelDebug, nil)))
	}

	// ---- admin: create topic, wait for leaders ---------------------------
	ctx := context.Background()
	seeds := strings.Split(*bootstrap, ",")
	adminCl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(seeds...)}, commonOpts...)...)
	if err != nil {
		errs.add("admin client: %v", err)
		return finish()
	}
	adm := kadm.NewClient(adminCl)
	defer adm.Close()

	actx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	res, err := adm.CreateTopic(actx, int32(*partitions), 1, nil, *topic)
	if err == nil {
		err = res.Err
	}
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		errs.add("create topic %s: %v", *topic, err)
		return finish()
	}
	nparts := -1
	for {
		md, err := adm.Metadata(actx, *topic)
		if err == nil {
			if td, ok := md.Topics[*topic]; ok && td.Err == nil && len(td.Partitions) > 0 {
				ready := true
				for _, p := range td.Partitions {
					if p.Err != nil || p.Leader < 0 {
						ready = false
					}
				}
				if ready {
					nparts = len(td.Partitions)
					break
				}
			}
		}
		if actx.Err() != nil {
			errs.add("topic %s not ready after 60s (last metadata error: %v)", *topic, err)
			return finish()
		}
		time.Sleep(100 * time.Millisecond)
	}
	if nparts != *partitions {
		fmt.Fprintf(os.Stderr, "note: topic %s has %d partitions (asked for %d); using %d\n", *topic, nparts, *partitions, nparts)
	}
	sum.Partitions = nparts
	P := nparts

	// Timestamps are base+i, all in the (recent) past.
	base := time.Now().UnixMilli() - int64(n) - 1000

	// ---- produce ----------------------------------------------------------
	acked := make([]int64, n)
	for i := range acked {
		acked[i] = -1
	}
	prodOpts := append([]kgo.Opt{
		kgo.SeedBrokers(seeds...),
		kgo.RequiredAcks(kgo.AllISRAcks()), // idempotence is on by default in franz-go
		kgo.ProducerBatchCompression(codec),
		kgo.ProducerLinger(5 * time.Millisecond),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.DefaultProduceTopic(*topic),
		kgo.ProducerBatchMaxBytes(1 << 20),
		kgo.MaxBufferedRecords(20000),
		kgo.RecordDeliveryTimeout(120 * time.Second),
	}, commonOpts...)
	prod, err := kgo.NewClient(prodOpts...)
	if err != nil {
		errs.add("producer client: %v", err)
		return finish()
	}
	var produced atomic.Int64
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := 0; i < n; i++ {
		g := gen(*seed, i)
		rec := &kgo.Record{
			Topic:     *topic,
			Partition: int32(i % P),
			Key:       g.key,
			Value:     g.value,
			Timestamp: time.UnixMilli(base + int64(i)),
		}
		for _, h := range g.headers {
			rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: h.key, Value: h.value})
		}
		idx := i
		wg.Add(1)
		prod.Produce(ctx, rec, func(r *kgo.Record, err error) {
			defer wg.Done()
			if err != nil {
				errs.add("produce record %d (partition %d): %v", idx, r.Partition, err)
				return
			}
			acked[idx] = r.Offset
			produced.Add(1)
		})
	}
	wg.Wait()
	prod.Close()
	sum.ProduceMs = time.Since(t0).Milliseconds()
	sum.Produced = int(produced.Load())

	// Acked offsets must be 0.. contiguous per partition (records i%P==p in i order).
	for i := 0; i < n; i++ {
		if acked[i] < 0 {
			continue
		}
		if want := int64(i / P); acked[i] != want {
			errs.add("acked offset: record %d partition %d got offset %d, want %d", i, i%P, acked[i], want)
		}
	}

	// ---- consume ----------------------------------------------------------
	expected := make([]int, P)
	for p := 0; p < P; p++ {
		if n > p {
			expected[p] = (n-1-p)/P + 1
		}
	}
	assign := map[int32]kgo.Offset{}
	for p := 0; p < P; p++ {
		assign[int32(p)] = kgo.NewOffset().AtStart()
	}
	consOpts := append([]kgo.Opt{
		kgo.SeedBrokers(seeds...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{*topic: assign}),
		kgo.FetchMaxBytes(64 << 20),
		kgo.FetchMaxPartitionBytes(8 << 20),
	}, commonOpts...)
	cons, err := kgo.NewClient(consOpts...)
	if err != nil {
		errs.add("consumer client: %v", err)
		return finish()
	}
	defer cons.Close()

	got := make([]int, P)
	consumed := 0
	remaining := 0
	for _, e := range expected {
		remaining += e
	}
	t1 := time.Now()
	cctx, ccancel := context.WithTimeout(ctx, consumeTimeout)
	defer ccancel()
	for remaining > 0 && cctx.Err() == nil {
		fetches := cons.PollFetches(cctx)
		fetches.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
				errs.add("fetch error %s[%d]: %v", t, p, err)
			}
		})
		fetches.EachRecord(func(r *kgo.Record) {
			consumed++
			p := int(r.Partition)
			if p < 0 || p >= P {
				errs.add("record from unexpected partition %d", p)
				return
			}
			k := got[p]
			got[p]++
			if k < expected[p] {
				remaining--
			}
			i := k*P + p
			if i >= n {
				errs.add("partition %d: extra record at offset %d (expected only %d records)", p, r.Offset, expected[p])
				return
			}
			verify(errs, vseed, i, k, base, acked[i], r)
		})
	}
	sum.ConsumeMs = time.Since(t1).Milliseconds()
	sum.Consumed = consumed
	if remaining > 0 {
		for p := 0; p < P; p++ {
			if got[p] < expected[p] {
				errs.add("timeout after %s: partition %d consumed %d of %d records", consumeTimeout, p, got[p], expected[p])
			}
		}
	}

	// ---- end offsets: no extra records ------------------------------------
	ectx, ecancel := context.WithTimeout(ctx, 30*time.Second)
	defer ecancel()
	ends, err := adm.ListEndOffsets(ectx, *topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		errs.add("list end offsets: %v", err)
	} else {
		for p := 0; p < P; p++ {
			o, ok := ends.Lookup(*topic, int32(p))
			if !ok {
				errs.add("list end offsets: partition %d missing", p)
			} else if o.Offset != int64(expected[p]) {
				errs.add("partition %d: log end offset %d, want %d", p, o.Offset, expected[p])
			}
		}
	}
	return finish()
}

func verify(errs *errList, seed int64, i, k int, base, ackedOff int64, r *kgo.Record) {
	p := r.Partition
	if r.Offset != int64(k) {
		errs.add("record %d partition %d: offset %d, want %d (contiguous from 0)", i, p, r.Offset, k)
	}
	if ackedOff >= 0 && r.Offset != ackedOff {
		errs.add("record %d partition %d: consumed offset %d != acked offset %d", i, p, r.Offset, ackedOff)
	}
	g := gen(seed, i)
	if !sameNullable(r.Key, g.key) {
		errs.add("record %d partition %d offset %d: key %s, want %s", i, p, r.Offset, nullStr(r.Key), nullStr(g.key))
	}
	if !sameNullable(r.Value, g.value) {
		errs.add("record %d partition %d offset %d: value %s, want %s", i, p, r.Offset, nullStr(r.Value), nullStr(g.value))
	}
	if ts := r.Timestamp.UnixMilli(); ts != base+int64(i) {
		errs.add("record %d partition %d offset %d: timestamp %d, want %d", i, p, r.Offset, ts, base+int64(i))
	}
	if r.Attrs.TimestampType() != 0 {
		errs.add("record %d partition %d offset %d: timestamp type %d, want 0 (CreateTime)", i, p, r.Offset, r.Attrs.TimestampType())
	}
	if len(r.Headers) != len(g.headers) {
		errs.add("record %d partition %d offset %d: %d headers, want %d", i, p, r.Offset, len(r.Headers), len(g.headers))
		return
	}
	for j, h := range r.Headers {
		if h.Key != g.headers[j].key || !sameNullable(h.Value, g.headers[j].value) {
			errs.add("record %d partition %d offset %d: header %d = (%q, %s), want (%q, %s)", i, p, r.Offset, j,
				h.Key, nullStr(h.Value), g.headers[j].key, nullStr(g.headers[j].value))
		}
	}
}
