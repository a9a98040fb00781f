#!/usr/bin/python3
"""The stand-in OAP itself, driven by a plain grpcio client: task commands
with the lastCommandTime cursor, snapshot storage under the OAP's key
(repeats overwrite, duplicates counted), finish reports, the token, failure
injection, persistence across a restart, and TLS. Other tests trust it."""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oaplib  # noqa: E402
from oaplib import check, log  # noqa: E402


def stubs():
    sys.path.insert(0, os.path.dirname(oaplib.STANDIN))
    import standin_oap
    standin_oap.generate_stubs(standin_oap.DEFAULT_PROTO_DIR)
    import grpc
    from skywalking.v3 import common_pb2, profile_pb2, profile_pb2_grpc
    return grpc, common_pb2, profile_pb2, profile_pb2_grpc


def snaps(pb, task, seg, seqs):
    for q in seqs:
        yield pb.ThreadSnapshot(taskId=task, traceSegmentId=seg, time=1000 + q, sequence=q,
                                stack=pb.ThreadStack(codeSignatures=["app.py.main: 1", "app.py.work: %d" % q]))


def main(args):
    grpc, common_pb2, pb, pb_grpc = stubs()
    with oaplib.Workdir("standin") as wd:
        state = os.path.join(wd, "state.json")
        oap = oaplib.Standin(wd, token="s3cret", state_file=state).start()
        try:
            ch = grpc.insecure_channel(oap.target)
            stub = pb_grpc.ProfileTaskStub(ch)
            md = [("authentication", "s3cret")]

            # Token: refused without, accepted with.
            try:
                stub.getProfileTaskCommands(pb.ProfileTaskCommandQuery(service="svc"), timeout=5)
                check(False, "a call without the token was accepted")
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.UNAUTHENTICATED, "expected UNAUTHENTICATED, got %s" % e.code())
            check(oap.stats()["auth_failures"] == 1, "auth failure not counted")

            # Tasks and the cursor.
            t1 = oap.create_task(service="svc", endpointName="/slow", duration=2)
            t2 = oap.create_task(service="other")
            r = stub.getProfileTaskCommands(pb.ProfileTaskCommandQuery(service="svc", serviceInstance="i1"),
                                            metadata=md, timeout=5)
            check(len(r.commands) == 1 and r.commands[0].command == "ProfileTaskQuery", "expected one command: %s" % r)
            args_ = {kv.key: kv.value for kv in r.commands[0].args}
            check(args_["TaskId"] == t1["taskId"] and args_["EndpointName"] == "/slow" and args_["Duration"] == "2",
                  "wrong args %r" % args_)
            for k in ("SerialNumber", "MinDurationThreshold", "DumpPeriod", "MaxSamplingCount", "StartTime",
                      "CreateTime"):
                check(k in args_, "missing arg %s" % k)
            r = stub.getProfileTaskCommands(pb.ProfileTaskCommandQuery(
                service="svc", serviceInstance="i1", lastCommandTime=int(args_["CreateTime"])), metadata=md, timeout=5)
            check(len(r.commands) == 0, "cursor not honoured")
            tasks = {t["taskId"]: t for t in oap.get("/tasks")}
            check(tasks[t1["taskId"]]["notified"] == {"i1": 1}, "notified log wrong: %r" % tasks[t1["taskId"]])
            check(t2["taskId"] in tasks, "task 2 missing")

            # Snapshots: key taskId+segment+sequence, repeats overwrite.
            stub.collectSnapshot(snaps(pb, "T", "seg-a", range(5)), metadata=md, timeout=5)
            stub.collectSnapshot(snaps(pb, "T", "seg-a", [3, 4, 5]), metadata=md, timeout=5)
            stub.collectSnapshot(snaps(pb, "T", "seg-b", [0, 2]), metadata=md, timeout=5)
            s = oap.stats()
            check(s["snapshots_stored"] == 8 and s["snapshots_received"] == 10 and s["duplicates"] == 2,
                  "storage counts wrong: %r" % s)
            seg = oap.segments("T")
            check(seg["tasks"]["T"]["seg-a"]["dense"] and not seg["tasks"]["T"]["seg-b"]["dense"],
                  "density check wrong: %r" % seg)
            check(len(seg["not_dense"]) == 1, "not_dense wrong: %r" % seg)

            # Finish reports.
            stub.reportTaskFinish(pb.ProfileTaskFinishReport(service="svc", serviceInstance="i1", taskId="T"),
                                  metadata=md, timeout=5)
            check(oap.get("/finish")[0]["serviceInstance"] == "i1", "finish report not recorded")

            # Failure injection: fail once, fail a stream after 2 messages, hang.
            oap.set_mode("fail", code="RESOURCE_EXHAUSTED", count=1)
            try:
                stub.reportTaskFinish(pb.ProfileTaskFinishReport(taskId="X"), metadata=md, timeout=5)
                check(False, "fail mode did not fail")
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, "wrong code %s" % e.code())
            stub.reportTaskFinish(pb.ProfileTaskFinishReport(taskId="Y"), metadata=md, timeout=5)
            oap.set_mode("fail", code="UNAVAILABLE", after=2, methods=["collectSnapshot"], count=1)
            try:
                stub.collectSnapshot(snaps(pb, "F", "seg", range(4)), metadata=md, timeout=5)
                check(False, "fail-after did not fail")
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.UNAVAILABLE, "wrong code %s" % e.code())
            check(len(oap.get("/snapshots?taskId=F")) == 2, "fail-after stored the wrong number")
            oap.set_mode("hang")
            t0 = time.time()
            try:
                stub.reportTaskFinish(pb.ProfileTaskFinishReport(taskId="Z"), metadata=md, timeout=1)
                check(False, "hang did not hang")
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, "wrong code %s" % e.code())
            check(time.time() - t0 < 3, "deadline took too long")
            # A hung call resumes when told.
            done = []
            th = threading.Thread(target=lambda: done.append(
                stub.reportTaskFinish(pb.ProfileTaskFinishReport(taskId="W"), metadata=md, timeout=10)))
            th.start()
            time.sleep(0.5)
            check(not done, "hung call answered early")
            oap.set_mode("ok")
            th.join(5)
            check(done, "hung call did not resume")
            check(oap.stats()["connections"] == 1, "one client channel should be one connection: %r"
                  % oap.stats()["peers"])
            ch.close()
        finally:
            oap.stop()

        # Persistence across a restart.
        oap2 = oaplib.Standin(wd, token="s3cret", state_file=state, grpc_port=oap.grpc_port,
                              control_port=oap.control_port).start()
        try:
            s = oap2.stats()
            check(s["generation"] == 2 and s["snapshots_stored"] == 10, "state not restored: %r" % s)
        finally:
            oap2.stop()

        # TLS with a CA made here.
        ca = oaplib.make_ca(wd)
        oap3 = oaplib.Standin(wd, tls_cert=ca["server_cert"], tls_key=ca["server_key"], name="tls").start()
        try:
            with open(ca["ca"], "rb") as f:
                creds = grpc.ssl_channel_credentials(root_certificates=f.read())
            ch = grpc.secure_channel(oap3.target, creds)
            pb_grpc.ProfileTaskStub(ch).reportTaskFinish(pb.ProfileTaskFinishReport(taskId="tls"), timeout=5)
            check(oap3.get("/finish")[0]["taskId"] == "tls", "TLS call not recorded")
            ch.close()
        finally:
            oap3.stop()
        log("stand-in OAP behaves")


if __name__ == "__main__":
    oaplib.run_test(main)
