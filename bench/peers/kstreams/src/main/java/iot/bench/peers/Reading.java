package iot.bench.peers;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import org.apache.kafka.common.errors.SerializationException;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;

/** One reading of iot.readings: the fields the windows use. A missing or null metric is NaN. */
final class Reading {
    static final String[] METRICS = {"temperature", "humidity", "pressure", "luminosity"};

    String device = "";
    String place = "";
    long ts;
    final double[] values = {Double.NaN, Double.NaN, Double.NaN, Double.NaN};

    private static final JsonFactory JSON = new JsonFactory();

    /** Parse the gateway's JSON record with Jackson's streaming parser (one pass, no tree). */
    static Reading parse(byte[] data) {
        Reading r = new Reading();
        try (JsonParser p = JSON.createParser(data)) {
            if (p.nextToken() != JsonToken.START_OBJECT) {
                throw new SerializationException("reading is not a JSON object");
            }
            while (p.nextToken() == JsonToken.FIELD_NAME) {
                String name = p.currentName();
                JsonToken t = p.nextToken();
                switch (name) {
                    case "device" -> r.device = p.getText();
                    case "place" -> r.place = p.getText();
                    case "ts" -> r.ts = p.getLongValue();
                    case "temperature" -> r.values[0] = number(p, t);
                    case "humidity" -> r.values[1] = number(p, t);
                    case "pressure" -> r.values[2] = number(p, t);
                    case "luminosity" -> r.values[3] = number(p, t);
                    default -> p.skipChildren();
                }
            }
        } catch (IOException e) {
            throw new SerializationException("reading is not valid JSON", e);
        }
        return r;
    }

    private static double number(JsonParser p, JsonToken t) throws IOException {
        return t == JsonToken.VALUE_NULL ? Double.NaN : p.getDoubleValue();
    }

    /** The source topic's values, parsed once (the timestamp extractor reads `ts` from the result). */
    static Serde<Reading> jsonSerde() {
        Serializer<Reading> ser = (topic, r) -> {
            throw new UnsupportedOperationException("the source topic is read only");
        };
        Deserializer<Reading> de = (topic, data) -> data == null ? null : parse(data);
        return Serdes.serdeFrom(ser, de);
    }

    /** The repartition topic's values: a compact binary form. */
    static Serde<Reading> binarySerde() {
        Serializer<Reading> ser = (topic, r) -> {
            byte[] d = r.device.getBytes(StandardCharsets.UTF_8);
            byte[] p = r.place.getBytes(StandardCharsets.UTF_8);
            ByteBuffer b = ByteBuffer.allocate(4 + d.length + p.length + 8 + 8 * 4);
            b.putShort((short) d.length).put(d).putShort((short) p.length).put(p).putLong(r.ts);
            for (double v : r.values) {
                b.putDouble(v);
            }
            return b.array();
        };
        Deserializer<Reading> de = (topic, data) -> {
            if (data == null) {
                return null;
            }
            ByteBuffer b = ByteBuffer.wrap(data);
            Reading r = new Reading();
            r.device = string(b);
            r.place = string(b);
            r.ts = b.getLong();
            for (int i = 0; i < 4; i++) {
                r.values[i] = b.getDouble();
            }
            return r;
        };
        return Serdes.serdeFrom(ser, de);
    }

    static String string(ByteBuffer b) {
        byte[] s = new byte[b.getShort()];
        b.get(s);
        return new String(s, StandardCharsets.UTF_8);
    }
}
