"""Can FSDP2 (`torch.distributed.fsdp.fully_shard`) carry the linearized teacher's jvp? A probe on 2 gloo CPU ranks.

    python -m torch.distributed.run --nproc_per_node 2 benchmarks/fsdp_jvp_probe.py

Each rank prints, per way of taking J·τ on a 2-layer MLP sharded with fully_shard, the max |Δ| against the
unsharded jvp (0 = right) or the exception. Results (torch 2.13 CPU) are in docs/distributed.md.
"""
import torch, torch.distributed as dist
from torch import nn
from torch.func import jvp, functional_call
dist.init_process_group("gloo")
r = dist.get_rank()
from torch.distributed.fsdp import fully_shard
from torch.distributed.device_mesh import init_device_mesh
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
ref = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)); ref.load_state_dict(model.state_dict())
mesh = init_device_mesh("cpu", (2,))
for m in (model[0], model[2]):
    fully_shard(m, mesh=mesh)
fully_shard(model, mesh=mesh)
x = torch.randn(5, 8)
tang = {n: torch.randn(p.shape) for n, p in ref.named_parameters()}
# one-process reference
fn = lambda p: functional_call(ref, p, (x,))
y0, jt = jvp(fn, (dict(ref.named_parameters()),), (tang,))
def report(name, f):
    try:
        out = f()
        print(f"rank {r} {name}: ok, max|Δ| vs unsharded = {out:.3g}", flush=True)
    except Exception as e:
        print(f"rank {r} {name}: {type(e).__name__}: {str(e)[:300]}", flush=True)
print(f"rank {r} param types:", {n: type(p).__name__ for n, p in model.named_parameters()}, flush=True)
# A: plain forward through the FSDP model
report("forward", lambda: float((model(x) - y0).abs().max()))
# B: torch.func.jvp over the FSDP module's own (sharded DTensor) parameters
def b():
    params = dict(model.named_parameters())
    from torch.distributed.tensor import distribute_tensor
    tg = {n: distribute_tensor(tang[n], mesh, p.placements) for n, p in params.items()}
    out, t = jvp(lambda p: functional_call(model, p, (x,)), (params,), (tg,))
    return float((t - jt).abs().max())
report("torch.func.jvp over sharded params", b)
# C: forward-mode AD with dual tensors (torch.autograd.forward_ad) on the sharded parameters
def c():
    import torch.autograd.forward_ad as fwAD
    from torch.distributed.tensor import distribute_tensor
    params = dict(model.named_parameters())
    with fwAD.dual_level():
        duals = {n: fwAD.make_dual(p.detach(), distribute_tensor(tang[n], mesh, p.placements)) for n, p in params.items()}
        out = functional_call(model, duals, (x,))
        t = fwAD.unpack_dual(out).tangent
    return float((t - jt).abs().max())
report("forward_ad dual tensors", c)
def d():
    params = {n: p.full_tensor().detach() for n, p in model.named_parameters()}
    out, t = jvp(lambda p: functional_call(model, p, (x,)), (params,), (tang,))
    return float((t - jt).abs().max())
report("jvp, FSDP module, params gathered by hand (full_tensor) and passed to functional_call", d)
def e():
    params = {n: p.full_tensor().detach() for n, p in model.named_parameters()}
    out, t = jvp(lambda p: functional_call(ref, p, (x,)), (params,), (tang,))
    return float((t - jt).abs().max())
report("jvp, plain (unsharded) module copy, params gathered by hand", e)
dist.destroy_process_group()
