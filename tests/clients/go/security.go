// The security flags shared by the client-check programs (../README.md, "Security"):
//
//	--security-protocol PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL   (default PLAINTEXT)
//	--sasl-mechanism PLAIN|SCRAM-SHA-256|SCRAM-SHA-512 --sasl-username U --sasl-password P
//	--ssl-ca FILE  --ssl-cert FILE --ssl-key FILE
//
// mapped to kgo.DialTLSConfig (crypto/tls; kgo sets ServerName to the broker's host,
// so the certificate is verified against it) and kgo.SASL (franz-go's plain and scram).
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"os"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

const securityUsage = "[--security-protocol PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL] " +
	"[--sasl-mechanism PLAIN|SCRAM-SHA-256|SCRAM-SHA-512 --sasl-username U --sasl-password P] " +
	"[--ssl-ca FILE] [--ssl-cert FILE --ssl-key FILE]"

type securityFlags struct {
	protocol, mechanism, username, password, ca, cert, key *string
}

// addSecurityFlags registers the security flags on fs.
func addSecurityFlags(fs *flag.FlagSet) *securityFlags {
	return &securityFlags{
		protocol:  fs.String("security-protocol", "PLAINTEXT", "PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL"),
		mechanism: fs.String("sasl-mechanism", "", "PLAIN|SCRAM-SHA-256|SCRAM-SHA-512"),
		username:  fs.String("sasl-username", "", "SASL user"),
		password:  fs.String("sasl-password", "", "SASL password"),
		ca:        fs.String("ssl-ca", "", "PEM CA bundle to trust (default: the system roots)"),
		cert:      fs.String("ssl-cert", "", "PEM client certificate (mutual TLS; with --ssl-key)"),
		key:       fs.String("ssl-key", "", "PEM (PKCS#8) client key (with --ssl-cert)"),
	}
}

// opts returns the kgo options for the flags (none for PLAINTEXT), or an error for an
// inconsistent combination or an unreadable file.
func (s *securityFlags) opts() ([]kgo.Opt, error) {
	proto := *s.protocol
	isSASL := proto == "SASL_PLAINTEXT" || proto == "SASL_SSL"
	isTLS := proto == "SSL" || proto == "SASL_SSL"
	switch {
	case proto != "PLAINTEXT" && !isSASL && !isTLS:
		return nil, fmt.Errorf("unknown --security-protocol %q (PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL)", proto)
	case isSASL && (*s.mechanism == "" || *s.username == "" || *s.password == ""):
		return nil, fmt.Errorf("%s needs --sasl-mechanism, --sasl-username and --sasl-password", proto)
	case !isSASL && (*s.mechanism != "" || *s.username != "" || *s.password != ""):
		return nil, fmt.Errorf("--sasl-* flags need --security-protocol SASL_PLAINTEXT or SASL_SSL")
	case !isTLS && (*s.ca != "" || *s.cert != "" || *s.key != ""):
		return nil, fmt.Errorf("--ssl-* flags need --security-protocol SSL or SASL_SSL")
	case (*s.cert == "") != (*s.key == ""):
		return nil, fmt.Errorf("--ssl-cert and --ssl-key go together")
	}
	var opts []kgo.Opt
	if isTLS {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if *s.ca != "" {
			pem, err := os.ReadFile(*s.ca)
			if err != nil {
				return nil, err
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("no PEM certificate in %s", *s.ca)
			}
			cfg.RootCAs = pool
		}
		if *s.cert != "" {
			pair, err := tls.LoadX509KeyPair(*s.cert, *s.key)
			if err != nil {
				return nil, fmt.Errorf("client certificate: %w", err)
			}
			cfg.Certificates = []tls.Certificate{pair}
		}
		opts = append(opts, kgo.DialTLSConfig(cfg))
	}
	if isSASL {
		var m sasl.Mechanism
		switch *s.mechanism {
		case "PLAIN":
			m = plain.Auth{User: *s.username, Pass: *s.password}.AsMechanism()
		case "SCRAM-SHA-256":
			m = scram.Auth{User: *s.username, Pass: *s.password}.AsSha256Mechanism()
		case "SCRAM-SHA-512":
			m = scram.Auth{User: *s.username, Pass: *s.password}.AsSha512Mechanism()
		default:
			return nil, fmt.Errorf("unknown --sasl-mechanism %q (PLAIN|SCRAM-SHA-256|SCRAM-SHA-512)", *s.mechanism)
		}
		opts = append(opts, kgo.SASL(m))
	}
	return opts, nil
}

// secure reports whether TLS or SASL is on.
func (s *securityFlags) secure() bool { return *s.protocol != "PLAINTEXT" }
