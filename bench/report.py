"""Summaries (medians, min-max, per-round ratios, noise flags), the console
table, results.json's companions, docs/benchmarks.md and the PNG charts."""
from __future__ import annotations

import os
import statistics
import subprocess

from .workloads import METRICS, TITLES

TLS_WORKLOADS = ("tls64", "tls64k", "tls_full", "tls_resume")
TLS_BEGIN = "<!-- tls-section: written by scripts/bench -->"
TLS_END = "<!-- /tls-section -->"
H2_WORKLOADS = ("h2c_1", "h2c_10", "h2c_100", "h2_1", "h2_10", "h2_100")
GRPC_WORKLOADS = ("grpc_unary",)
# The HTTP/2 section's workloads: h2load's 64 B figures (G8) and the gRPC call rate.
H2_SECTION = H2_WORKLOADS + GRPC_WORKLOADS
H2_BEGIN = "<!-- h2-section: written by scripts/bench -->"
H2_END = "<!-- /h2-section -->"

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ORDER = ["direct", "uproxy", "uproxy-buffered", "uproxy-splice-iowq", "uproxy-sockmap", "uproxy-policies", "nginx", "nginx-bigbuf",
         "nginx-policies", "haproxy", "haproxy-splice", "haproxy-policies",
         "envoy", "traefik", "traefik-fast", "caddy"]


def _how_run(st) -> str:
    """The run's options that change how figures compare (cli.py)."""
    how = []
    if st.get("interleave"):
        how.append("interleaved workload by workload (`--interleave`)")
    if st.get("retry_noisy"):
        how.append(f"a noisy run retried up to {st['retry_noisy']} time(s), the quietest kept")
    return "".join(f", {h}" for h in how)


def _noisy(r, threshold):
    n = r.get("noise")
    if not n or not n.get("wall_s"):
        return None
    other = n["other_cpu_s"] / n["wall_s"]
    why = []
    if other > threshold:
        why.append(f"other processes used {other:.2f} CPUs ({', '.join(n.get('other_top', [])[:3])})")
    if n.get("steal_frac", 0) > 0.02:
        why.append(f"steal {n['steal_frac']:.1%}")
    return "; ".join(why) or None


def summarize(res, threshold=0.10) -> dict:
    out = {}
    rounds = res["rounds"]
    for w in res.get("workloads", []):
        ws = out[w] = {}
        for name, info in res["contenders"].items():
            if info.get("missing"):
                ws[name] = {"missing": info["missing"]}
                continue
            if w in info["skipped"]:
                ws[name] = {"skipped": info["skipped"][w]}
                continue
            rs = [(i + 1, rd.get(name, {}).get(w)) for i, rd in enumerate(rounds)]
            rs = [(i, r) for i, r in rs if r is not None]
            entry = {"metrics": {}, "errors": [], "noisy": {}, "rounds": len(rs)}
            for i, r in rs:
                if "error" in r:
                    entry["errors"].append(f"round {i}: {r['error']}")
                    continue
                nz = _noisy(r, threshold)
                if nz:
                    entry["noisy"][i] = nz
                if r.get("errors"):
                    entry.setdefault("request_errors", []).append(f"round {i}: {r.get('error_detail')}")
            for key, _, _ in METRICS[w] + ([("mode", "", "")] if w == "idle" else []):
                vals = [(i, r.get(key)) for i, r in rs if "error" not in r and r.get(key) is not None]
                if key == "mode":
                    if vals:
                        entry["mode"] = vals[0][1]
                    continue
                if not vals:
                    continue
                v = [x for _, x in vals]
                entry["metrics"][key] = {"median": statistics.median(v), "min": min(v), "max": max(v),
                                         "n": len(v), "by_round": {i: x for i, x in vals}}
            ws[name] = entry
        # Per-round ratios against nginx (the reference peer) for the first metric.
        key = METRICS[w][0][0]
        ref = ws.get("nginx", {}).get("metrics", {}).get(key, {}).get("by_round")
        if ref:
            for name, e in ws.items():
                m = e.get("metrics", {}).get(key)
                if not m:
                    continue
                ratios = [m["by_round"][i] / ref[i] for i in m["by_round"] if ref.get(i)]
                if ratios:
                    e["ratio_vs_nginx"] = {"metric": key, "median": statistics.median(ratios),
                                           "min": min(ratios), "max": max(ratios)}
    return out


def short(w, r) -> str:
    if "error" in r:
        return "ERROR " + r["error"][:200]
    if w == "idle":
        return (f"{r['kib_per_conn']:.2f} KiB/conn after a request, {r['kib_per_conn_fresh']:.2f} fresh "
                f"({r['answered']} answered, {r['alive']}/{r['connections']} alive, RSS {r['rss_before_kib']}"
                f"->{r['rss_fresh_kib']}->{r['rss_after_kib']} KiB, mode {r['mode']})")
    nz = r.get("noise", {})
    tail = f"  [other {nz.get('other_cpu_s', 0) / max(nz.get('wall_s', 1), 1e-9):.2f} CPUs]" if nz else ""
    if w == "l4_short":
        sc = r.get("syscalls") or {}
        calls = (f", {sc['total_per_session']:.1f} worker syscalls/session (bpf "
                 f"{sum(sc['bpf_per_session'].values()):.1f})") if "total_per_session" in sc else ""
        share = f", sockmap {r['sockmap_share']:.0%}" if r.get("sockmap_share") else ""
        return (f"{r['sessions_per_s']:.0f} sessions/s, {r['cpu_us_per_session']:.1f} CPU-µs/session, "
                f"machine {r['machine_cpu_us_per_session']:.1f} CPU-µs/session, p99 {r['p99_ms']:.2f} ms"
                f"{share}{calls}{tail}")
    if w.startswith("l4"):
        return f"{r['gbps']:.2f} Gbit/s, {r['cpu_s_per_gib']:.3f} CPU-s/GiB{tail}"
    if w in GRPC_WORKLOADS:
        return (f"{r['rps']:.0f} calls/s, {r['cpu_us_per_req']:.1f} CPU-µs/call, mean "
                f"{(r.get('mean_ms') or 0):.2f} ms, errors {r['errors']}{tail}")
    if w in H2_WORKLOADS:
        return (f"{r['rps']:.0f} req/s, {r['cpu_us_per_req']:.1f} CPU-µs/req, mean "
                f"{(r.get('mean_ms') or 0):.2f} ms, errors {r['errors']}{tail}")
    if w in ("tls_full", "tls_resume"):
        return (f"{r['hs_per_s']:.0f} handshakes/s ({r['resumed']}/{r['handshakes']} resumed), "
                f"{r['cpu_us_per_hs']:.1f} CPU-µs/handshake, p99 {r['p99_ms']:.2f} ms, errors {r['errors']}, "
                f"{r['negotiated']}{tail}")
    if w == "rate":
        return (f"{r['achieved_rps']:.0f}/{r['offered_rps']:.0f} req/s, p50 {r['p50_ms']:.2f} p99 "
                f"{r['p99_ms']:.2f} p99.9 {r['p999_ms']:.2f} ms, {r['cpu_us_per_req']:.1f} CPU-µs/req, "
                f"errors {r['errors']}{tail}")
    return (f"{r['rps']:.0f} req/s, {r['cpu_us_per_req']:.1f} CPU-µs/req, p99 {r['p99_ms']:.2f} ms, "
            f"errors {r['errors']}{tail}")


def _fmt(v, key):
    if v is None:
        return "–"
    if key in ("rps", "achieved_rps", "hs_per_s", "sessions_per_s"):
        return f"{v:,.0f}"
    if key == "resumed_frac":
        return f"{v:.1%}"
    if key == "cpu_s_per_gib":
        return f"{v:.3f}"
    if key in ("gbps", "kib_per_conn", "kib_per_conn_fresh"):
        return f"{v:.2f}"
    if key.endswith("_ms"):
        return f"{v:.2f}"
    return f"{v:.1f}"


def _cell(e, key, with_range=True):
    m = e.get("metrics", {}).get(key)
    if not m:
        return None
    s = _fmt(m["median"], key)
    if with_range and m["n"] > 1:
        s += f" ({_fmt(m['min'], key)}–{_fmt(m['max'], key)})"
    return s


def _ordered(names):
    return sorted(names, key=lambda n: ORDER.index(n) if n in ORDER else 99)


def tables(res, with_range=True, tls=None, only=None) -> str:
    """One markdown table per workload (tls: None all, True only the TLS
    workloads, False all but them and the HTTP/2 ones; only: just these)."""
    out = []
    summ = res["summary"]
    for w in res.get("workloads", []):
        if only is not None:
            if w not in only:
                continue
        elif tls is not None and (w in TLS_WORKLOADS) != tls:
            continue
        elif tls is False and w in H2_SECTION:
            continue
        ws = summ.get(w, {})
        mets = METRICS[w]
        out.append(f"### {TITLES[w]}\n")
        if w == "rate" and res.get("rate"):
            out.append(f"Offered: {res['rate']['offered_rps']:,.0f} req/s "
                       f"({res['rate']['fraction']:.0%} of {res['rate']['from']}).\n")
        head = ["contender"] + [label for _, label, _ in mets] + ["vs nginx", "notes"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for name in _ordered(ws):
            e = ws[name]
            label = res["contenders"][name]["label"]
            if "missing" in e:
                out.append(f"| {label} | " + " | ".join(["–"] * len(mets)) + f" | – | missing: {e['missing']} |")
                continue
            if "skipped" in e:
                continue
            cells = [_cell(e, k, with_range) or "–" for k, _, _ in mets]
            r = e.get("ratio_vs_nginx")
            ratio = f"{r['median']:.3g}x" if r else "–"
            if r and r["max"] - r["min"] > 0.005:
                ratio += f" ({r['min']:.3g}–{r['max']:.3g})"
            notes = []
            if e.get("mode") == "tcp":
                notes.append("tcp listener (HTTP not available yet)")
            if e.get("noisy"):
                notes.append("noisy round" + ("s " if len(e["noisy"]) > 1 else " ") +
                             ", ".join(str(k) for k in sorted(e["noisy"], key=int)))
            if e.get("errors"):
                notes.append("; ".join(x[:160] for x in e["errors"][:2]))
            if e.get("request_errors"):
                notes.append("request errors: " + "; ".join(e["request_errors"][:2])[:200])
            out.append(f"| {label} | " + " | ".join(cells) + f" | {ratio} | {' '.join(notes)} |")
        skipped = [(n, ws[n]["skipped"]) for n in _ordered(ws) if "skipped" in ws[n]
                   and not ws[n]["skipped"].startswith("same as")]
        if skipped:
            out.append("")
            out.append("Not run: " + "; ".join(f"{res['contenders'][n]['label']}: {why}" for n, why in skipped)
                       + ".")
        out.append("")
    return "\n".join(out)


def _family_best(res, w, key, names):
    vals = []
    for n in names:
        m = res["summary"].get(w, {}).get(n, {}).get("metrics", {}).get(key)
        if m:
            vals.append((m["median"], n))
    return min(vals) if vals else None


FAMILY_LABELS = {"uproxy": "uproxy", "nginx": "nginx", "haproxy": "HAProxy", "envoy": "Envoy",
                 "traefik": "Traefik", "caddy": "Caddy"}


def _family_rows(res, ncols, cells) -> list:
    """One markdown row per proxy family that has contenders, in a fixed
    order: cells(names) gives its ncols cells; a family whose contenders
    are all missing says so."""
    fams = {}
    for name, c in res["contenders"].items():
        fams.setdefault(c["family"], []).append(name)
    out = []
    for fam, label in FAMILY_LABELS.items():
        names = fams.get(fam)
        if not names:
            continue
        if all(res["contenders"][n].get("missing") for n in names):
            out.append(f"| {label} | missing" + " |" * ncols)
        else:
            out.append(f"| {label} | " + " | ".join(cells(names)) + " |")
    return out


def tls_md(res) -> str:
    """The TLS section: what each proxy was given, the crypto floor, the
    figures per proxy, the tables, and the library comparison."""
    t = res.get("tls") or {}
    wls = [w for w in res.get("workloads", []) if w in TLS_WORKLOADS]
    out = [TLS_BEGIN, "## TLS 1.3 (issue 12, gate G7)", ""]
    if not wls:
        out += ["Not run in this run (`--workloads tls64,tls64k,tls_full,tls_resume`).", "", TLS_END]
        return "\n".join(out) + "\n"
    m = res["machine"]
    st = res["settings"]
    out.append(f"**This run:** {res['started']}, {'--quick, ' if res.get('quick') else ''}{st['rounds']} round(s) "
               f"of {max(1, round(st['duration']))} s per run{_how_run(st)}, {st['connections']} connections; {m['cpu']}, "
               f"{m['cpus']} CPUs, Linux {m['kernel']}. Proxy on CPU {','.join(map(str, res['cpus']['proxy']))}; "
               f"load generators and the plaintext origin on CPU {','.join(map(str, res['cpus']['load']))}.")
    out.append("")
    out.append("Run by `scripts/bench` with the other workloads, or alone: `scripts/bench --workloads "
               "tls64,tls_full,tls_resume,tls64k --rounds 5 --docs`, which rewrites this section of the page and "
               "nothing else. How each figure is measured: the Method section (TLS) above, and "
               "[tls.md](tls.md#the-tls-library-measured) for the library comparison.")
    out.append("")
    cert = t.get("cert", {})
    out.append(f"Every contender serves the same certificate ({cert.get('kind', 'ECDSA P-256')}, made by the bench "
               "with `openssl req`), and is held to TLS 1.3 with TLS_AES_128_GCM_SHA256 and X25519: the clients "
               "offer nothing else (loadgen by its code; wrk through an OpenSSL configuration file of the "
               "run's in OPENSSL_CONF), and what each handshake run negotiated is checked and shown below. "
               "Behind TLS, each proxy talks plain HTTP/1.1 to the same nginx origin, with upstream keep-alive as "
               "in the plaintext runs.")
    out.append("")
    # Headline per proxy family.
    fl = (t.get("floor") or {})
    out += ["| proxy | 64 B: CPU-µs/req | 64 KiB: CPU-µs/req | full handshake: CPU-µs | resumed: CPU-µs | "
            "full / crypto floor |", "|---|---|---|---|---|---|"]

    def tls_cells(names):
        cells = []
        for w, key in (("tls64", "cpu_us_per_req"), ("tls64k", "cpu_us_per_req"), ("tls_full", "cpu_us_per_hs"),
                       ("tls_resume", "cpu_us_per_hs")):
            b = _family_best(res, w, key, names)
            if b:
                cells.append(f"{b[0]:.1f}")
            else:
                why = ""
                for n in names:
                    e = res["summary"].get(w, {}).get(n, {})
                    if e.get("skipped") and not e["skipped"].startswith("same as"):
                        why = "skipped"
                    elif e.get("errors"):
                        why = "error (below)"
                cells.append(why or "–")
        b = _family_best(res, "tls_full", "cpu_us_per_hs", names)
        cells.append(f"{b[0] / fl['full_us']:.1f}x" if b and fl.get("full_us") else "–")
        return cells
    out += _family_rows(res, 5, tls_cells)
    out.append("")
    out.append("**Gate G7** (DESIGN.md §3), on this run's medians:")
    out.append("")
    out.append(gates_md(res, only=("G7",)))
    skipped_u = res["contenders"].get("uproxy", {}).get("skipped", {})
    why_u = next((skipped_u[w] for w in wls if w in skipped_u), None)
    if why_u:
        out.append(f"uproxy's TLS workloads did not run: {why_u}.")
        out.append("")
    if fl.get("full_us"):
        out.append(f"**The crypto floor** (`{fl['command']}`, {fl['openssl']}, on the proxy CPU): one P-256 "
                   f"signature {fl['p256_sign_us']:.1f} µs, one X25519 operation {fl['x25519_us']:.1f} µs. A full "
                   f"TLS 1.3 handshake costs the server at least one signature and two X25519 operations (its key "
                   f"share, then the shared secret): **{fl['full_us']:.0f} µs**; a resumed one (psk_dhe_ke, as "
                   f"every client here and every browser resumes) the two X25519 operations: "
                   f"**{fl['resumed_us']:.0f} µs**. DESIGN.md's stretch for G7: a full handshake within 3x the "
                   f"floor ({3 * fl['full_us']:.0f} µs).")
    elif fl.get("error"):
        out.append(f"The crypto floor could not be measured: {fl['error']}.")
    out.append("")
    out.append("Contenders' TLS settings (each from its own documentation; the bench's peer modules say where):")
    out.append("")
    out += ["| contender | TLS settings |", "|---|---|"]
    for name in _ordered(res["contenders"]):
        c = res["contenders"][name]
        if c.get("missing") or all(w in c.get("skipped", {}) for w in wls):
            continue
        out.append(f"| {c['label']} | {c.get('tls_tuning') or '–'} |")
    out.append("")
    neg = set()
    for rd in res["rounds"]:
        for name, rows in rd.items():
            for w in ("tls_full", "tls_resume"):
                r = rows.get(w) if isinstance(rows, dict) else None
                if isinstance(r, dict) and r.get("negotiated"):
                    neg.add((res["contenders"][name]["label"], r["negotiated"]))
    if neg:
        odd = sorted(x for x in neg if x[1] != "TLSv1.3 TLS_AES_128_GCM_SHA256 X25519")
        out.append("Negotiated in the handshake runs (loadgen offers only TLS_AES_128_GCM_SHA256 and X25519): " + (
            "TLSv1.3 TLS_AES_128_GCM_SHA256 X25519 by every contender." if not odd else
            "; ".join(f"{a}: {b}" for a, b in sorted(neg))) + "")
        out.append("")
    seen = {}
    for rd in res["rounds"]:
        for name, rows in rd.items():
            if isinstance(rows, dict) and rows.get("_tls_seen"):
                seen.setdefault(rows["_tls_seen"], set()).add(res["contenders"][name]["label"])
    if seen:
        out.append("For comparison, what a client offering OpenSSL's default TLS 1.3 suites (AES-256-GCM first; "
                   "wrk's default, which the bench overrides with OPENSSL_CONF) gets at each contender's start: " +
                   "; ".join(f"{k} ({', '.join(sorted(v))})" for k, v in sorted(seen.items())) + ".")
        out.append("")
    out.append(tables(res, tls=True))
    out.append(libs_md(t.get("libs")))
    out.append(TLS_END)
    return "\n".join(out) + "\n"


def libs_md(libs) -> str:
    if not libs:
        return "The TLS library comparison was not run (`--no-tls-libs`).\n"
    out = ["### The TLS libraries, in one process (bench/tls_libs.c)", "",
           "Client and server of the same library in one thread, talking through in-memory queues (no "
           "sockets, no kernel): TLS 1.3, TLS_AES_128_GCM_SHA256, X25519, this run's certificate, one "
           "session ticket per handshake, no server session cache; the server's and the client's time apart "
           "(the server's is what a proxy pays), malloc-family and pthread lock calls counted by interposition. "
           "A keep-alive round trip is an 80-byte request record one way and a 200-byte response record back.",
           "", f"Medians of {libs.get('rounds', 1)} interleaved round(s) of {libs.get('seconds', '?')} s per figure; "
           "the handshake columns give handshakes per second for one core and the rounds' range.",
           "", "| library | full handshake: server µs (/s, range) | resumed: server µs (/s, range) | allocs, locks per full "
           "handshake (server) | keep-alive round trip: server µs, allocs | 16 KiB records: seal, open MB/s |",
           "|---|---|---|---|---|---|"]
    for r in libs["rows"]:
        f, rs, k, rec = r["full"], r["resumed"], r["keepalive"], r["records16k"]
        note = "" if rs["resumed"] >= rs["n"] - 1 else f" ({rs['resumed']:.0f} of {rs['n']:.0f} resumed)"
        fr, rr = f.get("server_us_range"), rs.get("server_us_range")
        frs = f", {fr[0]:.0f}–{fr[1]:.0f}" if fr and r.get("rounds", 1) > 1 else ""
        rrs = f", {rr[0]:.0f}–{rr[1]:.0f}" if rr and r.get("rounds", 1) > 1 else ""
        out.append(f"| {r['name']} ({r['library']}) | {f['server_us']:.0f} ({f['server_per_s']:,.0f}{frs}) | "
                   f"{rs['server_us']:.0f} ({rs['server_per_s']:,.0f}{rrs}){note} | {f['server_allocs']:.0f}, "
                   f"{f['server_locks']:.0f} | {k['server_us']:.2f}, {k['server_allocs']:.1f} | "
                   f"{rec['seal_mb_s']:,.0f}, {rec['open_mb_s']:,.0f} |")
    for name, why in (libs.get("not_run") or {}).items():
        out.append(f"| {name} | not run: {why} | | | | |")
    out.append("")
    out.append("Why the project uses what it uses, with these figures: [tls.md](tls.md#the-tls-library-measured).")
    return "\n".join(out) + "\n"


def profile_md(res) -> str:
    p = res.get("uproxy_profile") or {}
    if "skipped" in p:
        return f"Not measured ({p['skipped']}).\n"
    out = []
    cg = p.get("callgrind", {})
    if cg.get("error"):
        out.append(f"- callgrind: could not run: {cg['error']}")
    elif cg:
        out.append(f"- Measured through: {cg['target']}; {cg['requests']:,} requests after "
                   f"{cg['warmup']:,} of warm-up, worker thread only ({cg.get('valgrind', 'valgrind')}).")
        out.append(f"- Instructions per request: **{cg['ir_per_req']:,.0f}**")
        out.append(f"- Simulated cache misses per request (callgrind --cache-sim=yes, cachegrind's model): "
                   f"D1 {cg['d1_miss_per_req']:.1f}, LL {cg['ll_miss_per_req']:.2f}, I1 {cg['i1_miss_per_req']:.1f}")
        out.append(f"- Other threads over the same window: {cg.get('other_threads', {})}")
    al = p.get("allocations", {})
    if al.get("error"):
        out.append(f"- Allocations: could not measure: {al['error']}")
    elif al:
        out.append(f"- Heap allocations in the worker thread, LD_PRELOAD counter (tests/native/alloccount.c), "
                   f"through {al['target']}: {al['a']} after warm-up + {al['n']:,} requests, {al['b']} after "
                   f"warm-up + {al['n10']:,}: **{al['per_request']:.4f} per request** after warm-up.")
    pm = p.get("perf", {})
    if pm:
        if pm.get("available"):
            out.append(f"- perf (real PMU) per request: {pm.get('per_request')}")
        else:
            out.append(f"- Hardware counters (cycles, instructions, cache and branch misses): not measured: "
                       f"{pm.get('why')}.")
    return "\n".join(out) + "\n"


def gates_md(res, only=None) -> str:
    gs = [g for g in res.get("gates", []) if only is None or g["id"] in only]
    out = ["| gate | what | uproxy | bound (this run) | status |", "|---|---|---|---|---|"]
    for g in gs:
        out.append(f"| {g['id']} | {g['what']} | {g['value']} | {g['bound']} | **{g['status']}** |")
    out.append("")
    for g in gs:
        if g.get("note"):
            out.append(f"- {g['id']}{' (' + g['part'] + ')' if g.get('part') else ''}: {g['note']}")
    return "\n".join(out) + "\n"


def contenders_md(res) -> str:
    out = ["| contender | version | tuning | status |", "|---|---|---|---|"]
    for name in _ordered(res["contenders"]):
        c = res["contenders"][name]
        st = f"missing: {c['missing']}" if c.get("missing") else "ran"
        out.append(f"| {c['label']} | {c.get('version') or '–'} | {c['tuning']} | {st} |")
    return "\n".join(out) + "\n"


def noise_md(res) -> str:
    lines = []
    for rn, rd in enumerate(res["rounds"], 1):
        for name, rows in rd.items():
            for w, r in rows.items():
                if not isinstance(r, dict) or "noise" not in r:
                    continue
                nz = _noisy(r, res["settings"].get("noise_threshold", 0.1))
                if nz:
                    lines.append(f"- round {rn}, {name}, {w}: {nz}")
    loads = [r["noise"]["loadavg_start"] for rd in res["rounds"] for rows in rd.values()
             for r in rows.values() if isinstance(r, dict) and "noise" in r]
    steal = [r["noise"]["steal_frac"] for rd in res["rounds"] for rows in rd.values()
             for r in rows.values() if isinstance(r, dict) and "noise" in r]
    head = ""
    if loads:
        head = (f"Load average at run starts: {min(loads):.2f}–{max(loads):.2f}; steal "
                f"{max(steal):.1%} at most. ")
    if not lines:
        return head + "No run was flagged noisy.\n"
    return head + f"{len(lines)} runs flagged noisy (other processes' CPU above the threshold):\n\n" + \
        "\n".join(lines[:40]) + ("\n- …" if len(lines) > 40 else "") + "\n"


def headline_md(res) -> str:
    """The short table for the README: CPU per request and the gates."""
    s = res["summary"]
    rows = ["| proxy | 64 B: CPU-µs/req | 64 KiB: CPU-µs/req | L4 1 stream: Gbit/s, CPU-s/GiB | idle KiB/conn |",
            "|---|---|---|---|---|"]
    fams = {}
    for name, c in res["contenders"].items():
        fams.setdefault(c["family"], []).append(name)

    def best(w, names, key, low=True):
        vals = []
        for n in names:
            m = s.get(w, {}).get(n, {}).get("metrics", {}).get(key)
            if m:
                vals.append((m["median"], n))
        if not vals:
            return None
        return (min if low else max)(vals)

    for fam in ["uproxy", "nginx", "haproxy", "envoy", "traefik", "caddy"]:
        names = fams.get(fam)
        if not names:
            continue
        label = {"uproxy": "uproxy", "nginx": "nginx", "haproxy": "HAProxy", "envoy": "Envoy",
                 "traefik": "Traefik", "caddy": "Caddy"}[fam]
        if all(res["contenders"][n].get("missing") for n in names):
            rows.append(f"| {label} | missing | | | |")
            continue
        if fam == "uproxy" and "uproxy" in names:
            names = ["uproxy"]   # what a user gets: the defaults, not the best variant
        a = best("http64", names, "cpu_us_per_req")
        b = best("http64k", names, "cpu_us_per_req")
        g = best("l4_1", names, "gbps", low=False)
        cpg = s.get("l4_1", {}).get(g[1], {}).get("metrics", {}).get("cpu_s_per_gib") if g else None
        m = best("idle", names, "kib_per_conn")
        na = "n/a yet" if fam == "uproxy" else "–"
        c1 = f"{a[0]:.1f}" if a else na
        c2 = f"{b[0]:.1f}" if b else na
        c3 = f"{g[0]:.1f}, {cpg['median']:.2f}" if g and cpg else "–"
        c4 = f"{m[0]:.2f}" if m else "–"
        rows.append(f"| {label} | {c1} | {c2} | {c3} | {c4} |")
    return "\n".join(rows) + "\n"


# DESIGN.md's anchors (a 2-core VM, medians of 5 interleaved rounds): the
# harness should land in the same order of magnitude for the peers.
ANCHORS = [
    ("http64", "nginx", "cpu_us_per_req", 16.4), ("http64", "haproxy", "cpu_us_per_req", 17.0),
    ("http64", "envoy", "cpu_us_per_req", 51.3), ("http64", "traefik", "cpu_us_per_req", 61.9),
    ("http64", "caddy", "cpu_us_per_req", 84.7),
    ("http64k", "nginx-bigbuf", "cpu_us_per_req", 39.2), ("http64k", "haproxy", "cpu_us_per_req", 47.7),
    ("http64k", "envoy", "cpu_us_per_req", 73.2), ("http64k", "traefik", "cpu_us_per_req", 112),
    ("l4_1", "nginx-bigbuf", "gbps", 16.1), ("l4_1", "nginx-bigbuf", "cpu_s_per_gib", 0.41),
    ("l4_1", "haproxy-splice", "gbps", 15.5), ("l4_1", "haproxy-splice", "cpu_s_per_gib", 0.31),
    ("l4_1", "envoy", "gbps", 15.1), ("l4_1", "envoy", "cpu_s_per_gib", 0.46),
    ("l4_1", "traefik", "gbps", 11.0), ("l4_1", "traefik", "cpu_s_per_gib", 0.68),
    ("idle", "nginx", "kib_per_conn", 0.57), ("idle", "haproxy", "kib_per_conn", 1.18),
    ("idle", "envoy", "kib_per_conn", 16.1), ("idle", "traefik", "kib_per_conn", 28.6),
]


def anchors_md(res) -> str:
    s = res["summary"]
    out = ["| workload | contender | figure | anchor | this run | this run / anchor |", "|---|---|---|---|---|---|"]
    labels = {k: lab for w in METRICS.values() for k, lab, _ in w}
    for w, name, key, anchor in ANCHORS:
        m = s.get(w, {}).get(name, {}).get("metrics", {}).get(key)
        label = res["contenders"].get(name, {}).get("label", name)
        got = _fmt(m["median"], key) if m else "–"
        ratio = f"{m['median'] / anchor:.2f}" if m else "–"
        out.append(f"| {w} | {label} | {labels.get(key, key)} | {anchor:g} | {got} | {ratio} |")
    return "\n".join(out) + "\n"


def _settings_table(res, workloads, what: str, key: str) -> list:
    """Each contender's settings line for some workloads (those it runs at
    least one of), as a table; nothing when none of them ran."""
    if not workloads:
        return []
    out = [f"Contenders' {what} settings (each from its own documentation; the bench's peer modules say where):",
           "", f"| contender | {what} settings |", "|---|---|"]
    for name in _ordered(res["contenders"]):
        c = res["contenders"][name]
        if c.get("missing") or all(w in c.get("skipped", {}) for w in workloads):
            continue
        out.append(f"| {c['label']} | {c.get(key) or '–'} |")
    return out + [""]


def h2_md(res) -> str:
    """The HTTP/2 section (issue 17, gate G8): the figures per proxy, the
    gate, the gRPC call rate, each proxy's settings and the tables."""
    wls = [w for w in res.get("workloads", []) if w in H2_SECTION]
    out = [H2_BEGIN, "## HTTP/2 from clients, and gRPC (issue 17, gate G8)", ""]
    if not wls:
        out += ["Not run in this run (`--workloads " + ",".join(H2_SECTION) + "`).", "", H2_END]
        return "\n".join(out) + "\n"
    m, st = res["machine"], res["settings"]
    out.append(f"**This run:** {res['started']}, {'--quick, ' if res.get('quick') else ''}{st['rounds']} round(s) "
               f"of {max(1, round(st['duration']))} s per run{_how_run(st)}; {m['cpu']}, {m['cpus']} CPUs, Linux {m['kernel']}. "
               f"Proxy on CPU {','.join(map(str, res['cpus']['proxy']))}; h2load and the HTTP/1.1 origin on CPU "
               f"{','.join(map(str, res['cpus']['load']))}.")
    out.append("")
    out.append("h2load (nghttp2) opens 16 connections and keeps 1, 10 or 100 streams in flight on each, for "
               "64 B responses; in cleartext with prior knowledge (h2c) and over TLS 1.3 (ALPN h2, checked; "
               "TLS_AES_128_GCM_SHA256 and X25519 through the run's OpenSSL configuration). Each proxy gets "
               "HTTP/2 on listeners of its own and talks HTTP/1.1 with keep-alive to the same nginx origin. "
               "The proxy's CPU is counted over the whole h2load run (its 16 connections' set-up included). "
               "gRPC unary calls (`grpc_unary`): h2load's 16 connections keep 10 calls in flight each, "
               "every call a POST of a framed 64-byte message with `content-type: application/grpc` and "
               "`te: trailers`, to an h2c listener of each proxy, which speaks HTTP/2 (h2c) to an h2c gRPC "
               "listener of the same nginx origin answering a framed 64-byte message and `grpc-status: 0` "
               "in trailers; one call through the proxy with `nghttp -v` before and after each run must come "
               "back whole with its trailers, and h2load's DATA bytes must show every counted call's "
               "message (a gRPC error is an HTTP 200 without one). The call rate is reported, not gated: "
               "G8 is h2load's 64 B figures. "
               "Alone: `scripts/bench --workloads " + ",".join(H2_SECTION) + " --rounds 3 --docs`, which "
               "rewrites this section and nothing else.")
    out.append("")
    head = [w for w in H2_WORKLOADS if w in wls]
    grpc = [w for w in GRPC_WORKLOADS if w in wls]
    out += ["| proxy | " + " | ".join([f"{w}: CPU-µs/req" for w in head] + [f"{w}: CPU-µs/call, calls/s" for w in grpc])
            + " |", "|---|" + "---|" * (len(head) + len(grpc))]

    def h2_cells(names):
        cells = [f"{b[0]:.1f}" if (b := _family_best(res, w, "cpu_us_per_req", names)) else "–" for w in head]
        for w in grpc:
            b = _family_best(res, w, "cpu_us_per_req", names)
            rps = res["summary"].get(w, {}).get(b[1], {}).get("metrics", {}).get("rps") if b else None
            cells.append(f"{b[0]:.1f}, {rps['median']:,.0f}" if b and rps else "–")
        return cells
    out += _family_rows(res, len(head) + len(grpc), h2_cells)
    out.append("")
    out.append("**Gate G8** (DESIGN.md §3), on this run's medians:")
    out.append("")
    out.append(gates_md(res, only=("G8",)))
    out += _settings_table(res, head, "HTTP/2", "h2_tuning")
    out += _settings_table(res, grpc, "gRPC", "grpc_tuning")
    out.append(tables(res, only=H2_SECTION))
    out.append(H2_END)
    return "\n".join(out) + "\n"


def l4short_md(res) -> str:
    """The short-L4-session section (issue 14): each contender's machine
    CPU per session above the direct run's (the same sessions without a
    proxy), and uproxy's worker syscalls per session by forwarding."""
    if "l4_short" not in res.get("workloads", []):
        return "Not run in this run (`--workloads l4_short`).\n"
    ws = res["summary"].get("l4_short", {})

    def med(name, key):
        m = ws.get(name, {}).get("metrics", {}).get(key)
        return m["median"] if m else None
    floor = med("direct", "machine_cpu_us_per_session")
    out = ["| contender | sessions/s | proxy CPU-µs/session | machine CPU-µs/session | above direct |",
           "|---|---|---|---|---|"]
    for name in _ordered(ws):
        m = med(name, "machine_cpu_us_per_session")
        if m is None:
            continue
        above = f"{m - floor:.1f}" if floor is not None and name != "direct" else "–"
        out.append(f"| {res['contenders'][name]['label']} | {_fmt(med(name, 'sessions_per_s'), 'rps')} | "
                   f"{_fmt(med(name, 'cpu_us_per_session'), '')} | {m:.1f} | {above} |")
    out.append("")
    calls = {}
    for rd in res.get("rounds", []):
        for name, rows in rd.items():
            sc = (rows.get("l4_short") or {}).get("syscalls") or {}
            if "per_session" in sc:
                calls[name] = sc          # the last round's count (they are exact counts, round to round)
    if calls:
        out += ["uproxy's worker, syscalls per session (strace on the worker thread over "
                f"{next(iter(calls.values()))['sessions']:,} sessions after the timed run; io_uring's "
                "operations ride on `io_uring_enter`):", "",
                "| contender | in all | by call | bpf by command |", "|---|---|---|---|"]
        for name in _ordered(calls):
            sc = calls[name]
            by = ", ".join(f"{k} {v:.2f}" for k, v in sc["per_session"].items())
            bpf = ", ".join(f"{k.replace('BPF_MAP_', '').lower()} {v:.2f}"
                            for k, v in sc["bpf_per_session"].items()) or "–"
            out.append(f"| {res['contenders'][name]['label']} | {sc['total_per_session']:.2f} | {by} | {bpf} |")
        out.append("")
    return "\n".join(out) + "\n"


def steering_md(res) -> str:
    """How loopback's receive was steered during the L4 stream runs
    (scripts/bench --rps/--rfs, bench/rps.py); "" when none ran."""
    if not any(w in ("l4_1", "l4_64") for w in res.get("workloads", [])):
        return ""
    st = res.get("l4_steering", "off")
    if st == "off":
        return ("L4 stream runs (l4_1, l4_64): loopback's receive processing ran in the sender's softirq, on "
                "the sender's CPU (no RPS: the bench's default, `--rps` changes it).")
    return (f"L4 stream runs (l4_1, l4_64): {st}, set for every contender's run alike (the direct "
            "transfer's too) and put back after each run (`--rps`, bench/rps.py).")


def console(res) -> str:
    out = ["", tables(res, with_range=True)]
    if steering_md(res):
        out += [steering_md(res), ""]
    if res.get("probe_cost"):
        out += ["The probes' cost: " + __import__("bench.probe_cost", fromlist=["md"]).md(res)]
    out += ["Gates (DESIGN.md §3):"]
    for g in res.get("gates", []):
        out.append(f"  {g['id']} {g['status']:7} {g['what']}: uproxy {g['value']} vs {g['bound']}")
    return "\n".join(out)


def splice_section(page: str, section: str, begin: str, end: str) -> str:
    """docs/benchmarks.md with the section between begin and end (the TLS
    or the HTTP/2 one) replaced by this one, or put before the uproxy
    profile section when the page has none yet."""
    if begin in page and end in page:
        a = page.index(begin)
        b = page.index(end) + len(end)
        return page[:a] + section.rstrip("\n") + page[b:]
    mark = "## uproxy: instructions"
    if mark in page:
        i = page.index(mark)
        return page[:i] + section + "\n" + page[i:]
    return page.rstrip("\n") + "\n\n" + section


def write_all(res, out, docs, bench_venv):
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(document(res, png_prefix=""))
    charts = _charts(res, out, bench_venv)
    wls = res.get("workloads", [])
    for mine, begin, end, md in ((TLS_WORKLOADS, TLS_BEGIN, TLS_END, tls_md),
                                 (H2_SECTION, H2_BEGIN, H2_END, h2_md)):
        if docs and wls and all(w in mine for w in wls):
            # A TLS-only (HTTP/2-only) run replaces that section of the page and nothing else.
            path = os.path.join(ROOT, "docs", "benchmarks.md")
            page = open(path).read() if os.path.exists(path) else document(res, png_prefix="")
            with open(path, "w") as f:
                f.write(splice_section(page, md(res), begin, end))
            return
    if docs:
        ddir = os.path.join(ROOT, "docs")
        os.makedirs(ddir, exist_ok=True)
        with open(os.path.join(ddir, "benchmarks.md"), "w") as f:
            f.write(document(res, png_prefix=""))
        for c in charts:
            src = os.path.join(out, c)
            if os.path.exists(src):
                with open(src, "rb") as a, open(os.path.join(ddir, c), "wb") as b:
                    b.write(a.read())


def _charts(res, out, bench_venv) -> list:
    py = os.path.join(bench_venv, "bin", "python")
    import json
    path = os.path.join(out, "results.json")
    if not os.path.exists(path):
        with open(path, "w") as f:
            json.dump(res, f, default=str)
    if not os.access(py, os.X_OK):
        res.setdefault("notes", []).append(f"no charts: {py} missing (matplotlib lives in the bench venv)")
        return []
    r = subprocess.run([py, "-m", "bench.charts", path, out], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": ROOT, "MPLBACKEND": "Agg"})
    if r.returncode != 0:
        res.setdefault("notes", []).append(f"charts failed: {r.stderr.strip()[-300:]}")
        return []
    return [l.strip() for l in r.stdout.splitlines() if l.strip().endswith(".png")]


def document(res, png_prefix="") -> str:
    with open(os.path.join(HERE, "doc_template.md")) as f:
        tpl = f.read()
    m = res["machine"]
    st = res["settings"]
    wu = (f"+{st['warmup']:g} s warm-up" if st["warmup"] >= 1 else "after a 1,000-request warm-up")
    run = (f"{res['started']}, {'--quick, ' if res.get('quick') else ''}{st['rounds']} round(s) of "
           f"{max(1, round(st['duration']))} s per run ({wu}), {st['connections']} connections, "
           f"{st['idle_conns']:,} idle connections; {res.get('elapsed_s', 0) / 60:.1f} minutes in all. "
           f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory_mib']:,} MiB, Linux {m['kernel']}, "
           f"{m['os']}{', ' + m['virtualization'] if m.get('virtualization') else ''}. Proxy on CPU "
           f"{','.join(map(str, res['cpus']['proxy']))}; load generators and upstream on CPU "
           f"{','.join(map(str, res['cpus']['load']))}.")
    if steering_md(res):
        run += " " + steering_md(res)
    missing = "".join(f"- **{k}**: {v}\n" for k, v in res.get("missing", {}).items()) or "None.\n"
    rep = {
        "{{RUN}}": run,
        "{{HEADLINE}}": headline_md(res),
        "{{GATES}}": gates_md(res),
        "{{CONTENDERS}}": contenders_md(res),
        "{{MISSING}}": missing,
        "{{TABLES}}": tables(res, tls=False),
        "{{TLS}}": tls_md(res),
        "{{H2}}": h2_md(res),
        "{{L4SHORT}}": l4short_md(res),
        "{{PROBES}}": __import__("bench.probe_cost", fromlist=["md"]).md(res),
        "{{PROFILE}}": profile_md(res),
        "{{NOISE}}": noise_md(res),
        "{{ANCHORS}}": anchors_md(res),
        "{{PNG}}": png_prefix,
    }
    for k, v in rep.items():
        tpl = tpl.replace(k, v)
    if not res.get("uproxy_build_matches_tree", True):
        tpl = tpl.replace("**This run:**", "**This run** (warning: uproxy's built C core did not match native/ "
                          "in the tree; scripts/setup rebuilds it):", 1)
    if res.get("quick"):
        banner = ("> **These figures come from `scripts/bench --quick`** (one round of 1-second runs): a check "
                  "that the harness works, not a result. The figures that decide are those of a full "
                  "`scripts/bench` on a quiet machine.\n\n")
        tpl = tpl.replace("## Headline", banner + "## Headline", 1)
    return tpl
