"""Receiver `skywalking` over TLS with a CA made at test time and client
certificates required: an agent with the CA and a client certificate is
served (commands and a collectSnapshot stream that lands in jsonl); one
without a client certificate, and a plaintext one, are refused."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oaplib  # noqa: E402
from oaplib import check, log, wait_for  # noqa: E402


def main(args):
    oaplib.require_binaries(args.build_dir, "canopy")
    import grpc
    import sw_agent
    with oaplib.Workdir("sw-receiver-tls") as wd:
        ca = oaplib.make_ca(wd, with_client=True)
        grpc_port, admin_port = oaplib.free_port(), oaplib.free_port()
        outdir = os.path.join(wd, "out")
        os.makedirs(outdir)
        col = oaplib.Collector(args.build_dir, wd, """receivers:
  skywalking:
    listen: "127.0.0.1:%d"
    tls:
      cert_file: "%s"
      key_file: "%s"
      ca_file: "%s"
      client_auth: required
processors:
  merge_by_task:
    flush_interval: 200ms
exporters:
  file:
    directory: "%s"
    format: jsonl
service:
  pipelines:
    profiles:
      receivers: [skywalking]
      processors: [merge_by_task]
      exporters: [file]
  telemetry:
    http:
      listen: "127.0.0.1:%d"
tasks:
  static:
    - id: task-tls
      service: shop
      endpoint: /checkout
      duration: 5m
""" % (grpc_port, ca["server_cert"], ca["server_key"], ca["ca"], outdir, admin_port))
        col.validate()
        col.start(admin_port)
        target = "127.0.0.1:%d" % grpc_port
        read = lambda k: open(ca[k], "rb").read()  # noqa: E731
        good = sw_agent.Agent(target, "shop", creds=grpc.ssl_channel_credentials(
            root_certificates=read("ca"), private_key=read("client_key"), certificate_chain=read("client_cert")))
        no_cert = sw_agent.Agent(target, "shop", creds=grpc.ssl_channel_credentials(root_certificates=read("ca")))
        plain = sw_agent.Agent(target, "shop")
        try:
            good.report_properties()
            cmds = good.query_commands()
            check([c["TaskId"] for c in cmds] == ["task-tls"], "commands over TLS: %r" % cmds)
            good.collect([("task-tls", "seg-tls", s, 1000 + s, ["a", "b"]) for s in range(4)])
            got = wait_for("4 snapshots in jsonl", lambda: len(oaplib.read_jsonl_dir(outdir)) >= 4 and True, 30)
            check(got, "no snapshots")
            for name, agent in (("no client certificate", no_cert), ("plaintext", plain)):
                try:
                    grpc.channel_ready_future(agent.channel).result(timeout=3)  # the handshake must fail
                    agent.query_commands()
                    check(False, "an agent with %s was served" % name)
                except (grpc.RpcError, grpc.FutureTimeoutError) as e:
                    log("%s refused: %s" % (name, getattr(e, "code", lambda: "handshake timeout")()))
            check(good.query_commands() == [], "the good agent after the refused ones")
            log("TLS with client certificates: served the agent with one, refused the others")
        finally:
            for a in (good, no_cert, plain):
                a.close()
            rc = col.stop()
        check(rc == 0, "canopy exited %r" % rc)


if __name__ == "__main__":
    oaplib.run_test(main)
