"""gunicorn config (-c python:sw_fleet_conf) for a gevent fleet whose workers
run the stand-in SkyWalking agent (sw_agent.py), as the skywalking-python
agent runs in each worker: one channel per worker, reportInstanceProperties,
then getProfileTaskCommands every poll and keepAlive, snapshots of profiled
requests sent in collectSnapshot streams drained every 0.5 s. A worker that
runs a ProfileTaskQuery records it in $SW_FLEET_DIR/tasks-<pid>.

With SW_PASSTHROUGH=1 each worker also streams trace segments and logs
every 0.5 s (TraceSegmentReportService/collect, LogReportService/collect,
as the agent does, about 1 s apart), and at exit writes every message it
sent on those and on ManagementService to $SW_FLEET_DIR/sent-<pid>.json
(hex), so a test can compare them with what reached the OAP.

Environment: SW_TARGET (host:port), SW_SERVICE, SW_TOKEN, SW_FLEET_DIR."""
import os
import uuid

# Drawn at import, in the master: the workers share it (the agent's default),
# with -child(<pid>) appended after fork.
INSTANCE_BASE = uuid.uuid1().hex
STATE = {}


def post_fork(server, worker):
    import gevent
    from grpc.experimental import gevent as grpc_gevent
    grpc_gevent.init_gevent()
    import sw_agent
    agent = sw_agent.Agent(os.environ["SW_TARGET"], os.environ.get("SW_SERVICE", "shop"),
                           token=os.environ.get("SW_TOKEN") or None,
                           instance="%s-child(%d)" % (INSTANCE_BASE, os.getpid()))
    STATE.update(agent=agent, task=None, queue=[], serials=set())

    def commands():
        agent.report_properties()
        n = 0
        while True:
            try:
                for c in agent.query_commands():
                    if c["SerialNumber"] in STATE["serials"]:
                        continue  # the agent ignores a serial it already ran
                    STATE["serials"].add(c["SerialNumber"])
                    STATE["task"] = c
                    with open(os.path.join(os.environ["SW_FLEET_DIR"], "tasks-%d" % os.getpid()), "a") as f:
                        f.write("%s %s\n" % (c["TaskId"], agent.instance))
                n += 1
                if n % 3 == 0:
                    agent.keep_alive()
            except Exception as e:  # noqa: BLE001 - the agent logs and goes on
                print("sw agent: %r" % e, flush=True)
            gevent.sleep(0.3)

    def reporter():
        while True:
            gevent.sleep(0.5)
            batch, STATE["queue"] = STATE["queue"], []
            if batch:
                try:
                    agent.collect(batch)
                except Exception as e:  # noqa: BLE001 - lost, as with the real agent
                    print("sw agent: collectSnapshot: %r" % e, flush=True)

    def traffic():
        import json
        n = 0
        while True:
            gevent.sleep(0.5)
            n += 1
            try:
                # Random bytes of varied sizes: canopy must not look inside, so any bytes must come out the same.
                agent.raw_stream("TraceSegmentReportService/collect",
                                 [os.urandom(40 + 97 * k) for k in range(1 + n % 3)])
                agent.raw_stream("LogReportService/collect", [os.urandom(64)])
            except Exception as e:  # noqa: BLE001 - the agent logs and goes on
                print("sw agent: pass-through: %r" % e, flush=True)
            sent = [[m, [b.hex() for b in msgs]] for m, msgs in agent.sent]
            path = os.path.join(os.environ["SW_FLEET_DIR"], "sent-%d.json" % os.getpid())
            with open(path + ".tmp", "w") as f:
                json.dump(sent, f)
            os.replace(path + ".tmp", path)

    gevent.spawn(commands)
    gevent.spawn(reporter)
    if os.environ.get("SW_PASSTHROUGH"):
        gevent.spawn(traffic)


def profile_request(path):
    """A profiled request's snapshots: 3 per segment, sequence from 0."""
    import time
    t = STATE.get("task")
    if not t or path != t["EndpointName"]:
        return
    seg = uuid.uuid4().hex
    now = int(time.time() * 1000)
    for seq in range(3):
        STATE["queue"].append((t["TaskId"], seg, seq, now + seq * int(t["DumpPeriod"]),
                               ["app.py:app", "app.py:checkout", "app.py:price#%d" % seq]))


def pre_request(worker, req):
    profile_request(req.path)
