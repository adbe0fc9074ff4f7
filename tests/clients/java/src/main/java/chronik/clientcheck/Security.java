package chronik.clientcheck;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Properties;

/**
 * The security flags shared by the client-check programs (see ../README.md, "Security"):
 * <pre>
 *   --security-protocol PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL   (default PLAINTEXT)
 *   --sasl-mechanism PLAIN|SCRAM-SHA-256|SCRAM-SHA-512 --sasl-username U --sasl-password P
 *   --ssl-ca FILE  --ssl-cert FILE --ssl-key FILE
 * </pre>
 * mapped to kafka-clients configs. Hostname verification stays on (the client default,
 * ssl.endpoint.identification.algorithm=https).
 */
final class Security {
    static final String USAGE = "[--security-protocol PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL] "
            + "[--sasl-mechanism PLAIN|SCRAM-SHA-256|SCRAM-SHA-512 --sasl-username U --sasl-password P] "
            + "[--ssl-ca FILE] [--ssl-cert FILE --ssl-key FILE]";
    private static final List<String> PROTOCOLS = List.of("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL");
    private static final List<String> MECHANISMS = List.of("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512");

    String protocol = "PLAINTEXT";
    String mechanism;
    String username;
    String password;
    String ca;
    String cert;
    String key;

    /** Takes the option if it is one of the security flags; false otherwise. */
    boolean set(String name, String value) {
        switch (name) {
            case "--security-protocol": protocol = value; return true;
            case "--sasl-mechanism": mechanism = value; return true;
            case "--sasl-username": username = value; return true;
            case "--sasl-password": password = value; return true;
            case "--ssl-ca": ca = value; return true;
            case "--ssl-cert": cert = value; return true;
            case "--ssl-key": key = value; return true;
            default: return false;
        }
    }

    boolean sasl() {
        return protocol.startsWith("SASL_");
    }

    boolean tls() {
        return protocol.equals("SSL") || protocol.equals("SASL_SSL");
    }

    /** An IllegalArgumentException for an inconsistent combination of flags. */
    void validate() {
        if (!PROTOCOLS.contains(protocol)) {
            throw new IllegalArgumentException("unknown --security-protocol \"" + protocol + "\" (" + String.join("|", PROTOCOLS) + ")");
        }
        if (sasl()) {
            if (mechanism == null || username == null || password == null) {
                throw new IllegalArgumentException(protocol + " needs --sasl-mechanism, --sasl-username and --sasl-password");
            }
            if (!MECHANISMS.contains(mechanism)) {
                throw new IllegalArgumentException("unknown --sasl-mechanism \"" + mechanism + "\" (" + String.join("|", MECHANISMS) + ")");
            }
        } else if (mechanism != null || username != null || password != null) {
            throw new IllegalArgumentException("--sasl-* flags need --security-protocol SASL_PLAINTEXT or SASL_SSL");
        }
        if (!tls() && (ca != null || cert != null || key != null)) {
            throw new IllegalArgumentException("--ssl-* flags need --security-protocol SSL or SASL_SSL");
        }
        if ((cert == null) != (key == null)) {
            throw new IllegalArgumentException("--ssl-cert and --ssl-key go together");
        }
        for (String f : new String[] {ca, cert, key}) {
            if (f != null && !Files.isReadable(Path.of(f))) {
                throw new IllegalArgumentException("cannot read " + f);
            }
        }
    }

    private static String jaasQuote(String s) {
        return "\"" + s.replace("\\", "\\\\").replace("\"", "\\\"") + "\"";
    }

    /** The kafka-clients configs for these flags (empty for PLAINTEXT). */
    Properties configs() throws IOException {
        Properties p = new Properties();
        if (protocol.equals("PLAINTEXT")) {
            return p;
        }
        p.put("security.protocol", protocol);
        if (sasl()) {
            String module = mechanism.equals("PLAIN")
                    ? "org.apache.kafka.common.security.plain.PlainLoginModule"
                    : "org.apache.kafka.common.security.scram.ScramLoginModule";
            p.put("sasl.mechanism", mechanism);
            p.put("sasl.jaas.config", module + " required username=" + jaasQuote(username)
                    + " password=" + jaasQuote(password) + ";");
        }
        if (tls()) {
            if (ca != null) {
                p.put("ssl.truststore.type", "PEM");
                p.put("ssl.truststore.location", ca);
            }
            if (cert != null) {
                // Kafka's PEM key store is one file: the PKCS#8 key, then the certificate chain.
                Path ks = Files.createTempFile("client-check-keystore-", ".pem"); // mode 0600
                ks.toFile().deleteOnExit();
                String pem = Files.readString(Path.of(key), StandardCharsets.US_ASCII).strip() + "\n"
                        + Files.readString(Path.of(cert), StandardCharsets.US_ASCII).strip() + "\n";
                Files.writeString(ks, pem, StandardCharsets.US_ASCII);
                p.put("ssl.keystore.type", "PEM");
                p.put("ssl.keystore.location", ks.toString());
            }
        }
        return p;
    }
}
