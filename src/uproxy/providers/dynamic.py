"""The dynamic part of a configuration and how it lies over the file.

Listeners (addresses, TLS, limits), [proxy], [admin] and [etcd] stay in
the file: they take sockets and a restart-sized decision. What changes
while the proxy runs is the dynamic part, kept as one key per object under
a prefix (etcd, providers/etcd.py):

    <prefix>clusters/<name>       a [[clusters]] table as JSON (servers,
                                  weights, balance, health, dns, tls...)
    <prefix>routes/<listener>     the listener's [[listeners.routes]] as a
                                  JSON array

When any clusters/ key exists, those clusters replace the file's; a
routes/<listener> key replaces that listener's routes. The result goes
through the very same checks as the file (config.parse_raw).
"""
from __future__ import annotations

import copy
import json

from ..config import ConfigError

CLUSTERS = "clusters/"
ROUTES = "routes/"


def split(raw: dict) -> dict:
    """The dynamic part of a parsed TOML document: relative key -> JSON text."""
    out = {}
    for c in raw.get("clusters", []):
        out[CLUSTERS + c["name"]] = json.dumps(c, sort_keys=True)
    for l in raw.get("listeners", []):
        if l.get("routes"):
            out[ROUTES + l["name"]] = json.dumps(l["routes"], sort_keys=True)
    return out


def etcd_keys(text: str, kvs: dict) -> str:
    """An error about the overlaid document, with its key paths written as
    the etcd keys they came from: "clusters[1].servers[0]" is
    "clusters/web.servers[0]" when the second cluster key is clusters/web
    (overlay() lays the clusters in key order)."""
    import re
    clusters = sorted(k for k in kvs if k.startswith(CLUSTERS))
    if clusters:
        text = re.sub(r"\bclusters\[(\d+)\]",
                      lambda m: clusters[int(m.group(1))] if int(m.group(1)) < len(clusters)
                      else m.group(0), text)
    return text


def overlay(raw: dict, kvs: dict, where: str) -> dict:
    """raw (the file's document) with the dynamic part kvs (relative key ->
    JSON text) laid over it. where names the source in errors ("etcd
    127.0.0.1:2379 /uproxy/ revision 42"). Raises ConfigError listing
    every key that is not JSON or not a known kind of key."""
    out = copy.deepcopy(raw)
    errors, clusters, routes = [], [], {}
    listeners = {l.get("name"): l for l in out.get("listeners", []) if isinstance(l, dict)}
    for key in sorted(kvs):
        try:
            value = json.loads(kvs[key])
        except ValueError as e:
            errors.append(ConfigError(where, key, f"not JSON: {e}; write it with `uproxy publish`"))
            continue
        if key.startswith(CLUSTERS) and len(key) > len(CLUSTERS):
            name = key[len(CLUSTERS):]
            if not isinstance(value, dict):
                errors.append(ConfigError(where, key, "must be a JSON object (a [[clusters]] table)"))
                continue
            if value.setdefault("name", name) != name:
                errors.append(ConfigError(where, key, f"names cluster {value['name']!r}; the key "
                                                      f"and the name must agree"))
                continue
            clusters.append(value)
        elif key.startswith(ROUTES) and len(key) > len(ROUTES):
            name = key[len(ROUTES):]
            if name not in listeners:
                errors.append(ConfigError(where, key, f"no listener named {name!r} in the file "
                                                      f"(listeners: {', '.join(sorted(map(str, listeners)))})"))
            elif not isinstance(value, list):
                errors.append(ConfigError(where, key, "must be a JSON array of route tables"))
            else:
                routes[name] = value
        else:
            errors.append(ConfigError(where, key, f"unknown key: the dynamic part has "
                                                  f"{CLUSTERS}<name> and {ROUTES}<listener> keys"))
    if errors:
        raise ConfigError(errors[0].path, errors[0].key, errors[0].message, errors=errors)
    if clusters:
        out["clusters"] = clusters
    for name, r in routes.items():
        listeners[name]["routes"] = r
    return out
