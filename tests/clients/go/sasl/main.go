// sasl-produce (franz-go) for tests/test_security.py: logs in over TLS and/or
// SASL, produces N records to partition 0 with acks=all and prints one JSON
// line with the acked offsets. Exit 0 on success, 1 with {"ok":false,"error":...}
// on any failure, authentication included.
//
//	sasl-produce --bootstrap H:P --topic T --messages N --mechanism SCRAM-SHA-512
//	             --username U --password P [--ca FILE]
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

func fail(err error) {
	out, _ := json.Marshal(map[string]any{"ok": false, "error": err.Error()})
	fmt.Println(string(out))
	os.Exit(1)
}

func main() {
	bootstrap := flag.String("bootstrap", "", "HOST:PORT")
	topic := flag.String("topic", "", "topic")
	n := flag.Int("messages", 10, "records")
	mechanism := flag.String("mechanism", "SCRAM-SHA-512", "PLAIN|SCRAM-SHA-256|SCRAM-SHA-512")
	user := flag.String("username", "", "user")
	password := flag.String("password", "", "password")
	ca := flag.String("ca", "", "PEM CA to trust (enables TLS)")
	flag.Parse()

	var m sasl.Mechanism
	switch *mechanism {
	case "PLAIN":
		m = plain.Auth{User: *user, Pass: *password}.AsMechanism()
	case "SCRAM-SHA-256":
		m = scram.Auth{User: *user, Pass: *password}.AsSha256Mechanism()
	case "SCRAM-SHA-512":
		m = scram.Auth{User: *user, Pass: *password}.AsSha512Mechanism()
	default:
		fail(fmt.Errorf("unknown mechanism %q", *mechanism))
	}
	opts := []kgo.Opt{kgo.SeedBrokers(*bootstrap), kgo.SASL(m), kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.AllowAutoTopicCreation(), kgo.RecordRetries(2), kgo.RetryTimeout(15 * time.Second)}
	if *ca != "" {
		pem, err := os.ReadFile(*ca)
		if err != nil {
			fail(err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			fail(fmt.Errorf("no certificate in %s", *ca))
		}
		opts = append(opts, kgo.DialTLSConfig(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		fail(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	offsets := make([]int64, 0, *n)
	for i := 0; i < *n; i++ {
		r := &kgo.Record{Topic: *topic, Partition: 0, Value: []byte(fmt.Sprintf("%s-%d", *topic, i))}
		res := cl.ProduceSync(ctx, r)
		if err := res.FirstErr(); err != nil {
			fail(err)
		}
		offsets = append(offsets, res[0].Record.Offset)
	}
	out, _ := json.Marshal(map[string]any{"ok": true, "offsets": offsets})
	fmt.Println(string(out))
}
