"""Helpers for the listener-security tests: throwaway certificates made with
openssl at test time, free ports, and a /metrics scrape."""
import os
import re
import socket
import subprocess
import urllib.request


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _key(cwd, name):
    # P-256: quick to make, and mbedTLS 2.28 (under Debian's nng) handles it.
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", name + ".key", cwd=cwd)


def _ca(cwd, name, cn):
    _key(cwd, name)
    _openssl("req", "-x509", "-new", "-key", name + ".key", "-out", name + ".pem", "-days", "2", "-subj",
             "/CN=" + cn, "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=cwd)


def _leaf(cwd, name, ca, cn, ext):
    _key(cwd, name)
    _openssl("req", "-new", "-key", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + cn, cwd=cwd)
    with open(os.path.join(cwd, name + ".ext"), "w") as f:
        f.write(ext)
    _openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key", "-CAcreateserial",
             "-out", name + ".pem", "-days", "2", "-extfile", name + ".ext", cwd=cwd)


def make_pki(d):
    """ca (trusted) signs server (127.0.0.1/localhost) and client; rogue-ca signs rogue-client.
    Returns {name: path} for ca, server, server.key, client, client.key, rogue-ca, rogue-client(.key)."""
    os.makedirs(d, exist_ok=True)
    _ca(d, "ca", "canopy test CA")
    _ca(d, "rogue-ca", "someone else's CA")
    # mbedTLS 2.28 matches the name it dials against DNS names only, not IP
    # SANs: "127.0.0.1" is listed as a DNS name too.
    _leaf(d, "server", "ca", "canopy collector",
          "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
          "subjectAltName=DNS:localhost,DNS:127.0.0.1,IP:127.0.0.1\n")
    client_ext = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
    _leaf(d, "client", "ca", "canopy agent", client_ext)
    _leaf(d, "rogue-client", "rogue-ca", "canopy agent", client_ext)
    files = {}
    for n in ["ca", "server", "client", "rogue-ca", "rogue-client"]:
        files[n] = os.path.join(d, n + ".pem")
        files[n + ".key"] = os.path.join(d, n + ".key")
    return files


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def metrics(admin):
    """Prometheus text from the admin API, as {'name{labels}': value}."""
    with urllib.request.urlopen("http://%s/metrics" % admin, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            m = re.match(r"^(\S+)\s+(\S+)$", line)
            if m:
                out[m.group(1)] = float(m.group(2))
    return out


def metric(ms, name, **labels):
    """Sum of the series of `name` whose labels include `labels`."""
    total = 0.0
    for k, v in ms.items():
        base = k.split("{", 1)[0]
        if base != name:
            continue
        if all('%s="%s"' % (lk, lv) in k for lk, lv in labels.items()):
            total += v
    return total
