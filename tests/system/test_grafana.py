"""examples/grafana-uproxy.json: every expression in it names metrics (and
groups by labels) that a real proxy's /metrics exports."""
import json
import os
import re

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from http_upstream import HttpUpstream
from support import ROOT, free_port, wait_for

DASHBOARD = os.path.join(ROOT, "examples", "grafana-uproxy.json")
PROMQL_WORDS = {"sum", "rate", "count", "max", "by", "histogram_quantile", "changes", "or",
                "label_values"}


def expressions(doc) -> list:
    """Every PromQL expression: panel targets (rows' nested panels too),
    annotations and template-variable queries."""
    out = []

    def panels(ps):
        for p in ps:
            for t in p.get("targets", []):
                out.append(("panel " + p["title"], t["expr"], t.get("legendFormat", "")))
            panels(p.get("panels", []))
    panels(doc["panels"])
    for a in doc.get("annotations", {}).get("list", []):
        if a.get("expr"):
            out.append(("annotation " + a["name"], a["expr"], ""))
    for v in doc.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if v.get("type") == "query" and q:
            out.append(("variable " + v["name"], q, ""))
    return out


def metric_names(expr) -> set:
    return set(re.findall(r"\buproxy_[a-z0-9_]+\b", expr))


def grouping_labels(expr) -> set:
    labels = set()
    for m in re.finditer(r"\bby\s*\(([^)]*)\)", expr):
        labels |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    return labels


@pytest.fixture
def scrape(proxy_factory):
    up = HttpUpstream()
    port, admin = free_port(), free_port()
    proxy_factory([{"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c",
                    "routes": [{"path_prefix": "/", "cluster": "c"}]}],
                  [{"name": "c", "servers": [up.addr], "health": {"path": "/", "interval": "100ms"}}],
                  extra=f'\n[admin]\nbind = "127.0.0.1:{admin}"\n')
    with httpx.Client() as c:
        for _ in range(5):
            assert c.get(f"http://127.0.0.1:{port}/").status_code == 200

        def metrics():
            try:
                r = c.get(f"http://127.0.0.1:{admin}/metrics")
            except httpx.HTTPError:
                return None
            return r.text if "uproxy_server_health{" in r.text else None
        text = wait_for(metrics, 10, what="/metrics with a checked server")
    up.close()
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples.setdefault(s.name, set()).update(s.labels)
    return samples


def test_dashboard_is_grafana_json():
    with open(DASHBOARD) as f:
        doc = json.load(f)
    assert doc["title"] and doc["uid"] and doc["panels"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for p in doc["panels"]:
        assert set(p["gridPos"]) == {"h", "w", "x", "y"} and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] != "row":
            assert p["targets"], p["title"]
    # the errors come first
    assert doc["panels"][0]["type"] == "row" and "Errors" in doc["panels"][0]["title"]


def test_every_expression_names_an_exported_metric(scrape):
    with open(DASHBOARD) as f:
        doc = json.load(f)
    exprs = expressions(doc)
    assert len(exprs) > 40
    labels_known = set().union(*scrape.values()) | {"le", "instance", "job"}
    used = set()
    problems = []
    for where, expr, legend in exprs:
        names = metric_names(expr)
        if not names:
            problems.append(f"{where}: no uproxy metric in {expr!r}")
        for n in names:
            used.add(n)
            if n not in scrape:
                problems.append(f"{where}: {n} is not exported by /metrics")
        for lab in grouping_labels(expr) | set(re.findall(r"\{\{(\w+)\}\}", legend)):
            if lab not in labels_known:
                problems.append(f"{where}: label {lab!r} is not on any exported metric")
        # grouped labels must be on the metric grouped
        for n in names & set(scrape):
            for lab in grouping_labels(expr) - {"le"}:
                if lab not in scrape[n] and lab not in ("instance", "job"):
                    problems.append(f"{where}: {n} has no label {lab!r}")
    assert not problems, "\n".join(problems)
    # the errors-first metrics are all there
    for n in ("uproxy_resp_5xx_total", "uproxy_resp_4xx_total", "uproxy_server_errors_total",
              "uproxy_server_connect_errors_total", "uproxy_server_health",
              "uproxy_health_ejections_total", "uproxy_request_duration_seconds_bucket"):
        assert n in used, n
