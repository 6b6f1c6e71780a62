#!/bin/sh
# Copies the broker's TLS files from the host (compose/mosquitto/certs/, made with
# `iot stack certs --dir compose/mosquitto/certs --hosts <names boards use>`) into the certs volume,
# owned by the broker's user: Mosquitto 2 reads them after dropping root, and the key stays 0600.
set -eu
src=${CERTS_SRC:-/certs-src}
out=${CERTS_DIR:-/mosquitto/certs}
for f in ca.crt server.crt server.key; do
  if [ ! -s "$src/$f" ]; then
    echo "mosquitto-certs: $src/$f is missing: run \`.venv/bin/iot stack certs --dir compose/mosquitto/certs --hosts <broker host names>\` first (README, compose)" >&2
    exit 1
  fi
done
cp "$src/ca.crt" "$src/server.crt" "$src/server.key" "$out/"
chown mosquitto:mosquitto "$out/ca.crt" "$out/server.crt" "$out/server.key" 2>/dev/null || true
chmod 0644 "$out/ca.crt" "$out/server.crt"
chmod 0600 "$out/server.key"
echo "mosquitto-certs: installed $(cd "$out" && ls | tr '\n' ' ')"
