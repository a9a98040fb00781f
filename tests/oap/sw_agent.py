"""A stand-in SkyWalking Python agent: the gRPC calls apache/skywalking-python
makes (skywalking/client/grpc.py, skywalking/profile/, skywalking/agent),
in the same order and with the same metadata, as summarised in
shared/spec/peers-observed.md:

  1. ManagementService/reportInstanceProperties
  2. ProfileTask/getProfileTaskCommands (lastCommandTime -1, then the newest
     CreateTime seen)
  3. ManagementService/keepAlive
  5. ProfileTask/collectSnapshot client streams
  6. ProfileTask/reportTaskFinish

and, for pass-through, the client streams the agent opens for the services
canopy does not serve itself (TraceSegmentReportService/collect,
LogReportService/collect, ...), sent as bytes on their real method paths:
canopy must forward them unread, so what they hold does not matter to it,
and the tests compare bytes. `sent` records the bytes of every management
message too, as the agent serialized them.

One plaintext channel per agent carries every service; `authentication`
metadata is on every call, streams included, only when a token is set; no
call has a deadline. Stubs are generated at run time from proto/skywalking
into a temp dir (python3-grpc-tools)."""
import os
import shutil
import sys
import tempfile
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
_STUBS = None


def stubs():
    """Generates (once per process) and imports the skywalking.v3 stubs."""
    global _STUBS
    if _STUBS is None:
        from grpc_tools import protoc
        out = tempfile.mkdtemp(prefix="canopy-sw-agent-stubs-")
        files = [os.path.join(PROTO, "skywalking", "v3", f)
                 for f in ("common.proto", "profile.proto", "management.proto")]
        rc = protoc.main(["grpc_tools.protoc", "-I" + PROTO, "--python_out=" + out, "--grpc_python_out=" + out]
                         + files)
        if rc != 0:
            shutil.rmtree(out, ignore_errors=True)
            raise SystemExit("sw_agent: protoc failed (%d)" % rc)
        sys.path.insert(0, out)
        from skywalking.v3 import (common_pb2, management_pb2, management_pb2_grpc, profile_pb2,
                                   profile_pb2_grpc)
        _STUBS = dict(common=common_pb2, mgmt=management_pb2, mgmt_grpc=management_pb2_grpc,
                      profile=profile_pb2, profile_grpc=profile_pb2_grpc)
        # Imported: the generated files are not read again (every gunicorn
        # worker and test process makes its own; they used to pile up in /tmp).
        shutil.rmtree(out, ignore_errors=True)
    return _STUBS


class Agent:
    def __init__(self, target, service, token=None, instance=None, creds=None):
        import grpc
        self.grpc = grpc
        self.s = stubs()
        self.service = service
        # The agent's default: a uuid1 in hex, with -child(<pid>) under fork support.
        self.instance = instance or "%s-child(%d)" % (uuid.uuid1().hex, os.getpid())
        self.token = token
        # The agent's default is plaintext; SW_AGENT_FORCE_TLS gives it ssl_channel_credentials.
        self.channel = grpc.secure_channel(target, creds) if creds else grpc.insecure_channel(target)
        self.mgmt = self.s["mgmt_grpc"].ManagementServiceStub(self.channel)
        self.profile = self.s["profile_grpc"].ProfileTaskStub(self.channel)
        self.last_command_time = -1
        self.sent = []  # (method, [message bytes]) of management and raw calls, in order

    def _record(self, method, msg):
        self.sent.append((method, [msg.SerializeToString()]))
        return msg

    def md(self):
        return [("authentication", self.token)] if self.token else None

    def close(self):
        self.channel.close()

    def report_properties(self):
        c = self.s["common"]
        props = [c.KeyStringValuePair(key=k, value=v) for k, v in
                 (("language", "python"), ("OS Name", os.name), ("Process No.", str(os.getpid())),
                  ("hostname", "standin"), ("ipv4", "127.0.0.1"), ("python_version", sys.version.split()[0]))]
        return self.mgmt.reportInstanceProperties(self._record(
            "ManagementService/reportInstanceProperties",
            self.s["mgmt"].InstanceProperties(service=self.service, serviceInstance=self.instance,
                                              properties=props)), metadata=self.md())

    def keep_alive(self):
        return self.mgmt.keepAlive(self._record("ManagementService/keepAlive", self.s["mgmt"].InstancePingPkg(
            service=self.service, serviceInstance=self.instance)), metadata=self.md())

    def query_commands(self):
        """One getProfileTaskCommands; returns [{arg: value}] and advances
        lastCommandTime to the newest CreateTime, as the agent does."""
        r = self.profile.getProfileTaskCommands(
            self.s["profile"].ProfileTaskCommandQuery(service=self.service, serviceInstance=self.instance,
                                                      lastCommandTime=self.last_command_time),
            metadata=self.md())
        out = []
        for cmd in r.commands:
            args = {kv.key: kv.value for kv in cmd.args}
            args["_command"] = cmd.command
            out.append(args)
            self.last_command_time = max(self.last_command_time, int(args["CreateTime"]))
        return out

    def collect(self, snapshots):
        """One collectSnapshot stream of (taskId, segment, sequence, time, [frames])."""
        p = self.s["profile"]
        msgs = (p.ThreadSnapshot(taskId=t, traceSegmentId=seg, sequence=seq, time=tm,
                                 stack=p.ThreadStack(codeSignatures=frames))
                for t, seg, seq, tm, frames in snapshots)
        return self.profile.collectSnapshot(msgs, metadata=self.md())

    def report_finish(self, task_id):
        return self.profile.reportTaskFinish(
            self.s["profile"].ProfileTaskFinishReport(service=self.service, serviceInstance=self.instance,
                                                      taskId=task_id), metadata=self.md())

    def raw_stream(self, method, messages, timeout=None):
        """A client stream of raw messages to /skywalking.v3.<method> (e.g.
        "TraceSegmentReportService/collect"); returns the reply's bytes."""
        call = self.channel.stream_unary("/skywalking.v3." + method)
        self.sent.append((method, list(messages)))
        return call(iter(messages), metadata=self.md(), timeout=timeout)

    def raw_unary(self, method, message, timeout=None):
        call = self.channel.unary_unary("/skywalking.v3." + method)
        self.sent.append((method, [message]))
        return call(message, metadata=self.md(), timeout=timeout)
