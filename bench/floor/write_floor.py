#!/usr/bin/env python3
"""The kernel's share of one delivery over loopback, with no server around it.

One process writes a 150-byte frame (the size of a benchmark `message` frame) to each of N
loopback TCP connections in turn; another process reads them all with epoll. The writer's
system CPU time per write() is the floor that any server pays per delivery when it writes
each message to each socket separately (see docs/benchmarks.md, "CPU per delivery").

    python3 bench/floor/write_floor.py [--conns 1000] [--writes 200000] [--rate 30000] [--json]

`chat-loadgen suite` runs it at each fan-out rate (--json: one line for the suite to read).
"""
import argparse, json, os, resource, select, socket, time

def reader(port, conns, total_bytes, ready_w):
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port)); srv.listen(conns)
    os.write(ready_w, b"1")
    socks = [srv.accept()[0] for _ in range(conns)]
    ep = select.epoll()
    for s in socks:
        s.setblocking(False); ep.register(s.fileno(), select.EPOLLIN)
    by_fd = {s.fileno(): s for s in socks}
    got = 0
    while got < total_bytes:
        for fd, _ in ep.poll():
            try:
                got += len(by_fd[fd].recv(65536))
            except BlockingIOError:
                pass
    os._exit(0)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--writes", type=int, default=200000)
    ap.add_argument("--rate", type=int, default=30000, help="writes per second (paced, like deliveries)")
    ap.add_argument("--size", type=int, default=150)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a sentence")
    a = ap.parse_args()
    probe = socket.socket(); probe.bind(("127.0.0.1", 0)); port = probe.getsockname()[1]; probe.close()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        reader(port, a.conns, a.writes * a.size, w)
    os.read(r, 1)
    socks = []
    for _ in range(a.conns):
        s = socket.create_connection(("127.0.0.1", port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    frame = b"x" * a.size
    batch = max(1, a.rate // 1000)  # writes per 1 ms tick
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic(); done = 0
    while done < a.writes:
        for _ in range(batch):
            socks[done % a.conns].sendall(frame); done += 1
        nxt = start + done / a.rate
        d = nxt - time.monotonic()
        if d > 0:
            time.sleep(d)
    after = resource.getrusage(resource.RUSAGE_SELF)
    elapsed = time.monotonic() - start
    os.waitpid(pid, 0)
    sys_us = (after.ru_stime - before.ru_stime) * 1e6 / a.writes
    usr_us = (after.ru_utime - before.ru_utime) * 1e6 / a.writes
    if a.json:
        print(json.dumps({"writes": a.writes, "size": a.size, "conns": a.conns, "rate": a.rate,
                          "seconds": elapsed, "system_us_per_write": sys_us,
                          "user_us_per_write": usr_us}))
        return
    print(f"{a.writes} writes of {a.size} B over {a.conns} loopback connections at {a.rate}/s: "
          f"writer system CPU {sys_us:.2f} µs per write (user, Python's own: {usr_us:.2f} µs)")

if __name__ == "__main__":
    main()
