#!/bin/bash
# Container health probe for Postrider: GET /healthz on the local HTTP listener and succeed only
# on "HTTP/1.x 200". Uses bash's /dev/tcp so the runtime image needs no curl or wget.
# POSTRIDER_HEALTH_PORT overrides the port (default 8025, the image's http.listen port).
# Exit status 0 = healthy, 1 = unhealthy (what Docker's HEALTHCHECK expects).
set -u
port=${POSTRIDER_HEALTH_PORT:-8025}
exec 3<>"/dev/tcp/127.0.0.1/${port}" || exit 1
printf 'GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3 || exit 1
status_line=""
IFS= read -r -t 4 status_line <&3 || exit 1
exec 3<&-
case $status_line in
  "HTTP/1."[01]" 200"*) exit 0 ;;
  *) exit 1 ;;
esac
