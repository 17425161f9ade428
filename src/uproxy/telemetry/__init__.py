"""Telemetry of a running proxy that adds nothing to its request path:
the core's shared-memory counters, /proc, and eBPF probes (bpf/*.c) loaded
with bcc and filtered to the proxy's worker threads and ports."""
