"""scripts/bench: uproxy against nginx, HAProxy, Traefik, Envoy and Caddy."""
