"""gunicorn config (-c python:sw_fleet_conf) for a gevent fleet whose workers
run the stand-in SkyWalking agent (sw_agent.py), as the skywalking-python
agent runs in each worker: one channel per worker, reportInstanceProperties,
then getProfileTaskCommands every poll and keepAlive, snapshots of profiled
requests sent in collectSnapshot streams drained every 0.5 s. A worker that
runs a ProfileTaskQuery records it in $SW_FLEET_DIR/tasks-<pid>.

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

    gevent.spawn(commands)
    gevent.spawn(reporter)


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
