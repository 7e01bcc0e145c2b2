"""py-consul (PyPI `py-consul` 1.8.0, unchanged) against Berth's Consul read API.

Usage: consul_python_test.py HOST PORT TOKEN SICK_FILE
The cluster runs service web-prod with 2 healthy instances; removing SICK_FILE makes one of
them fail its health check. Exits non-zero with a message on the first failed check.
"""
import os
import sys
import threading
import time

import consul

host, port, token, sick_file = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
c = consul.Consul(host=host, port=port, token=token)

index, services = c.catalog.services()
assert int(index) >= 1, index
assert services.get("web-prod") == ["edge"], services

index, nodes = c.catalog.service("web-prod")
assert int(index) >= 1, index
assert len(nodes) == 2, nodes
assert all(n["ServiceName"] == "web-prod" and n["ServicePort"] > 0 for n in nodes), nodes

index, nodes = c.health.service("web-prod", passing=True)
assert int(index) >= 1, index
assert len(nodes) == 2, nodes
assert all(n["Checks"][0]["Status"] == "passing" for n in nodes), nodes
index, tagged = c.health.service("web-prod", tag="edge")
assert len(tagged) == 2, tagged
index2, none = c.health.service("web-prod", tag="nope")
assert none == [] and int(index2) >= 1, (index2, none)

# A blocking query on the index waits until the passing set changes.
index, _ = c.health.service("web-prod", passing=True)
result = {}


def watch():
    started = time.monotonic()
    result["index"], result["nodes"] = c.health.service(
        "web-prod", passing=True, index=index, wait="20s"
    )
    result["secs"] = time.monotonic() - started


t = threading.Thread(target=watch)
t.start()
time.sleep(1.5)
assert t.is_alive(), "the blocking query answered before anything changed: %r" % result
os.remove(sick_file)
t.join(30)
assert not t.is_alive(), "the blocking query did not answer after the change"
assert int(result["index"]) > int(index), (result["index"], index)
assert len(result["nodes"]) == 1, result["nodes"]
print("py-consul: catalog, health, tags and a blocking query (%.2f s) all passed" % result["secs"])
