package chronik.clientcheck;

import java.io.BufferedWriter;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStreamWriter;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * idempotent-produce (Apache Kafka Java client 4.1.1): send N sequence-numbered records to one
 * partition at a steady rate with the idempotent producer (enable.idempotence=true, acks=all,
 * max.in.flight.requests.per.connection=5, retries unbounded, delivery.timeout.ms 120 s) and log
 * the outcome of every record. Used by tests/test_java_idempotence.py while the partition
 * leader is killed.
 *
 *   java -cp client-check.jar chronik.clientcheck.IdempotentProduce --bootstrap H:P[,H:P...]
 *        --topic T --tag TAG --out FILE [--partition 0] [--messages 6000] [--rate 300]
 *        [--value-size 64] [--delivery-timeout-ms 120000] [--request-timeout-ms 5000]
 *        [--max-seconds 240]
 *
 * Record seq (0..N-1) has no key and the value "TAG:PARTITION:SEQ(%08d):" padded with '.' to
 * value-size bytes: the format of tests/ackcheck.py make_value, so the Python helpers
 * (verify_partition, parse_value) check the log.
 *
 * FILE gets one JSON object per line, written and flushed as each outcome arrives:
 *   {"seq":S,"offset":O,"partition":P,"t":ACK_EPOCH_S,"sent":SEND_EPOCH_S}   acknowledged
 *       (offset -1 if the client got no offset)
 *   {"seq":S,"error":"Class: message","t":EPOCH_S,"sent":SEND_EPOCH_S}   failed (callback or send())
 * Times are epoch seconds (comparable with Python's time.time()).
 *
 * One JSON summary line on stdout: {"client":"java-idempotent","produced":N_SENT,"acked":A,
 * "failed":F,"unresolved":U,"errors":[...],"error_count":F,...}. Exit 0 only if every one of
 * the N records was acknowledged; 2 if some failed or stayed unresolved, 3 on --max-seconds,
 * 1 on bad arguments.
 */
public final class IdempotentProduce {
    private static final int MAX_ERRORS_SHOWN = 20;

    private String bootstrap;
    private String topic;
    private String tag;
    private String out;
    private int partition = 0;
    private int messages = 6000;
    private double rate = 300;
    private int valueSize = 64;
    private int deliveryTimeoutMs = 120_000;
    private int requestTimeoutMs = 5000;
    private long maxSeconds = 240;

    private BufferedWriter writer;
    private final AtomicLong acked = new AtomicLong();
    private final AtomicLong failed = new AtomicLong();
    private long produced;
    private long produceMs;
    private final List<String> errors = new ArrayList<>();
    private final CountDownLatch done = new CountDownLatch(1);

    public static void main(String[] args) {
        IdempotentProduce p = new IdempotentProduce();
        int rc;
        try {
            p.parse(args);
        } catch (IllegalArgumentException e) {
            System.err.println("idempotent-produce: " + e.getMessage());
            System.exit(1);
            return;
        }
        Thread watchdog = new Thread(() -> {
            try {
                if (!p.done.await(p.maxSeconds, TimeUnit.SECONDS)) {
                    p.error(-1, "timeout: not finished after --max-seconds " + p.maxSeconds);
                    System.out.println(p.summary());
                    System.out.flush();
                    Runtime.getRuntime().halt(3);
                }
            } catch (InterruptedException ignored) {
                // main finished
            }
        }, "idempotent-produce-watchdog");
        watchdog.setDaemon(true);
        watchdog.start();
        try {
            rc = p.run();
        } catch (Throwable t) {
            t.printStackTrace();
            p.error(-1, "fatal: " + describe(t));
            rc = 2;
        }
        p.done.countDown();
        System.out.println(p.summary());
        System.out.flush();
        System.exit(rc);
    }

    private void parse(String[] args) {
        Cli.options(args, (a, v) -> {
            switch (a) {
                case "--bootstrap": bootstrap = v; break;
                case "--topic": topic = v; break;
                case "--tag": tag = v; break;
                case "--out": out = v; break;
                case "--partition": partition = Integer.parseInt(v); break;
                case "--messages": messages = Integer.parseInt(v); break;
                case "--rate": rate = Double.parseDouble(v); break;
                case "--value-size": valueSize = Integer.parseInt(v); break;
                case "--delivery-timeout-ms": deliveryTimeoutMs = Integer.parseInt(v); break;
                case "--request-timeout-ms": requestTimeoutMs = Integer.parseInt(v); break;
                case "--max-seconds": maxSeconds = Long.parseLong(v); break;
                default: throw new IllegalArgumentException("unknown argument " + a);
            }
        });
        if (bootstrap == null || topic == null || tag == null || out == null) {
            throw new IllegalArgumentException("--bootstrap, --topic, --tag and --out are required");
        }
        if (messages < 0 || rate <= 0 || tag.contains(":")) {
            throw new IllegalArgumentException("need --messages >= 0, --rate > 0 and a --tag without ':'");
        }
    }

    /** The value of record seq: tests/ackcheck.py make_value(tag, partition, seq). */
    static byte[] value(String tag, int partition, long seq, int size) {
        StringBuilder sb = new StringBuilder(String.format("%s:%d:%08d:", tag, partition, seq));
        while (sb.length() < size) {
            sb.append('.');
        }
        return sb.toString().getBytes(StandardCharsets.UTF_8);
    }

    private static String now() {
        Instant t = Instant.now();
        return String.format("%d.%06d", t.getEpochSecond(), t.getNano() / 1000);
    }

    private static String describe(Throwable t) {
        return t.getClass().getName() + ": " + t.getMessage();
    }

    private synchronized void line(String s) {
        try {
            writer.write(s);
            writer.write('\n');
            writer.flush();
        } catch (IOException e) {
            throw new RuntimeException("writing " + out, e);
        }
    }

    private synchronized void error(long seq, String msg) {
        if (errors.size() < MAX_ERRORS_SHOWN) {
            errors.add(seq >= 0 ? "seq " + seq + ": " + msg : msg);
        }
    }

    /** Counts record seq as failed and logs its outcome line. */
    private void failure(long seq, String msg, String t, String sent) {
        failed.incrementAndGet();
        error(seq, msg);
        StringBuilder sb = new StringBuilder();
        sb.append("{\"seq\":").append(seq).append(",\"error\":");
        Cli.json(sb, msg);
        sb.append(",\"t\":").append(t).append(",\"sent\":").append(sent).append('}');
        line(sb.toString());
    }

    private int run() throws IOException {
        writer = new BufferedWriter(new OutputStreamWriter(new FileOutputStream(out, true), StandardCharsets.UTF_8));
        Properties pp = new Properties();
        pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        pp.put(ProducerConfig.CLIENT_ID_CONFIG, "idempotent-produce-java-" + ProcessHandle.current().pid());
        pp.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        pp.put(ProducerConfig.ACKS_CONFIG, "all");
        pp.put(ProducerConfig.MAX_IN_FLIGHT_REQUESTS_PER_CONNECTION, "5");
        pp.put(ProducerConfig.RETRIES_CONFIG, String.valueOf(Integer.MAX_VALUE));
        pp.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, String.valueOf(deliveryTimeoutMs));
        pp.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, String.valueOf(requestTimeoutMs));
        pp.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        // Uncompressed: the test compares replica log dumps record by record.
        pp.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, "none");
        pp.put(ProducerConfig.RETRY_BACKOFF_MS_CONFIG, "50");
        pp.put(ProducerConfig.RETRY_BACKOFF_MAX_MS_CONFIG, "500");
        pp.put(ProducerConfig.RECONNECT_BACKOFF_MS_CONFIG, "50");
        pp.put(ProducerConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "500");
        pp.put(ProducerConfig.SOCKET_CONNECTION_SETUP_TIMEOUT_MS_CONFIG, "3000");
        pp.put(ProducerConfig.SOCKET_CONNECTION_SETUP_TIMEOUT_MAX_MS_CONFIG, "3000");
        pp.put(ProducerConfig.METADATA_MAX_AGE_CONFIG, "5000");
        pp.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, "60000");
        pp.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        pp.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());

        long t0 = System.nanoTime();
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(pp)) {
            for (long seq = 0; seq < messages; seq++) {
                long due = t0 + (long) (seq * 1e9 / rate);
                long wait = due - System.nanoTime();
                if (wait > 0) {
                    try {
                        TimeUnit.NANOSECONDS.sleep(wait);
                    } catch (InterruptedException e) {
                        Thread.currentThread().interrupt();
                        error(seq, "interrupted");
                        break;
                    }
                }
                final long s = seq;
                final String sent = now();
                ProducerRecord<byte[], byte[]> rec =
                        new ProducerRecord<>(topic, partition, null, value(tag, partition, seq, valueSize));
                try {
                    producer.send(rec, (md, exc) -> {
                        String t = now();
                        if (exc != null) {
                            failure(s, describe(exc), t, sent);
                        } else {
                            acked.incrementAndGet();
                            long off = md.hasOffset() ? md.offset() : -1;
                            line("{\"seq\":" + s + ",\"offset\":" + off + ",\"partition\":" + md.partition()
                                    + ",\"t\":" + t + ",\"sent\":" + sent + "}");
                        }
                    });
                    produced++;
                } catch (RuntimeException e) {
                    // send() itself refused (e.g. the producer hit a fatal idempotence error):
                    // every later send would fail the same way.
                    failure(seq, "send(): " + describe(e), now(), sent);
                    break;
                }
            }
            // Bounded by delivery.timeout.ms: every record is acked or failed by then.
            producer.flush();
            produceMs = (System.nanoTime() - t0) / 1_000_000;
            producer.close(Duration.ofSeconds(10));
        } finally {
            synchronized (this) {
                writer.close();
            }
        }
        return acked.get() == messages && failed.get() == 0 ? 0 : 2;
    }

    private synchronized String summary() {
        long a = acked.get();
        long f = failed.get();
        StringBuilder sb = new StringBuilder();
        sb.append("{\"client\":\"java-idempotent\"");
        sb.append(",\"messages\":").append(messages);
        sb.append(",\"produced\":").append(produced);
        sb.append(",\"acked\":").append(a);
        sb.append(",\"failed\":").append(f);
        sb.append(",\"unresolved\":").append(Math.max(0, messages - a - f));
        sb.append(",\"errors\":");
        Cli.json(sb, errors);
        sb.append(",\"error_count\":").append(f);
        sb.append(",\"topic\":");
        Cli.json(sb, topic);
        sb.append(",\"partition\":").append(partition);
        sb.append(",\"tag\":");
        Cli.json(sb, tag);
        sb.append(",\"produce_ms\":").append(produceMs);
        sb.append('}');
        return sb.toString();
    }
}
