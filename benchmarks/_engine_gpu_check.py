import time, torch
from synthct.config import RunConfig
from synthct.models import build_model
from synthct.engine.trainer import Trainer, seed_everything
from synthct.engine.precision import resolve_precision, resolve_device
from synthct.engine.checkpoint import save_state, load_state
dev = resolve_device("auto")
cfg = RunConfig(); cfg.model.ngf = 32; cfg.model.ndf = 32; cfg.model.blocks = 6
for req in ("auto", "fp16", "fp32"):
    seed_everything(0)
    p = resolve_precision(req, dev)
    t = Trainer(build_model(cfg.model, 3, 3), cfg, 100, dev, p)
    b = {"mr": torch.rand(4, 3, 128, 128) * 2 - 1, "ct": torch.rand(4, 3, 128, 128) * 2 - 1}
    for _ in range(3): out = t.step(b)
    torch.cuda.synchronize(); s = time.time()
    for _ in range(10): out = t.step(b)
    torch.cuda.synchronize()
    print(req, p.name, p.reason, "scaler" if t.scaler else "", f"{(time.time()-s)/10*1000:.1f} ms/step", {k: round(v, 3) for k, v in out.losses.items()}, out.skipped)
    save_state("/tmp/st_" + req, t.state_dict())
    st, _ = load_state("/tmp/st_" + req)
    t2 = Trainer(build_model(cfg.model, 3, 3), cfg, 100, dev, p); t2.load_state_dict(st)
    a, c = t.step(b), t2.step(b)
    print("  resume-equal losses:", a.losses == c.losses)
