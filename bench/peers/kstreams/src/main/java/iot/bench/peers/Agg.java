package iot.bench.peers;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.TreeSet;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;

/**
 * One window's values, as the backend's documents have them: readings counted, and per metric
 * count, sum (for the mean), min and max; per place also the distinct devices seen.
 */
final class Agg {
    long count;
    final long[] n = new long[4];
    final double[] sum = new double[4];
    final double[] min = {Double.NaN, Double.NaN, Double.NaN, Double.NaN};
    final double[] max = {Double.NaN, Double.NaN, Double.NaN, Double.NaN};
    final TreeSet<String> devices = new TreeSet<>();

    Agg add(Reading r, boolean keepDevices) {
        count++;
        for (int i = 0; i < 4; i++) {
            double v = r.values[i];
            if (Double.isNaN(v)) {
                continue;
            }
            if (n[i]++ == 0) {
                min[i] = v;
                max[i] = v;
            } else {
                min[i] = Math.min(min[i], v);
                max[i] = Math.max(max[i], v);
            }
            sum[i] += v;
        }
        if (keepDevices) {
            devices.add(r.device);
        }
        return this;
    }

    static Serde<Agg> serde() {
        Serializer<Agg> ser = (topic, a) -> {
            List<byte[]> names = new ArrayList<>(a.devices.size());
            int size = 8 + 4 * (8 + 3 * 8) + 4;
            for (String d : a.devices) {
                byte[] b = d.getBytes(StandardCharsets.UTF_8);
                names.add(b);
                size += 2 + b.length;
            }
            ByteBuffer b = ByteBuffer.allocate(size);
            b.putLong(a.count);
            for (int i = 0; i < 4; i++) {
                b.putLong(a.n[i]).putDouble(a.sum[i]).putDouble(a.min[i]).putDouble(a.max[i]);
            }
            b.putInt(names.size());
            for (byte[] name : names) {
                b.putShort((short) name.length).put(name);
            }
            return b.array();
        };
        Deserializer<Agg> de = (topic, data) -> {
            if (data == null) {
                return null;
            }
            ByteBuffer b = ByteBuffer.wrap(data);
            Agg a = new Agg();
            a.count = b.getLong();
            for (int i = 0; i < 4; i++) {
                a.n[i] = b.getLong();
                a.sum[i] = b.getDouble();
                a.min[i] = b.getDouble();
                a.max[i] = b.getDouble();
            }
            for (int i = b.getInt(); i > 0; i--) {
                a.devices.add(Reading.string(b));
            }
            return a;
        };
        return Serdes.serdeFrom(ser, de);
    }
}
