#!/bin/sh
# The broker's first account: the operator, admin of the dynamic-security plugin, which keeps every
# account, role and ACL in one JSON file on the mosquitto-dynsec volume (hashed passwords only).
# Runs before every start and does nothing once the file exists: from then on the broker owns it, and
# accounts change at run time (`iot devices setup` makes the gateway's, `iot devices add` a board's).
set -eu
file=${DYNSEC_FILE:-/mosquitto/dynsec/dynamic-security.json}
dir=$(dirname "$file")
mkdir -p "$dir"
if [ -s "$file" ]; then
  echo "mosquitto-init: $file exists; accounts change at run time (iot devices)"
else
  : "${MQTT_OPERATOR_PASSWORD:?set in .env}"
  mosquitto_ctrl dynsec init "$file" "${MQTT_OPERATOR_USERNAME:-operator}" "$MQTT_OPERATOR_PASSWORD" >/dev/null
  echo "mosquitto-init: created $file with the operator account"
fi
# Mosquitto reads and rewrites it after dropping root: the broker's user only.
chown -R mosquitto:mosquitto "$dir" 2>/dev/null || true
chmod 0700 "$dir"
chmod 0600 "$file"
