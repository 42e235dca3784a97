import time, torch, gmlib
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode
torch.set_num_threads(1)
def count_meta(model, size):
    state = {k: torch.empty_like(v, device="meta") for k, v in list(model.named_parameters()) + list(model.named_buffers())}
    x = torch.zeros((1,*size), device="meta")
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as c:
        functional_call(model, state, (x,))
    return sum(p.numel() for p in model.parameters()), c.get_total_flops()//2
for name in ["resnet50","resnext50_32x4d","resnest50d","fpn_resnest50"]:
    m = gmlib.models.create(name)
    for f in (gmlib.count, count_meta):
        t=time.perf_counter(); r=f(m,(3,64,64)); print(name, f.__name__, r, round(time.perf_counter()-t,3))
    t=time.perf_counter(); r=count_meta(m,(3,64,64)); print(name, 'meta again', r, round(time.perf_counter()-t,3))
x=torch.randn(2048, 4608)
for f in [lambda: torch.isfinite(x).all(), lambda: torch.aminmax(x), lambda: x.sum()]:
    t=time.perf_counter(); [f() for _ in range(10)]; print((time.perf_counter()-t)/10)
