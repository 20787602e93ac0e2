import os, sys, time, statistics
cmds = {
 "bare": ["deno","run","-A","--no-config","--no-lock","--quiet","--no-code-cache","/tmp/empty.js"],
 "old": ["/tmp/lm/termite-sh","-c","true"],
 "new": ["/tmp/ln/termite-sh","-c","true"],
}
res = {k: ([],[]) for k in cmds}
devnull = os.open("/dev/null", os.O_RDWR)
for i in range(int(sys.argv[1])):
  for k, c in cmds.items():
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:
      os.dup2(devnull,0); os.dup2(devnull,1); os.dup2(devnull,2)
      os.execvp(c[0], c)
    _, st, ru = os.wait4(pid, 0)
    assert st == 0, (k, st)
    w = (time.perf_counter()-t)*1000
    if i == 0: continue
    res[k][0].append(w); res[k][1].append((ru.ru_utime+ru.ru_stime)*1000)
for k,(w,c) in res.items():
  print(f"{k:5s} wall {statistics.median(w):6.2f} ms  cpu {statistics.median(c):6.2f} ms")
b = statistics.median(res["bare"][0]); bc = statistics.median(res["bare"][1])
for k in ("old","new"):
  print(f"{k}/bare wall {statistics.median(res[k][0])/b:.3f} cpu {statistics.median(res[k][1])/bc:.3f}")
