package chronik.clientcheck;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.List;

/**
 * Deterministic record generator. MUST stay byte-for-byte identical to gen() in
 * ../../../../../../go/main.go (checked with --gen-digest).
 */
final class Gen {
    private static final long GOLDEN = 0x9E3779B97F4A7C15L;
    private static final long PER_INDEX = 0xD1B54A32D192ED03L;

    private static final byte[][] WORDS = utf8(
            "kafka", "chronik", "broker", "partition", "offset", "record", "batch",
            "leader", "replica", "segment", "index", "topic", "consumer", "producer",
            "compression", "zstd", "lz4", "snappy", "gzip", "header", "timestamp",
            "the", "a", "of", "and", "to", "in", "is", "0", "42", "1337", "\u00e9t\u00e9");

    private static final String[] HEADER_KEYS = {"trace-id", "content-type", "x-seq", "dup", "h", "", "k\u00f8y"};

    private static final byte[] KEY_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789".getBytes(StandardCharsets.US_ASCII);

    static final class Header {
        final String key;
        final byte[] value; // null = null

        Header(String key, byte[] value) {
            this.key = key;
            this.value = value;
        }
    }

    static final class Rec {
        byte[] key; // null = null
        byte[] value; // null = null
        final List<Header> headers = new ArrayList<>(3);
    }

    private static byte[][] utf8(String... ws) {
        byte[][] out = new byte[ws.length][];
        for (int i = 0; i < ws.length; i++) {
            out[i] = ws[i].getBytes(StandardCharsets.UTF_8);
        }
        return out;
    }

    private static final class Rng {
        long s;

        Rng(long seed, int i) {
            s = seed ^ (((long) i + 1) * PER_INDEX);
        }

        long next() {
            s += GOLDEN;
            long z = s;
            z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
            z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
            return z ^ (z >>> 31);
        }

        int n(int bound) {
            return (int) Long.remainderUnsigned(next(), bound);
        }

        void fillRandom(byte[] b) {
            for (int j = 0; j < b.length; j += 8) {
                long v = next();
                for (int k = 0; k < 8 && j + k < b.length; k++) {
                    b[j + k] = (byte) (v >>> (8 * k));
                }
            }
        }
    }

    private Gen() {}

    private static byte[] value(Rng r, int size) {
        byte[] v = new byte[size];
        switch (r.n(3)) {
            case 0:
                r.fillRandom(v);
                break;
            case 1: {
                int j = 0;
                while (j < size) {
                    byte[] w = WORDS[r.n(WORDS.length)];
                    int c = Math.min(w.length, size - j);
                    System.arraycopy(w, 0, v, j, c);
                    j += c;
                    if (j < size) {
                        v[j++] = ' ';
                    }
                }
                break;
            }
            default: {
                int b = r.n(256);
                for (int j = 0; j < size; j++) {
                    v[j] = (byte) (b + j % 17);
                }
            }
        }
        return v;
    }

    static Rec gen(long seed, int i) {
        Rng r = new Rng(seed, i);
        Rec g = new Rec();

        int k = r.n(100);
        if (k < 5) {
            g.key = null;
        } else if (k < 7) {
            g.key = new byte[0];
        } else {
            byte[] prefix = ("key-" + i + "-").getBytes(StandardCharsets.US_ASCII);
            int extra = r.n(24);
            byte[] key = new byte[prefix.length + extra];
            System.arraycopy(prefix, 0, key, 0, prefix.length);
            for (int j = 0; j < extra; j++) {
                key[prefix.length + j] = KEY_ALPHABET[r.n(KEY_ALPHABET.length)];
            }
            g.key = key;
        }

        int v = r.n(1000);
        if (v < 10) {
            g.value = null;
        } else if (v < 40) {
            g.value = new byte[0];
        } else if (v < 42) {
            g.value = value(r, 96 * 1024 + r.n(8 * 1024 + 1));
        } else if (v < 100) {
            g.value = value(r, 1024 + r.n(9 * 1024 + 1));
        } else {
            g.value = value(r, 10 + r.n(191));
        }

        int hc = r.n(4);
        for (int h = 0; h < hc; h++) {
            String hk = HEADER_KEYS[r.n(HEADER_KEYS.length)];
            byte[] hv;
            int t = r.n(10);
            if (t < 2) {
                hv = null;
            } else if (t < 3) {
                hv = new byte[0];
            } else {
                hv = new byte[r.n(65)];
                r.fillRandom(hv);
            }
            g.headers.add(new Header(hk, hv));
        }
        return g;
    }

    private static void digestBytes(MessageDigest md, byte[] b) {
        if (b == null) {
            md.update(ByteBuffer.allocate(4).putInt(-1).array());
            return;
        }
        md.update(ByteBuffer.allocate(4).putInt(b.length).array());
        md.update(b);
    }

    static String digest(long seed, int n) throws Exception {
        MessageDigest md = MessageDigest.getInstance("SHA-256");
        for (int i = 0; i < n; i++) {
            Rec g = gen(seed, i);
            digestBytes(md, g.key);
            digestBytes(md, g.value);
            md.update(ByteBuffer.allocate(4).putInt(g.headers.size()).array());
            for (Header h : g.headers) {
                digestBytes(md, h.key.getBytes(StandardCharsets.UTF_8));
                digestBytes(md, h.value);
            }
        }
        StringBuilder sb = new StringBuilder();
        for (byte b : md.digest()) {
            sb.append(String.format("%02x", b));
        }
        return sb.toString();
    }
}
