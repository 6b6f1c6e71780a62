package iot.bench.peers;

import java.lang.management.ManagementFactory;
import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.common.Metric;
import org.apache.kafka.common.MetricName;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Named;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.Repartitioned;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.kstream.WindowedSerdes;

/**
 * The backend's windows as a Kafka Streams job: per sensor (the record key, the device) and per place
 * (re-keyed through a repartition topic), a tumbling window of 60 s and a hopping window of 300 s
 * every 60 s, event time from the reading's `ts`, count and count/mean/min/max of the four metrics
 * (per place also the distinct devices). Window updates go to one output topic, compacted by the
 * record cache between commits (Kafka Streams' default emit). Late records are what Kafka Streams
 * drops after a window's grace: the task-level dropped-records metric, per stage.
 *
 * <p>Reports on stdout every 250 ms, for bench/peers.py: {@code progress <epoch ms> <sensor readings>
 * <place readings> <dropped sensor window updates> <dropped place window updates>}.
 *
 * <p>Arguments: --bootstrap HOST:PORT --source TOPIC --output TOPIC --app-id ID --state-dir DIR
 * --grace-ms N --commit-ms N --partitions N [--tumbling-ms N --hopping-ms N --hop-step-ms N]
 */
public final class WindowsJob {
    private static final AtomicLong SENSOR = new AtomicLong();
    private static final AtomicLong PLACE = new AtomicLong();

    private WindowsJob() {}

    public static void main(String[] argv) throws InterruptedException {
        Map<String, String> args = new HashMap<>();
        for (int i = 0; i + 1 < argv.length; i += 2) {
            args.put(argv[i].replaceFirst("^--", ""), argv[i + 1]);
        }
        long grace = Long.parseLong(args.get("grace-ms"));
        List<TimeWindows> specs = List.of(
                TimeWindows.ofSizeAndGrace(Duration.ofMillis(ms(args, "tumbling-ms", 60_000)), Duration.ofMillis(grace)),
                TimeWindows.ofSizeAndGrace(Duration.ofMillis(ms(args, "hopping-ms", 300_000)), Duration.ofMillis(grace))
                        .advanceBy(Duration.ofMillis(ms(args, "hop-step-ms", 60_000))));

        StreamsBuilder builder = new StreamsBuilder();
        KStream<String, Reading> readings = builder.stream(
                args.get("source"),
                Consumed.with(Serdes.String(), Reading.jsonSerde())
                        .withTimestampExtractor((rec, prev) -> ((Reading) rec.value()).ts)
                        .withName("readings"));
        Serde<Reading> forwarded = Reading.binarySerde();
        windows(readings.peek((k, v) -> SENSOR.incrementAndGet()), "sensor", specs, forwarded, args.get("output"));
        KStream<String, Reading> byPlace = readings
                .selectKey((k, v) -> v.place)
                .repartition(Repartitioned.<String, Reading>as("by-place")
                        .withKeySerde(Serdes.String())
                        .withValueSerde(forwarded)
                        .withNumberOfPartitions(Integer.parseInt(args.get("partitions"))));
        windows(byPlace.peek((k, v) -> PLACE.incrementAndGet()), "place", specs, forwarded, args.get("output"));

        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, args.get("app-id"));
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args.get("bootstrap"));
        props.put(StreamsConfig.STATE_DIR_CONFIG, args.get("state-dir"));
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.AT_LEAST_ONCE);
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, Long.parseLong(args.get("commit-ms")));
        props.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
        props.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");

        KafkaStreams streams = new KafkaStreams(builder.build(), props);
        streams.setUncaughtExceptionHandler(exc -> {
            System.out.println("error " + exc);
            System.out.flush();
            return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> streams.close(Duration.ofSeconds(20))));
        streams.start();
        while (true) {
            long[] dropped = dropped(streams.metrics());
            System.out.println("progress " + System.currentTimeMillis() + " " + SENSOR.get() + " " + PLACE.get()
                    + " " + dropped[0] + " " + dropped[1] + " " + streams.state());
            System.out.flush();
            Thread.sleep(250);
        }
    }

    private static long ms(Map<String, String> args, String name, long dflt) {
        return args.containsKey(name) ? Long.parseLong(args.get(name)) : dflt;
    }

    private static void windows(
            KStream<String, Reading> stream, String scope, List<TimeWindows> specs, Serde<Reading> serde, String out) {
        boolean keepDevices = scope.equals("place");
        for (TimeWindows spec : specs) {
            String name = scope + "-" + (spec.advanceMs == spec.size() ? "tumbling" : "hopping");
            stream.groupByKey(Grouped.with(name + "-grouped", Serdes.String(), serde))
                    .windowedBy(spec)
                    .aggregate(
                            Agg::new,
                            (key, reading, agg) -> agg.add(reading, keepDevices),
                            Named.as(name),
                            Materialized.<String, Agg, org.apache.kafka.streams.state.WindowStore<
                                            org.apache.kafka.common.utils.Bytes, byte[]>>as(name)
                                    .withKeySerde(Serdes.String())
                                    .withValueSerde(Agg.serde()))
                    .toStream(Named.as(name + "-updates"))
                    .to(out, Produced.with(WindowedSerdes.timeWindowedSerdeFrom(String.class, spec.size()), Agg.serde()));
        }
    }

    /** Window updates dropped as late (after grace), summed over the tasks of each sub-topology:
     *  0 is the source stage (per sensor), 1 the repartitioned one (per place). */
    private static long[] dropped(Map<MetricName, ? extends Metric> metrics) {
        long[] out = new long[2];
        for (Map.Entry<MetricName, ? extends Metric> e : metrics.entrySet()) {
            MetricName m = e.getKey();
            if (!m.name().equals("dropped-records-total") || !m.group().equals("stream-task-metrics")) {
                continue;
            }
            String task = m.tags().getOrDefault("task-id", "");
            int stage = task.startsWith("1_") ? 1 : 0;
            out[stage] += ((Number) e.getValue().metricValue()).longValue();
        }
        return out;
    }
}
