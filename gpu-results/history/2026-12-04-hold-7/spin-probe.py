"""How long torch.cuda._sleep(2e9) spins on this GPU, and whether work queued by one process delays
another process's copy (time-slicing) or not."""
import os, subprocess, sys, time
import torch

CHILD = r'''
import sys, time, torch
x = torch.ones(64 << 20, device="cuda"); torch.cuda.synchronize()
print("ready", flush=True)
sys.stdin.readline()
t0 = time.monotonic(); y = x.clone(); torch.cuda.synchronize()
print(f"child clone+sync {time.monotonic() - t0:.3f}", flush=True)
'''
x = torch.ones(64 << 20, device="cuda"); torch.cuda.synchronize()
print(torch.__version__, torch.cuda.get_device_name(0), flush=True)
for _ in range(2):
    t0 = time.monotonic(); torch.cuda._sleep(2_000_000_000); torch.cuda.synchronize()
    print(f"spin 2e9 cycles: {time.monotonic() - t0:.3f}s", flush=True)
t0 = time.monotonic(); torch.cuda._sleep(2_000_000_000); y = x.clone(); q = time.monotonic() - t0
y.cpu(); print(f"same process: queue {q:.3f}s, clone then .cpu() done after {time.monotonic() - t0:.3f}s", flush=True)
child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "ready"
torch.cuda._sleep(4_000_000_000)
t0 = time.monotonic()
child.stdin.write("go\n"); child.stdin.flush()
print(child.stdout.readline().strip(), f"(parent's 2 s spin queued just before)", flush=True)
torch.cuda.synchronize(); print(f"parent spin done {time.monotonic() - t0:.3f}s after the child started", flush=True)
child.wait()
