#!/bin/sh
# Writes /mosquitto/auth/passwd from the environment (.env); hashes only, plain passwords never stored.
set -eu
out=${PASSWD_FILE:-/mosquitto/auth/passwd}
: > "$out"
mosquitto_passwd -b "$out" gateway "$MQTT_GATEWAY_PASSWORD"
mosquitto_passwd -b "$out" healthcheck "$MQTT_HEALTHCHECK_PASSWORD"
if [ -n "${MQTT_DEVICES:-}" ]; then
  echo "$MQTT_DEVICES" | tr ',' '\n' | while IFS=: read -r user pass; do
    [ -n "$user" ] && mosquitto_passwd -b "$out" "$user" "$pass"
  done
fi
# Mosquitto reads it after dropping root: hand it to the broker user, readable by nobody else.
chown mosquitto:mosquitto "$out" 2>/dev/null || true
chmod 0600 "$out"
echo "mosquitto-auth: wrote $(wc -l < "$out") users"
