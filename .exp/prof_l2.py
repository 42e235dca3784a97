import cProfile, pstats, time, torch, gmlib
gmlib.set_deterministic(0, threads=1)
x = torch.randn(1,3,64,64)
m = gmlib.models.create("resnet50", seed=0).eval()
gmlib.prune(gmlib.models.create("resnet50", seed=1).eval(), x, 0.4)
m = gmlib.models.create("resnet50", seed=0).eval()
pr = cProfile.Profile(); pr.enable(); t=time.perf_counter(); gmlib.prune(m, x, 0.4, count_macs=False, criterion="l2"); print(time.perf_counter()-t); pr.disable()
pstats.Stats(pr).sort_stats("cumulative").print_stats(30)
