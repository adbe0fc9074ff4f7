package chronik.clientcheck;

import java.io.BufferedWriter;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStreamWriter;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Collection;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeSet;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRebalanceListener;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.CooperativeStickyAssignor;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.consumer.RangeAssignor;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.WakeupException;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * group-consume (Apache Kafka Java client): consume a topic as a member of a consumer
 * group, log every processed record and every rebalance, commit synchronously after each
 * poll batch. The interface, shared with the Go, Python and kafkajs
 * programs, is described in tests/test_group_clients.py.
 *
 *   java -cp client-check.jar chronik.clientcheck.GroupConsume --bootstrap H:P --topic T --group G
 *        --out FILE [--max-seconds S] [--idle-exit-ms N] [--assignor range|cooperative-sticky]
 *        [--instance-id ID] [--group-protocol classic|consumer] [--session-timeout-ms N]
 *        [--heartbeat-interval-ms N] [--max-poll-records N] [--commit-delay-ms N]
 *
 * FILE gets "partition offset value" per processed record (flushed per batch);
 * FILE.rebalance gets "epoch_ms event partitions [detail]" lines. One JSON summary line on
 * stdout. Exit 0 on SIGTERM, idle exit or max-seconds; 2 if the consumer failed (the
 * summary names the exception class and message); 1 on bad arguments.
 * --commit-delay-ms sleeps between writing a batch and committing it (simulated processing
 * time, so that a kill -9 likely hits processed-but-uncommitted records).
 */
public final class GroupConsume {
    private String bootstrap;
    private String topic;
    private String group;
    private String out;
    private long maxSeconds = 120;
    private long idleExitMs = 0;
    private String assignor = "range";
    private String instanceId;
    private String groupProtocol = "classic";
    private int sessionTimeoutMs = 6000;
    private int heartbeatIntervalMs = 1000;
    private int maxPollRecords = 500;
    private long commitDelayMs = 0;

    private long consumed;
    private long batches;
    private long commits;
    private long commitFailures;
    private String exitReason = "";
    private String errorClass;
    private String errorMessage;

    private BufferedWriter records;
    private BufferedWriter events;

    private volatile boolean stopping;
    private volatile boolean signalled;
    private final CountDownLatch finished = new CountDownLatch(1);
    private volatile int exitCode = 0;
    private volatile KafkaConsumer<byte[], byte[]> consumer;

    public static void main(String[] args) {
        GroupConsume g = new GroupConsume();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            // SIGTERM: stop the poll loop, let it commit and close (LeaveGroup), then exit 0.
            g.signalled = true;
            g.stopping = true;
            KafkaConsumer<byte[], byte[]> c = g.consumer;
            if (c != null) {
                c.wakeup();
            }
            try {
                g.finished.await(60, TimeUnit.SECONDS);
            } catch (InterruptedException ignored) {
                // exit anyway
            }
            System.out.flush();
            Runtime.getRuntime().halt(g.exitCode);
        }, "group-consume-shutdown"));
        int rc;
        try {
            rc = g.run(args);
        } catch (IllegalArgumentException e) {
            System.err.println("group-consume: " + e.getMessage());
            rc = 1;
        } catch (Throwable t) {
            t.printStackTrace();
            rc = 2;
        }
        g.exitCode = rc;
        g.finished.countDown();
        if (!g.signalled) {
            System.out.flush();
            System.exit(rc);
        }
    }

    private void parse(String[] args) {
        Cli.options(args, (a, v) -> {
            switch (a) {
                case "--bootstrap": bootstrap = v; break;
                case "--topic": topic = v; break;
                case "--group": group = v; break;
                case "--out": out = v; break;
                case "--max-seconds": maxSeconds = Long.parseLong(v); break;
                case "--idle-exit-ms": idleExitMs = Long.parseLong(v); break;
                case "--assignor": assignor = v; break;
                case "--instance-id": instanceId = v; break;
                case "--group-protocol": groupProtocol = v; break;
                case "--session-timeout-ms": sessionTimeoutMs = Integer.parseInt(v); break;
                case "--heartbeat-interval-ms": heartbeatIntervalMs = Integer.parseInt(v); break;
                case "--max-poll-records": maxPollRecords = Integer.parseInt(v); break;
                case "--commit-delay-ms": commitDelayMs = Long.parseLong(v); break;
                default: throw new IllegalArgumentException("unknown argument " + a);
            }
        });
        if (bootstrap == null || topic == null || group == null || out == null) {
            throw new IllegalArgumentException("usage: --bootstrap H:P --topic T --group G --out FILE [--max-seconds S] "
                    + "[--idle-exit-ms N] [--assignor range|cooperative-sticky] [--instance-id ID] "
                    + "[--group-protocol classic|consumer]");
        }
        if (!assignor.equals("range") && !assignor.equals("cooperative-sticky")) {
            throw new IllegalArgumentException("--assignor must be range or cooperative-sticky");
        }
        if (!groupProtocol.equals("classic") && !groupProtocol.equals("consumer")) {
            throw new IllegalArgumentException("--group-protocol must be classic or consumer");
        }
    }

    private synchronized void event(String what, Collection<TopicPartition> tps, String detail) {
        StringBuilder sb = new StringBuilder();
        sb.append(System.currentTimeMillis()).append(' ').append(what).append(' ');
        if (tps == null) {
            sb.append('-');
        } else {
            TreeSet<Integer> ps = new TreeSet<>();
            for (TopicPartition tp : tps) {
                ps.add(tp.partition());
            }
            sb.append(ps.isEmpty() ? "-" : String.join(",", ps.stream().map(String::valueOf).toList()));
        }
        if (detail != null && !detail.isEmpty()) {
            sb.append(' ').append(detail.replace('\n', ' '));
        }
        try {
            events.write(sb.append('\n').toString());
            events.flush();
        } catch (IOException e) {
            System.err.println("group-consume: writing events: " + e);
        }
        System.err.println("[group-consume java] " + sb.toString().trim());
    }

    private int run(String[] args) throws IOException {
        parse(args);
        records = new BufferedWriter(new OutputStreamWriter(new FileOutputStream(out, true), StandardCharsets.UTF_8));
        events = new BufferedWriter(new OutputStreamWriter(new FileOutputStream(out + ".rebalance", true),
                StandardCharsets.UTF_8));
        Properties cp = new Properties();
        cp.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        cp.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        cp.put(ConsumerConfig.CLIENT_ID_CONFIG, "group-consume-java-" + ProcessHandle.current().pid());
        cp.put(ConsumerConfig.GROUP_PROTOCOL_CONFIG, groupProtocol);
        cp.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        cp.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        cp.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, String.valueOf(maxPollRecords));
        cp.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        cp.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        if (groupProtocol.equals("classic")) {
            // The consumer protocol refuses these client-side settings (the broker owns them).
            cp.put(ConsumerConfig.SESSION_TIMEOUT_MS_CONFIG, String.valueOf(sessionTimeoutMs));
            cp.put(ConsumerConfig.HEARTBEAT_INTERVAL_MS_CONFIG, String.valueOf(heartbeatIntervalMs));
            cp.put(ConsumerConfig.PARTITION_ASSIGNMENT_STRATEGY_CONFIG, assignor.equals("range")
                    ? RangeAssignor.class.getName() : CooperativeStickyAssignor.class.getName());
        }
        if (instanceId != null) {
            cp.put(ConsumerConfig.GROUP_INSTANCE_ID_CONFIG, instanceId);
        }

        event("start", null, "client=java protocol=" + groupProtocol + " assignor=" + assignor
                + " pid=" + ProcessHandle.current().pid());
        long start = System.currentTimeMillis();
        long lastRecord = start;
        try (KafkaConsumer<byte[], byte[]> c = new KafkaConsumer<>(cp)) {
            consumer = c;
            try {
                c.subscribe(List.of(topic), new ConsumerRebalanceListener() {
                    @Override
                    public void onPartitionsRevoked(Collection<TopicPartition> partitions) {
                        event("revoked", partitions, null);
                    }

                    @Override
                    public void onPartitionsAssigned(Collection<TopicPartition> partitions) {
                        event("assigned", partitions, null);
                    }

                    @Override
                    public void onPartitionsLost(Collection<TopicPartition> partitions) {
                        event("lost", partitions, null);
                    }
                });
                while (!stopping) {
                    long now = System.currentTimeMillis();
                    if (now - start >= maxSeconds * 1000) {
                        exitReason = "max-seconds";
                        break;
                    }
                    if (idleExitMs > 0 && consumed > 0 && now - lastRecord >= idleExitMs) {
                        exitReason = "idle";
                        break;
                    }
                    ConsumerRecords<byte[], byte[]> recs;
                    try {
                        recs = c.poll(Duration.ofMillis(200));
                    } catch (WakeupException e) {
                        break;
                    }
                    if (recs.isEmpty()) {
                        continue;
                    }
                    lastRecord = System.currentTimeMillis();
                    batches++;
                    Map<TopicPartition, OffsetAndMetadata> offsets = new HashMap<>();
                    StringBuilder sb = new StringBuilder();
                    for (ConsumerRecord<byte[], byte[]> r : recs) {
                        String v = r.value() == null ? "null" : new String(r.value(), StandardCharsets.UTF_8);
                        sb.append(r.partition()).append(' ').append(r.offset()).append(' ').append(v).append('\n');
                        offsets.put(new TopicPartition(r.topic(), r.partition()), new OffsetAndMetadata(r.offset() + 1));
                        consumed++;
                    }
                    records.write(sb.toString());
                    records.flush();
                    if (commitDelayMs > 0) {
                        // Simulated processing time: widens the processed-but-uncommitted window.
                        try {
                            Thread.sleep(commitDelayMs);
                        } catch (InterruptedException ignored) {
                            Thread.currentThread().interrupt();
                        }
                    }
                    commit(c, offsets, recs.count());
                }
                if (stopping && exitReason.isEmpty()) {
                    exitReason = "sigterm";
                }
            } catch (Exception e) {
                // Fatal for this run (e.g. the broker refuses the group protocol).
                errorClass = e.getClass().getName();
                errorMessage = String.valueOf(e.getMessage());
                exitReason = "error";
                event("error", null, errorClass + ": " + errorMessage);
            }
            event("closing", null, exitReason);
        } // close(): a dynamic member leaves the group (LeaveGroup)
        consumer = null;
        event("exit", null, exitReason);
        records.close();
        events.close();
        summary();
        return errorClass == null ? 0 : 2;
    }

    /** commitSync the batch's next offsets; a refused commit is logged (its records may be read again). */
    private void commit(KafkaConsumer<byte[], byte[]> c, Map<TopicPartition, OffsetAndMetadata> offsets, int n) {
        for (int attempt = 0; attempt < 2; attempt++) {
            try {
                c.commitSync(offsets, Duration.ofSeconds(15));
                commits++;
                return;
            } catch (WakeupException e) {
                // SIGTERM arrived during the commit: stopping is set; commit once more, then leave.
                continue;
            } catch (Exception e) {
                commitFailures++;
                event("commit-failed", offsets.keySet(), "n=" + n + " " + e.getClass().getSimpleName() + ": " + e.getMessage());
                return;
            }
        }
        commitFailures++;
        event("commit-failed", offsets.keySet(), "n=" + n + " interrupted by wakeup twice");
    }

    private void summary() {
        StringBuilder sb = new StringBuilder();
        sb.append("{\"client\":\"java\",\"consumed\":").append(consumed);
        sb.append(",\"batches\":").append(batches);
        sb.append(",\"commits\":").append(commits);
        sb.append(",\"commit_failures\":").append(commitFailures);
        sb.append(",\"exit\":");
        Cli.json(sb, exitReason);
        sb.append(",\"error_class\":");
        Cli.json(sb, errorClass);
        sb.append(",\"error_message\":");
        Cli.json(sb, errorMessage);
        sb.append('}');
        System.out.println(sb);
        System.out.flush();
    }
}
