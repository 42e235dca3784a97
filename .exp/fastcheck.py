import time, torch, gmlib, gmlib.median as M
torch.set_num_threads(1)
m = gmlib.models.create("resnet50", seed=0)
W = [c.weight.detach().reshape(c.out_channels, -1) for c in m.modules() if isinstance(c, torch.nn.Conv2d)]
def run():
    t = time.perf_counter(); out = [M.geometric_median(w) for w in W]; return out, time.perf_counter() - t
fast, tf = run(); fast, tf = run()
M._FAST = 2**62
exact, te = run(); exact, te = run()
print("fast", round(tf, 3), "exact", round(te, 3))
worst = 0; worstf = 0
for w, a, b in zip(W, fast, exact):
    worst = max(worst, ((a - b).norm() / (w - b).norm(dim=1).mean()).item())
    fa, fb = M.median_objective(w.double(), a.double()), M.median_objective(w.double(), b.double())
    worstf = max(worstf, ((fa - fb) / fb).item())
    r1 = torch.cdist(a[None], w).argsort(); r2 = torch.cdist(b[None], w).argsort()
print("max |y_fast - y_exact| / scale", worst, "max rel objective excess", worstf)
