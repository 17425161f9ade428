"""Where configuration comes from besides `uproxy run -c FILE` read once:
the file watched (watch.py, over inotify.py), servers from DNS (dns.py),
the dynamic part from etcd (etcd.py, laid over the file by dynamic.py).

Each provider is a thread of the control plane that only *tells* the
runtime something changed; the runtime's main loop builds and publishes
the new tables (one place publishes, so two providers never race a swap).
"""
