#!/usr/bin/with-contenv bashio
# The add-on's start: the options (and the Supervisor's MQTT service, if there is one
# and no broker is named) become /data/tcp-multiplexer.toml, which is checked, then run.
set -euo pipefail

args=()
if bashio::services.available "mqtt"; then
  jq -n \
    --arg host "$(bashio::services mqtt "host")" \
    --argjson port "$(bashio::services mqtt "port")" \
    --arg username "$(bashio::services mqtt "username")" \
    --arg password "$(bashio::services mqtt "password")" \
    --argjson ssl "$(bashio::services mqtt "ssl")" \
    '{host: $host, port: $port, username: $username, password: $password, ssl: $ssl}' \
    >/tmp/mqtt-service.json
  # The password goes to a file only this add-on reads, never into the config.
  (umask 077 && bashio::services mqtt "password" >/data/mqtt-password)
  args=(--mqtt-service /tmp/mqtt-service.json)
fi

tcp-multiplexer config from-addon /data/options.json "${args[@]}" >/data/tcp-multiplexer.toml
tcp-multiplexer check-config /data/tcp-multiplexer.toml >/dev/null
exec tcp-multiplexer server --config /data/tcp-multiplexer.toml
