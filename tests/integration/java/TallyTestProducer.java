// Kafka's own Java producer (kafka-clients), driven by a script file, so that
// integration tests send traffic exactly as a JVM service in production does.
// tests/integration/producers.py writes the script and reads the output.
//
// Usage: java -cp <classes>:<kafka-clients and codec jars> TallyTestProducer SCRIPT
//
// SCRIPT is ASCII, one directive per line, fields separated by one tab. Every
// byte string is standard base64 ("" is the empty string); "-" is null.
//
//   config <key> <value>        a producer setting (base64 of UTF-8); before all else
//   topic <name>                the topic of the records that follow (base64 of UTF-8)
//   record <partition|-> <timestamp ms|-> <key> <value> [<header name> <header value>]...
//   begin                       beginTransaction()
//   commit                      commitTransaction()
//   abort                       flush(), then abortTransaction(): the records are
//                               in the log, marked aborted
//
// With config transactional.id the producer calls initTransactions() first.
// Output on stdout, after every record is acknowledged and the producer closed:
//
//   delivered <record index> <partition> <offset>     one per record, in input order
//   done
//
// Any failure: a stack trace on stderr and exit status 1 (2 for a bad script).
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicReference;
import java.util.concurrent.atomic.AtomicReferenceArray;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public final class TallyTestProducer {
    private static final Base64.Decoder BASE64 = Base64.getDecoder();

    private TallyTestProducer() {}

    /** A script line that could not be understood: exit status 2. */
    private static final class ScriptError extends Exception {
        private static final long serialVersionUID = 1L;

        ScriptError(int lineNumber, String message) {
            super("script line " + lineNumber + ": " + message);
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: TallyTestProducer SCRIPT");
            System.exit(2);
        }
        List<String> lines = Files.readAllLines(Path.of(args[0]), StandardCharsets.US_ASCII);
        Properties config = new Properties();
        int first = 0;
        try {
            for (; first < lines.size() && lines.get(first).startsWith("config\t"); first++) {
                String[] f = fields(lines.get(first), first + 1, 3, 3);
                config.put(text(f[1], first + 1), text(f[2], first + 1));
            }
            // Parse everything before connecting, so a bad script sends nothing.
            List<Object> steps = new ArrayList<>();
            String topic = null;
            for (int i = first; i < lines.size(); i++) {
                String line = lines.get(i);
                String[] f = fields(line, i + 1, 1, Integer.MAX_VALUE);
                switch (f[0]) {
                    case "topic":
                        topic = text(fields(line, i + 1, 2, 2)[1], i + 1);
                        break;
                    case "record":
                        if (topic == null) throw new ScriptError(i + 1, "record before topic");
                        steps.add(record(topic, line, i + 1));
                        break;
                    case "begin":
                    case "commit":
                    case "abort":
                        fields(line, i + 1, 1, 1);
                        steps.add(f[0]);
                        break;
                    default:
                        throw new ScriptError(i + 1, "unknown directive " + f[0]);
                }
            }
            System.exit(run(config, steps));
        } catch (ScriptError e) {
            System.err.println(e.getMessage());
            System.exit(2);
        }
    }

    private static int run(Properties config, List<Object> steps) throws Exception {
        int count = 0;
        for (Object step : steps) if (step instanceof ProducerRecord) count++;
        AtomicReferenceArray<RecordMetadata> delivered = new AtomicReferenceArray<>(count);
        AtomicReference<Exception> failure = new AtomicReference<>();
        boolean transactional = config.containsKey(ProducerConfig.TRANSACTIONAL_ID_CONFIG);
        KafkaProducer<byte[], byte[]> producer =
                new KafkaProducer<>(config, new ByteArraySerializer(), new ByteArraySerializer());
        try {
            if (transactional) producer.initTransactions();
            int index = 0;
            for (Object step : steps) {
                if (step instanceof ProducerRecord) {
                    @SuppressWarnings("unchecked")
                    ProducerRecord<byte[], byte[]> record = (ProducerRecord<byte[], byte[]>) step;
                    final int at = index++;
                    producer.send(record, (metadata, error) -> {
                        if (error != null) failure.compareAndSet(null, error);
                        else delivered.set(at, metadata);
                    });
                } else if (step.equals("begin")) {
                    producer.beginTransaction();
                } else if (step.equals("commit")) {
                    producer.commitTransaction();
                } else {
                    // abortTransaction() may drop records not yet sent: flush first, so
                    // the aborted records are really in the log, as after a crash.
                    producer.flush();
                    producer.abortTransaction();
                }
                if (failure.get() != null) throw failure.get();
            }
            producer.flush();
            if (failure.get() != null) throw failure.get();
        } finally {
            // close() alone waits for ever for records it cannot deliver.
            producer.close(Duration.ofSeconds(30));
        }
        StringBuilder out = new StringBuilder();
        for (int i = 0; i < count; i++) {
            RecordMetadata metadata = delivered.get(i);
            if (metadata == null) throw new IllegalStateException("record " + i + " was never acknowledged");
            out.append("delivered\t").append(i).append('\t').append(metadata.partition())
                .append('\t').append(metadata.offset()).append('\n');
        }
        out.append("done\n");
        System.out.print(out);
        System.out.flush();
        return 0;
    }

    private static ProducerRecord<byte[], byte[]> record(String topic, String line, int n)
            throws ScriptError {
        String[] f = fields(line, n, 5, Integer.MAX_VALUE);
        if ((f.length - 5) % 2 != 0) throw new ScriptError(n, "a header name without a value");
        Integer partition = f[1].equals("-") ? null : Math.toIntExact(integer(f[1], n));
        Long timestamp = f[2].equals("-") ? null : integer(f[2], n);
        RecordHeaders headers = new RecordHeaders();
        for (int h = 5; h < f.length; h += 2) headers.add(text(f[h], n), bytes(f[h + 1], n));
        return new ProducerRecord<>(topic, partition, timestamp, bytes(f[3], n), bytes(f[4], n), headers);
    }

    private static String[] fields(String line, int n, int min, int max) throws ScriptError {
        String[] f = line.split("\t", -1);
        if (f.length < min || f.length > max) {
            throw new ScriptError(n, "expected " + min + (max == min ? "" : "+") + " fields, got " + f.length);
        }
        return f;
    }

    private static byte[] bytes(String field, int n) throws ScriptError {
        if (field.equals("-")) return null;
        try {
            return BASE64.decode(field);
        } catch (IllegalArgumentException e) {
            throw new ScriptError(n, "bad base64: " + e.getMessage());
        }
    }

    private static String text(String field, int n) throws ScriptError {
        byte[] b = bytes(field, n);
        if (b == null) throw new ScriptError(n, "null where text is required");
        return new String(b, StandardCharsets.UTF_8);
    }

    private static long integer(String field, int n) throws ScriptError {
        try {
            return Long.parseLong(field);
        } catch (NumberFormatException e) {
            throw new ScriptError(n, "not an integer: " + field);
        }
    }
}
