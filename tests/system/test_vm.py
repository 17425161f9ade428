"""uproxy in a VM: scripts/vm-test (qemu) and the Vagrantfile.

- The VM smoke (`scripts/vm-test --smoke`) builds uproxy in a Debian 12
  guest on its own 6.1 kernel, runs `uproxy doctor`, a few L4 tests under
  both io_uring profiles, and the eBPF probe tests against the guest's
  matching kernel headers.
- The 5.10 refusal (`scripts/vm-test --kernel 5.10`) boots Debian 11's
  kernel: `uproxy run` must refuse with a clear message and `uproxy doctor`
  must explain.
- The Vagrantfile must pass `vagrant validate`.

Each is skipped, with the reason, where it cannot run: UPROXY_SKIP_VM is
set (it is inside the test VM itself), qemu or debootstrap are missing
(scripts/setup --test installs them), or the image cannot be built (it
needs root). The first run builds the image (a few minutes), later runs
reuse it from ~/.cache/uproxy/vm.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VM_TEST = ROOT / "scripts" / "vm-test"
CACHE = Path(os.environ.get("UPROXY_VM_CACHE")
             or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "uproxy" / "vm")


def _vm_skip_reason():
    if os.environ.get("UPROXY_SKIP_VM"):
        return f"UPROXY_SKIP_VM is set ({os.environ['UPROXY_SKIP_VM']})"
    missing = [t for t in ("qemu-system-x86_64", "qemu-img", "debootstrap", "mkfs.ext4")
               if not shutil.which(t)]
    if missing:
        return (f"{', '.join(missing)} not installed (scripts/setup --test installs "
                f"qemu-system-x86, qemu-utils and debootstrap)")
    if os.geteuid() != 0 and not (CACHE / "root.img").exists():
        return f"no VM image in {CACHE} and building one needs root (debootstrap)"
    return None


def _vm_test(*args, timeout):
    """Runs scripts/vm-test; returns (exit status, output, seconds). If it
    overruns, its whole process group (qemu included) is stopped."""
    t = time.monotonic()
    p = subprocess.Popen([str(VM_TEST), "--timeout", str(timeout), *args], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         errors="replace", start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout + 900)     # + an image build
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            out, _ = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
        out += "\n(test_vm: scripts/vm-test overran its time and was stopped)\n"
    took = time.monotonic() - t
    # The console, for the log of a failing run (pytest shows captured output).
    print(out)
    print(f"scripts/vm-test {' '.join(args)}: exit {p.returncode} in {took:.0f} s")
    return p.returncode, out, took


def _fails(out):
    return re.findall(r"^uproxy-vm: \[ *\d+s\] FAIL: (.*)$", out, re.M)


def _known_doctor_sigill(out):
    """uproxy doctor killed by SIGILL inside python-liburing's extension:
    its wheel uses AVX-512 instructions unconditionally, and the guest's CPU
    (qemu's software emulation, like many real CPUs) has no AVX-512."""
    return ("uproxy doctor was killed by signal 4 (ILL)" in out
            and re.search(r"traps: .* in liburing\.so", out) is not None)


@pytest.fixture(scope="module")
def vm():
    why = _vm_skip_reason()
    if why:
        pytest.skip(why)


def test_vm_smoke(vm, record_property):
    rc, out, took = _vm_test("--smoke", timeout=1500)
    record_property("seconds", round(took))
    assert rc != 124, "the VM smoke timed out"
    fails = _fails(out)
    if rc != 0 and fails == ["uproxy doctor crashed (exit 132)"] and _known_doctor_sigill(out):
        pytest.xfail("everything passed in the VM but uproxy doctor, which dies of SIGILL in "
                     "python-liburing (its wheel uses AVX-512 unconditionally; the guest's CPU "
                     "has none)")
    assert rc == 0, f"VM smoke failed (exit {rc}): {fails or out[-3000:]}"
    assert "passed" in out


def test_vm_kernel_5_10_is_refused(vm, record_property):
    rc, out, took = _vm_test("--kernel", "5.10", timeout=900)
    record_property("seconds", round(took))
    assert "booted Linux 5.10." in out, out[-3000:]
    assert rc == 0, f"5.10 refusal check failed (exit {rc}): {_fails(out) or out[-3000:]}"
    assert "needs Linux 5.15" in out


# ---- Vagrantfile --------------------------------------------------------------

def _have_or_install(cmd, pkg):
    """The path of cmd, installing Debian's pkg for it when it is missing;
    (None, the reason) when it cannot be had."""
    v = shutil.which(cmd)
    if v:
        return v, None
    if os.environ.get("UPROXY_IN_VM"):
        return None, f"{cmd} is not installed in the test VM (it has no network)"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, f"{cmd} is not installed (apt-get install {pkg}, as root)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", pkg]
    try:
        r = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
            r = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return None, f"installing Debian's {pkg} package timed out"
    v = shutil.which(cmd)
    if not v:
        return None, f"Debian's {pkg} package did not install: {(r.stderr or r.stdout)[-500:]}"
    return v, None


def test_vagrantfile_validates(tmp_path):
    vagrant, why = _have_or_install("vagrant", "vagrant")
    if not vagrant:
        pytest.skip(why)
    # In a copy: vagrant writes .vagrant/ beside the Vagrantfile.
    shutil.copy(ROOT / "Vagrantfile", tmp_path / "Vagrantfile")
    env = dict(os.environ, VAGRANT_CWD=str(tmp_path), VAGRANT_HOME=str(tmp_path / "vagrant.d"),
               VAGRANT_CHECKPOINT_DISABLE="1")
    # -p: no provider (VirtualBox, libvirt) is installed here; the rest is checked.
    r = subprocess.run([vagrant, "validate", "-p"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validated successfully" in r.stdout
    for name in ("jammy", "bookworm"):
        assert f"==> {name}:" in r.stdout, r.stdout


def test_vagrant_provision_scripts_are_valid_shell(tmp_path):
    """The inline provisioning scripts, as the Vagrantfile renders them, parse
    as shell, and the liburing one checks the sums it downloads."""
    ruby = shutil.which("ruby")
    if not ruby:
        pytest.skip("ruby is not installed (it comes with Debian's vagrant package)")
    stub = tmp_path / "stub.rb"
    stub.write_text("module Vagrant\n  def self.configure(*) end\nend\n"
                    "load ARGV[0]\nprint LIBURING_SCRIPT, \"\\0\", SETUP_SCRIPT\n")
    r = subprocess.run([ruby, str(stub), str(ROOT / "Vagrantfile")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    liburing, setup = r.stdout.split("\0")
    for name, text in (("liburing", liburing), ("setup", setup)):
        p = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
        assert p.returncode == 0, f"{name}: {p.stderr}"
    assert liburing.count("sha256sum -c") == 2
    assert "liburing2_2.3-3_amd64.deb" in liburing and "liburing-dev_2.3-3_amd64.deb" in liburing
    assert "./scripts/setup --test" in setup


def _ruby_constant(tmp_path, name):
    ruby = shutil.which("ruby")
    if not ruby:
        pytest.skip("ruby is not installed (it comes with Debian's vagrant package)")
    stub = tmp_path / "const.rb"
    stub.write_text(f"module Vagrant\n  def self.configure(*) end\nend\nload ARGV[0]\nprint {name}\n")
    r = subprocess.run([ruby, str(stub), str(ROOT / "Vagrantfile")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_vagrant_loopback_ports_reach_127_0_0_1(tmp_path):
    """The Vagrantfile's port unit, run in a network namespace standing for
    the guest: a server on 127.0.0.1:8080 there is reached through the
    namespace's outward interface, as a forwarded port reaches a VM's NAT
    interface. (Two namespaces of the test's own, a /30 between them.)"""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and ip (network namespaces)")
    _, why = _have_or_install("iptables", "iptables")
    if why:
        pytest.skip(why)
    text = _ruby_constant(tmp_path, "PORTS_SCRIPT")
    m = re.search(r"<<'EOF'\n(.*?)\nEOF\n", text, re.S)
    assert m, text
    script = tmp_path / "uproxy-loopback-ports"
    script.write_text(m.group(1) + "\n")
    sfx = f"{os.getpid() % 100000}"
    g, h = f"upg{sfx}", f"uph{sfx}"

    def ip(*a, check=True):
        return subprocess.run(["ip", *a], capture_output=True, text=True, check=check)
    srv = None
    try:
        ip("netns", "add", g)
        ip("netns", "add", h)
        ip("link", "add", "upv0", "netns", g, "type", "veth", "peer", "name", "upv1", "netns", h)
        ip("-n", g, "addr", "add", "10.213.0.2/30", "dev", "upv0")
        ip("-n", h, "addr", "add", "10.213.0.1/30", "dev", "upv1")
        for ns, dev in ((g, "upv0"), (h, "upv1")):
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", dev, "up")
        ip("-n", g, "route", "add", "default", "via", "10.213.0.1")
        srv = subprocess.Popen(["ip", "netns", "exec", g, sys.executable, "-c",
                                "import socket\n"
                                "s = socket.create_server(('127.0.0.1', 8080))\n"
                                "while True:\n"
                                "    c, _ = s.accept(); c.sendall(b'uproxy-demo'); c.close()\n"])

        def fetch():
            code = ("import socket,sys\n"
                    "try:\n"
                    "    c = socket.create_connection(('10.213.0.2', 8080), timeout=2)\n"
                    "    print(c.recv(100).decode())\n"
                    "except OSError as e:\n"
                    "    print('error', e)\n")
            return subprocess.run(["ip", "netns", "exec", h, sys.executable, "-c", code],
                                  capture_output=True, text=True, timeout=30).stdout.strip()
        deadline = time.monotonic() + 10
        while subprocess.run(["ip", "netns", "exec", g, sys.executable, "-c",
                              "import socket; socket.create_connection(('127.0.0.1', 8080), 1)"],
                             capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "the test server did not start"
            time.sleep(0.1)
        assert fetch().startswith("error"), "reachable before the unit ran"
        for _ in range(2):       # idempotent: a second run adds nothing
            r = subprocess.run(["ip", "netns", "exec", g, "sh", str(script)],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
        rules = subprocess.run(["ip", "netns", "exec", g, "iptables", "-t", "nat", "-S",
                                "PREROUTING"], capture_output=True, text=True).stdout
        assert rules.count("DNAT") == 3, rules
        assert fetch() == "uproxy-demo"
    finally:
        if srv:
            srv.kill()
            srv.wait()
        ip("netns", "del", g, check=False)
        ip("netns", "del", h, check=False)
