"""What double backward costs: a gradient-penalty step (forward, the input gradient with
create_graph=True, backward of its squared norm to the parameters) against a first-order
training step, gatedrnn and torch.nn in the same process, medians of 15 interleaved rounds.

    OMP_NUM_THREADS=2 python benchmarks/double_backward.py
"""
import statistics, time, torch, gatedrnn
torch.manual_seed(0)
def first(m, x):
    y = m(x)[0]; y.pow(2).sum().backward()
def penalty(m, x):
    xi = x.detach().requires_grad_()
    y = m(xi)[0]
    (g,) = torch.autograd.grad(y.pow(2).sum(), xi, create_graph=True)
    (g * g).sum().backward()
for cls, ncls in [(gatedrnn.LSTM, torch.nn.LSTM), (gatedrnn.GRU, torch.nn.GRU), (gatedrnn.RNN, torch.nn.RNN)]:
    for T, N, I, H in [(100, 16, 128, 128), (200, 1, 64, 64)]:
        ours = cls(I, H); ref = ncls(I, H); ref.load_state_dict(ours.state_dict())
        x = torch.randn(T, N, I, requires_grad=True)
        times = {}
        for name, f in [("first", first), ("penalty", penalty)]:
            for label, m in [("ours", ours), ("torch", ref)]:
                times[(name, label)] = []
            for _ in range(3):
                f(ours, x); f(ref, x)
            for _ in range(15):
                for label, m in [("ours", ours), ("torch", ref)]:
                    t = time.perf_counter(); f(m, x); times[(name, label)].append(time.perf_counter() - t)
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        print(f"{cls.__name__} {(T, N, I, H)}: first-order ours {med[('first','ours')]:.2f} ms, torch.nn {med[('first','torch')]:.2f}; "
              f"penalty ours {med[('penalty','ours')]:.2f} ms, torch.nn {med[('penalty','torch')]:.2f}; "
              f"ours penalty/first {med[('penalty','ours')]/med[('first','ours')]:.1f}x, penalty ours/torch.nn {med[('penalty','ours')]/med[('penalty','torch')]:.2f}x")
