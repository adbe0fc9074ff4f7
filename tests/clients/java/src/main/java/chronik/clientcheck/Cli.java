package chronik.clientcheck;

import java.util.List;

/** Command-line plumbing shared by the client-check programs: options, the JSON summary line. */
final class Cli {
    private Cli() {
    }

    /** Receives one "--name value" option. */
    interface Option {
        void set(String name, String value);
    }

    /**
     * Hands each "--name value" pair of args to option, in order. A missing value, or a value
     * option cannot parse as a number, is an IllegalArgumentException naming the option.
     */
    static void options(String[] args, Option option) {
        for (int i = 0; i < args.length; i += 2) {
            String a = args[i];
            if (i + 1 >= args.length) {
                throw new IllegalArgumentException("missing value for " + a);
            }
            String v = args[i + 1];
            try {
                option.set(a, v);
            } catch (NumberFormatException e) {
                throw new IllegalArgumentException("bad number for " + a + ": " + v);
            }
        }
    }

    /** Appends s as a JSON string literal; null is written as JSON null. */
    static void json(StringBuilder sb, String s) {
        if (s == null) {
            sb.append("null");
            return;
        }
        sb.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"': sb.append("\\\""); break;
                case '\\': sb.append("\\\\"); break;
                case '\n': sb.append("\\n"); break;
                case '\r': sb.append("\\r"); break;
                case '\t': sb.append("\\t"); break;
                default:
                    if (c < 0x20) {
                        sb.append(String.format("\\u%04x", (int) c));
                    } else {
                        sb.append(c);
                    }
            }
        }
        sb.append('"');
    }

    /** Appends ss as a JSON array of strings. */
    static void json(StringBuilder sb, List<String> ss) {
        sb.append('[');
        for (int i = 0; i < ss.size(); i++) {
            if (i > 0) {
                sb.append(',');
            }
            json(sb, ss.get(i));
        }
        sb.append(']');
    }
}
