import time, torch, gmlib, statistics
torch.set_num_threads(1)
for seed in range(5):
    m = gmlib.models.create("resnet50", seed=seed)
    W = [c.weight for c in m.modules() if isinstance(c, torch.nn.Conv2d)]
    ts=[]
    for _ in range(3):
        t=time.perf_counter(); [gmlib.filter_scores(w, "fpgm") for w in W]; ts.append(time.perf_counter()-t)
    print(seed, [round(x,3) for x in ts])
