package chronik.txn;

import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.KafkaException;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.AuthorizationException;
import org.apache.kafka.common.errors.OutOfOrderSequenceException;
import org.apache.kafka.common.errors.ProducerFencedException;
import org.apache.kafka.common.errors.UnsupportedVersionException;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * Consume-transform-produce with the Apache Kafka Java client (kafka-clients 4.1), exactly
 * once: consumes --input in group --group (read_committed, no auto-commit), copies every
 * record (key and value unchanged) to the same partition of --output, and commits the
 * consumed offsets inside the same transaction (sendOffsetsToTransaction with the consumer's
 * group metadata, KIP-447). An abortable error aborts the transaction and rewinds to the
 * group's committed offsets; a fatal one (fenced, ...) ends the program.
 *
 *   java -cp CLASSES:KAFKA_LIBS/* chronik.txn.TxnCopy --bootstrap H:P[,H:P] --input T --output T2
 *        --group G --transactional-id X [--max-poll-records N] [--txn-delay-ms N]
 *        [--max-seconds S] [--transaction-timeout-ms N]
 *
 * --txn-delay-ms sleeps inside each transaction, after its records and offsets were sent and
 * before the commit, so that a kill -9 likely leaves a transaction open. The program exits 0
 * once it owns every partition of --input and its position is at each one's end (it has copied
 * everything there is); 3 at --max-seconds; 2 on a fatal error; 1 on bad arguments. Progress
 * goes to stderr, one JSON summary line ({"client": "java-txn-copy", ...}) to stdout.
 */
public final class TxnCopy {
    public static void main(String[] args) throws Exception {
        Map<String, String> a = new HashMap<>();
        for (int i = 0; i + 1 < args.length; i += 2) {
            if (!args[i].startsWith("--")) {
                usage("unexpected argument " + args[i]);
            }
            a.put(args[i].substring(2), args[i + 1]);
        }
        for (String k : List.of("bootstrap", "input", "output", "group", "transactional-id")) {
            if (!a.containsKey(k)) {
                usage("missing --" + k);
            }
        }
        String input = a.get("input");
        String output = a.get("output");
        int maxPollRecords = Integer.parseInt(a.getOrDefault("max-poll-records", "50"));
        long txnDelayMs = Long.parseLong(a.getOrDefault("txn-delay-ms", "0"));
        long maxSeconds = Long.parseLong(a.getOrDefault("max-seconds", "120"));

        Properties pp = new Properties();
        pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, a.get("bootstrap"));
        pp.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, a.get("transactional-id"));
        pp.put(ProducerConfig.TRANSACTION_TIMEOUT_CONFIG, a.getOrDefault("transaction-timeout-ms", "10000"));
        pp.put(ProducerConfig.CLIENT_ID_CONFIG, "java-txn-copy-" + ProcessHandle.current().pid());
        pp.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        pp.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        pp.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        Properties cp = new Properties();
        cp.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, a.get("bootstrap"));
        cp.put(ConsumerConfig.GROUP_ID_CONFIG, a.get("group"));
        cp.put(ConsumerConfig.CLIENT_ID_CONFIG, "java-txn-copy-" + ProcessHandle.current().pid());
        cp.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        cp.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        cp.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        cp.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, String.valueOf(maxPollRecords));
        cp.put(ConsumerConfig.SESSION_TIMEOUT_MS_CONFIG, "6000");
        cp.put(ConsumerConfig.HEARTBEAT_INTERVAL_MS_CONFIG, "1000");
        cp.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        cp.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());

        long transactions = 0, aborted = 0, copied = 0;
        String exit = "done";
        String errorClass = null, errorMessage = null;
        int rc = 0;
        long deadline = System.nanoTime() + maxSeconds * 1_000_000_000L;
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(pp);
             KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(cp)) {
            // Fences an earlier instance with this transactional.id and completes (aborts) its
            // open transaction before this one reads the group's offsets.
            producer.initTransactions();
            log("initTransactions done");
            consumer.subscribe(List.of(input));
            int partitions = consumer.partitionsFor(input).size();
            while (true) {
                if (System.nanoTime() > deadline) {
                    exit = "max-seconds";
                    rc = 3;
                    break;
                }
                ConsumerRecords<byte[], byte[]> recs = consumer.poll(Duration.ofMillis(200));
                if (recs.isEmpty()) {
                    Set<TopicPartition> assigned = consumer.assignment();
                    if (assigned.size() == partitions) {
                        Map<TopicPartition, Long> end = consumer.endOffsets(assigned);
                        boolean done = true;
                        for (TopicPartition tp : assigned) {
                            done &= consumer.position(tp) >= end.get(tp);
                        }
                        if (done) {
                            break;
                        }
                    }
                    continue;
                }
                try {
                    producer.beginTransaction();
                    Map<TopicPartition, OffsetAndMetadata> offsets = new HashMap<>();
                    for (ConsumerRecord<byte[], byte[]> r : recs) {
                        producer.send(new ProducerRecord<>(output, r.partition(), r.key(), r.value()));
                        offsets.put(new TopicPartition(r.topic(), r.partition()), new OffsetAndMetadata(r.offset() + 1));
                    }
                    producer.sendOffsetsToTransaction(offsets, consumer.groupMetadata());
                    if (txnDelayMs > 0) {
                        Thread.sleep(txnDelayMs);
                    }
                    producer.commitTransaction();
                    transactions++;
                    copied += recs.count();
                    log("committed transaction " + transactions + " (" + copied + " records copied)");
                } catch (ProducerFencedException | OutOfOrderSequenceException | AuthorizationException
                         | UnsupportedVersionException e) {
                    throw e;
                } catch (KafkaException e) {
                    aborted++;
                    log("aborting after " + e);
                    producer.abortTransaction();
                    for (TopicPartition tp : consumer.assignment()) {
                        OffsetAndMetadata c = consumer.committed(Set.of(tp)).get(tp);
                        if (c == null) {
                            consumer.seekToBeginning(Set.of(tp));
                        } else {
                            consumer.seek(tp, c.offset());
                        }
                    }
                }
            }
        } catch (Exception e) {
            exit = "error";
            rc = 2;
            errorClass = e.getClass().getName();
            errorMessage = String.valueOf(e.getMessage());
            e.printStackTrace();
        }
        System.out.println("{\"client\": \"java-txn-copy\", \"exit\": \"" + exit + "\", \"transactions\": " + transactions
                + ", \"aborted\": " + aborted + ", \"copied\": " + copied + ", \"error_class\": " + json(errorClass)
                + ", \"error_message\": " + json(errorMessage) + "}");
        System.out.flush();
        System.exit(rc);
    }

    private static void log(String s) {
        System.err.println(java.time.LocalTime.now() + " [txn-copy] " + s);
    }

    private static String json(String s) {
        if (s == null) {
            return "null";
        }
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') {
                b.append('\\').append(c);
            } else if (c < 0x20) {
                b.append(String.format("\\u%04x", (int) c));
            } else {
                b.append(c);
            }
        }
        return b.append('"').toString();
    }

    private static void usage(String why) {
        System.err.println(why + "\nusage: TxnCopy --bootstrap H:P --input T --output T2 --group G --transactional-id X "
                + "[--max-poll-records N] [--txn-delay-ms N] [--max-seconds S] [--transaction-timeout-ms N]");
        System.exit(1);
    }
}
