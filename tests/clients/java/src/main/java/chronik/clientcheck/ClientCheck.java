package chronik.clientcheck;

import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.internals.RecordHeader;
import org.apache.kafka.common.record.TimestampType;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * client-check (Apache Kafka Java client): produce N deterministic records, consume them
 * back with manual assign() (no consumer group) and verify every field. See ../README.md.
 */
public final class ClientCheck {
    private static final int MAX_ERRORS = 20;
    private static final long CONSUME_TIMEOUT_MS = 120_000;

    // ---- error collection ----------------------------------------------------
    private final List<String> errors = new ArrayList<>();
    private int errorCount;

    private synchronized void err(String fmt, Object... args) {
        errorCount++;
        if (errors.size() < MAX_ERRORS) {
            errors.add(String.format(fmt, args));
        }
    }

    // ---- options / summary -----------------------------------------------------
    private String bootstrap;
    private String topic;
    private int messages = -1;
    private String compression;
    private long seed = 1;
    private int partitions = 3;
    private boolean genDigest;
    private Long verifySeed; // self-test only: verify against another seed (must fail)
    private final Security security = new Security();

    private int produced;
    private int consumed;
    private int actualPartitions;
    private long produceMs;
    private long consumeMs;

    public static void main(String[] args) {
        if (System.getenv("CLIENT_CHECK_DEBUG") != null) {
            // Logs "Recorded API versions for node ..." and every request header (apiVersion).
            System.setProperty("org.slf4j.simpleLogger.log.org.apache.kafka.clients.NetworkClient", "debug");
        }
        ClientCheck c = new ClientCheck();
        int rc;
        try {
            rc = c.run(args);
        } catch (Throwable t) {
            c.err("fatal: %s", t);
            rc = c.finish();
        }
        System.out.flush();
        // Exit explicitly: never wait on lingering client threads.
        System.exit(rc);
    }

    private static String need(String[] args, int i) {
        if (i + 1 >= args.length) {
            throw new IllegalArgumentException("missing value for " + args[i]);
        }
        return args[i + 1];
    }

    private boolean parse(String[] args) {
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            String v = null;
            int eq = a.indexOf('=');
            if (a.startsWith("--") && eq > 0) {
                v = a.substring(eq + 1);
                a = a.substring(0, eq);
            }
            if (a.equals("--gen-digest")) {
                genDigest = true;
                continue;
            }
            if (v == null) {
                v = need(args, i);
                i++;
            }
            switch (a) {
                case "--bootstrap": bootstrap = v; break;
                case "--topic": topic = v; break;
                case "--messages": messages = Integer.parseInt(v); break;
                case "--compression": compression = v; break;
                case "--seed": seed = Long.parseLong(v); break;
                case "--partitions": partitions = Integer.parseInt(v); break;
                case "--verify-seed": verifySeed = Long.parseLong(v); break;
                default:
                    if (!security.set(a, v)) {
                        throw new IllegalArgumentException("unknown argument " + a);
                    }
            }
        }
        return true;
    }

    private int finish() {
        List<String> errs;
        int count;
        synchronized (this) {
            errs = new ArrayList<>(errors);
            count = errorCount;
        }
        StringBuilder sb = new StringBuilder();
        sb.append("{\"client\":\"java\"");
        sb.append(",\"produced\":").append(produced);
        sb.append(",\"consumed\":").append(consumed);
        sb.append(",\"errors\":");
        Cli.json(sb, errs);
        sb.append(",\"error_count\":").append(count);
        sb.append(",\"topic\":");
        Cli.json(sb, topic == null ? "" : topic);
        sb.append(",\"partitions\":").append(actualPartitions);
        sb.append(",\"compression\":");
        Cli.json(sb, compression == null ? "" : compression);
        sb.append(",\"seed\":").append(seed);
        sb.append(",\"produce_ms\":").append(produceMs);
        sb.append(",\"consume_ms\":").append(consumeMs);
        sb.append('}');
        System.out.println(sb);
        return errs.isEmpty() && produced == messages && consumed == messages ? 0 : 1;
    }

    private static String show(byte[] b) {
        if (b == null) {
            return "null";
        }
        HexFormat hf = HexFormat.of();
        if (b.length > 32) {
            return b.length + " bytes " + hf.formatHex(b, 0, 32) + "...";
        }
        return b.length + " bytes " + hf.formatHex(b);
    }

    private static boolean sameNullable(byte[] a, byte[] b) {
        return (a == null) == (b == null) && Arrays.equals(a, b);
    }

    private static Throwable root(Throwable t) {
        while (t instanceof ExecutionException && t.getCause() != null) {
            t = t.getCause();
        }
        return t;
    }

    // ---- main flow -------------------------------------------------------------
    private int run(String[] args) throws Exception {
        try {
            parse(args);
            security.validate();
        } catch (IllegalArgumentException e) {
            err("usage: %s", e.getMessage());
            return finish();
        }
        if (genDigest) {
            if (messages < 0) {
                System.err.println("--gen-digest needs --messages");
                return 1;
            }
            System.out.println(Gen.digest(seed, messages));
            return 0;
        }
        if (bootstrap == null || topic == null || messages < 0 || compression == null) {
            err("usage: --bootstrap HOST:PORT --topic T --messages N --compression none|gzip|snappy|lz4|zstd [--seed S] [--partitions P] %s", Security.USAGE);
            return finish();
        }
        if (!List.of("none", "gzip", "snappy", "lz4", "zstd").contains(compression)) {
            err("unknown compression \"%s\"", compression);
            return finish();
        }
        if (partitions < 1) {
            err("--partitions must be >= 1");
            return finish();
        }

        // TLS / SASL configs (empty for PLAINTEXT), the same for every client below.
        Properties sec;
        try {
            sec = security.configs();
        } catch (java.io.IOException e) {
            err("security config: %s", e);
            return finish();
        }

        // ---- admin: create topic, wait for leaders --------------------------------
        // A failed login (SaslAuthenticationException, SslAuthenticationException) is not
        // retried: the admin call fails at once and the run ends with it in `errors`.
        Properties ap = new Properties();
        ap.putAll(sec);
        ap.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        ap.put(AdminClientConfig.CLIENT_ID_CONFIG, "client-check-java-admin");
        ap.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "60000");
        ap.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "30000");
        int P;
        try (Admin admin = Admin.create(ap)) {
            try {
                admin.createTopics(List.of(new NewTopic(topic, partitions, (short) 1))).all().get(60, TimeUnit.SECONDS);
            } catch (ExecutionException e) {
                if (!(root(e) instanceof TopicExistsException)) {
                    err("create topic %s: %s", topic, root(e));
                    return finish();
                }
            }
            long deadline = System.currentTimeMillis() + 60_000;
            P = -1;
            Throwable last = null;
            while (true) {
                try {
                    TopicDescription d = admin.describeTopics(List.of(topic)).allTopicNames()
                            .get(30, TimeUnit.SECONDS).get(topic);
                    boolean ready = d != null && !d.partitions().isEmpty();
                    if (ready) {
                        for (TopicPartitionInfo pi : d.partitions()) {
                            if (pi.leader() == null || pi.leader().isEmpty()) {
                                ready = false;
                            }
                        }
                    }
                    if (ready) {
                        P = d.partitions().size();
                        break;
                    }
                } catch (ExecutionException e) {
                    last = root(e);
                }
                if (System.currentTimeMillis() > deadline) {
                    err("topic %s not ready after 60s (last error: %s)", topic, last);
                    return finish();
                }
                Thread.sleep(100);
            }
        }
        if (P != partitions) {
            System.err.printf("note: topic %s has %d partitions (asked for %d); using %d%n", topic, P, partitions, P);
        }
        actualPartitions = P;
        final int n = messages;
        final long base = System.currentTimeMillis() - n - 1000; // timestamps base+i, all in the recent past

        // ---- produce -----------------------------------------------------------------
        final long[] acked = new long[n];
        Arrays.fill(acked, -1L);
        AtomicInteger okCount = new AtomicInteger();
        Properties pp = new Properties();
        pp.putAll(sec);
        pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        pp.put(ProducerConfig.CLIENT_ID_CONFIG, "client-check-java-producer");
        pp.put(ProducerConfig.ACKS_CONFIG, "all");
        pp.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        pp.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, compression);
        pp.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        pp.put(ProducerConfig.BATCH_SIZE_CONFIG, "65536");
        pp.put(ProducerConfig.BUFFER_MEMORY_CONFIG, String.valueOf(64L << 20));
        pp.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, "120000");
        pp.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        pp.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        long t0 = System.nanoTime();
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(pp)) {
            for (int i = 0; i < n; i++) {
                Gen.Rec g = Gen.gen(seed, i);
                List<Header> hs = new ArrayList<>(g.headers.size());
                for (Gen.Header h : g.headers) {
                    hs.add(new RecordHeader(h.key, h.value));
                }
                final int idx = i;
                final int part = i % P;
                ProducerRecord<byte[], byte[]> rec =
                        new ProducerRecord<>(topic, part, base + i, g.key, g.value, hs);
                try {
                    producer.send(rec, (md, e) -> {
                        if (e != null) {
                            err("produce record %d (partition %d): %s", idx, part, e);
                        } else {
                            acked[idx] = md.offset();
                            okCount.incrementAndGet();
                        }
                    });
                } catch (Exception e) {
                    err("produce record %d (partition %d): send threw %s", idx, part, e);
                }
            }
            producer.flush();
        } // close() joins the sender thread: acked[] is safely visible below.
        produceMs = (System.nanoTime() - t0) / 1_000_000;
        produced = okCount.get();

        for (int i = 0; i < n; i++) {
            if (acked[i] >= 0 && acked[i] != i / P) {
                err("acked offset: record %d partition %d got offset %d, want %d", i, i % P, acked[i], i / P);
            }
        }

        // ---- consume (manual assign, no group, no commits) ----------------------------
        int[] expected = new int[P];
        int remaining = 0;
        for (int p = 0; p < P; p++) {
            expected[p] = n > p ? (n - 1 - p) / P + 1 : 0;
            remaining += expected[p];
        }
        Properties cp = new Properties();
        cp.putAll(sec);
        cp.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        cp.put(ConsumerConfig.CLIENT_ID_CONFIG, "client-check-java-consumer");
        cp.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        cp.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        cp.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, "5000");
        cp.put(ConsumerConfig.FETCH_MAX_BYTES_CONFIG, String.valueOf(64 << 20));
        cp.put(ConsumerConfig.MAX_PARTITION_FETCH_BYTES_CONFIG, String.valueOf(8 << 20));
        cp.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        cp.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        int[] got = new int[P];
        List<TopicPartition> tps = new ArrayList<>();
        for (int p = 0; p < P; p++) {
            tps.add(new TopicPartition(topic, p));
        }
        long t1 = System.nanoTime();
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(cp)) {
            consumer.assign(tps);
            consumer.seekToBeginning(tps);
            long deadline = System.currentTimeMillis() + CONSUME_TIMEOUT_MS;
            while (remaining > 0 && System.currentTimeMillis() < deadline) {
                ConsumerRecords<byte[], byte[]> recs = consumer.poll(Duration.ofMillis(500));
                for (ConsumerRecord<byte[], byte[]> r : recs) {
                    consumed++;
                    int p = r.partition();
                    if (p < 0 || p >= P) {
                        err("record from unexpected partition %d", p);
                        continue;
                    }
                    int k = got[p]++;
                    if (k < expected[p]) {
                        remaining--;
                    }
                    long i = (long) k * P + p;
                    if (i >= n) {
                        err("partition %d: extra record at offset %d (expected only %d records)", p, r.offset(), expected[p]);
                        continue;
                    }
                    verify((int) i, k, base, acked[(int) i], r);
                }
            }
            consumeMs = (System.nanoTime() - t1) / 1_000_000;
            if (remaining > 0) {
                for (int p = 0; p < P; p++) {
                    if (got[p] < expected[p]) {
                        err("timeout after %ds: partition %d consumed %d of %d records",
                                CONSUME_TIMEOUT_MS / 1000, p, got[p], expected[p]);
                    }
                }
            }

            // ---- end offsets: no extra records ----------------------------------------
            try {
                Map<TopicPartition, Long> ends = new HashMap<>(consumer.endOffsets(tps, Duration.ofSeconds(30)));
                for (int p = 0; p < P; p++) {
                    Long o = ends.get(tps.get(p));
                    if (o == null) {
                        err("end offsets: partition %d missing", p);
                    } else if (o != expected[p]) {
                        err("partition %d: log end offset %d, want %d", p, o, expected[p]);
                    }
                }
            } catch (Exception e) {
                err("end offsets: %s", e);
            }
        }
        return finish();
    }

    private void verify(int i, int k, long base, long ackedOff, ConsumerRecord<byte[], byte[]> r) {
        int p = r.partition();
        long off = r.offset();
        if (off != k) {
            err("record %d partition %d: offset %d, want %d (contiguous from 0)", i, p, off, k);
        }
        if (ackedOff >= 0 && off != ackedOff) {
            err("record %d partition %d: consumed offset %d != acked offset %d", i, p, off, ackedOff);
        }
        Gen.Rec g = Gen.gen(verifySeed != null ? verifySeed : seed, i);
        if (!sameNullable(r.key(), g.key)) {
            err("record %d partition %d offset %d: key %s, want %s", i, p, off, show(r.key()), show(g.key));
        }
        if (!sameNullable(r.value(), g.value)) {
            err("record %d partition %d offset %d: value %s, want %s", i, p, off, show(r.value()), show(g.value));
        }
        if (r.timestamp() != base + i) {
            err("record %d partition %d offset %d: timestamp %d, want %d", i, p, off, r.timestamp(), base + i);
        }
        if (r.timestampType() != TimestampType.CREATE_TIME) {
            err("record %d partition %d offset %d: timestamp type %s, want CreateTime", i, p, off, r.timestampType());
        }
        Header[] hs = r.headers().toArray();
        if (hs.length != g.headers.size()) {
            err("record %d partition %d offset %d: %d headers, want %d", i, p, off, hs.length, g.headers.size());
            return;
        }
        for (int j = 0; j < hs.length; j++) {
            Gen.Header w = g.headers.get(j);
            if (!hs[j].key().equals(w.key) || !sameNullable(hs[j].value(), w.value)) {
                err("record %d partition %d offset %d: header %d = (\"%s\", %s), want (\"%s\", %s)",
                        i, p, off, j, hs[j].key(), show(hs[j].value()), w.key, show(w.value));
            }
        }
    }
}
