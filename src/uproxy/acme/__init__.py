"""Automatic certificates (ACME, RFC 8555): the control plane obtains,
stores and renews the certificates of listeners with `tls = { acme = ... }`
and publishes them, and the challenges the ACME server validates, to the
workers as new table generations (docs/tls.md "Automatic certificates").

  settings.py   the [acme] table and a listener's acme key (config.py calls it)
  storage.py    the files: account key, certificates, placeholders; atomic, 0600
  client.py     one order with certbot's `acme` library: account, challenges, finalize
  scheduler.py  when: renewal at 2/3 of the lifetime (or ARI), jitter, back-off
  manager.py    the thread tying them to the runtime (publish, events, metrics)

Only settings.py is imported with the configuration: the rest (and the
`acme` library) load when a configuration uses ACME.
"""
