"""The fused edge convolution against e3nn's reference modules, number for number."""
import pytest
import torch
from e3nn import o3

from e3pot.model.potential import default_dtype
from e3pot.nn.scatter import scatter_sum
from e3pot.nn.tensor_product import EdgeTensorProductScatter

IRREPS_IN = o3.Irreps("4x0e + 2x0o + 3x1o + 2x1e + 2x2e")
IRREPS_SH = o3.Irreps.spherical_harmonics(2)
# Two blocks of one irrep (as in a gate's scalars + gates) and blocks of differing multiplicities.
IRREPS_OUT = o3.Irreps("3x0e + 2x0e + 4x1o + 2x1e + 3x2e + 1x2o")


@pytest.fixture
def float64_default():
    with default_dtype(torch.float64):
        yield


def reference(conv: EdgeTensorProductScatter, x, sh, w, sender, receiver, norm):
    """e3nn's TensorProduct ("uvu", one output block per path, weights per edge), a plain
    neighbour sum, then e3nn's Linear with the weights of ``conv`` rearranged into its layout."""
    path_irreps = o3.Irreps([(conv.irreps_in[b].mul, ir) for b, _, ir in conv.paths])
    instructions = [(b, j, i, "uvu", True) for i, (b, j, _) in enumerate(conv.paths)]
    tp = o3.TensorProduct(conv.irreps_in, conv.irreps_sh, path_irreps, instructions,
                          shared_weights=False, internal_weights=False)
    per_edge = tp(x[sender], sh, w)
    summed = scatter_sum(per_edge, receiver, x.shape[0]) * norm

    linear = o3.Linear(path_irreps, conv.irreps_out)
    weights = []
    types = sorted({ir for _, ir in conv.irreps_out})
    for ins in linear.instructions:  # (i_in, i_out, ...) with a (mul_in, mul_out) block each
        t = types.index(path_irreps[ins.i_in].ir)
        c_in, c_out = conv.type_cin[t], conv.type_cout[t]
        full = conv.weight[conv.type_w_start[t]:conv.type_w_start[t] + c_in * c_out].reshape(c_in, c_out)
        row = sum(path_irreps[i].mul for i in range(ins.i_in) if path_irreps[i].ir == path_irreps[ins.i_in].ir)
        col = conv.out_start[ins.i_out]
        weights.append(full[row:row + path_irreps[ins.i_in].mul, col:col + conv.irreps_out[ins.i_out].mul].reshape(-1))
    with torch.no_grad():
        linear.weight.copy_(torch.cat(weights))
    return linear(summed)


@pytest.mark.parametrize("irreps_in, irreps_out", [(IRREPS_IN, IRREPS_OUT), ("5x0e", "3x0e + 2x0e + 4x1o + 3x2e")],
                         ids=["mixed", "scalars"])
def test_edge_convolution_matches_e3nn(irreps_in, irreps_out, float64_default):
    irreps_in, irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
    torch.manual_seed(0)
    conv = EdgeTensorProductScatter(irreps_in, IRREPS_SH, irreps_out, norm=0.37)
    n_atoms, n_edges = 7, 30
    x = torch.randn(n_atoms, irreps_in.dim, dtype=torch.float64)
    sh = torch.randn(n_edges, IRREPS_SH.dim, dtype=torch.float64)
    w = torch.randn(n_edges, conv.weight_numel, dtype=torch.float64)
    sender = torch.randint(0, n_atoms, (n_edges,))
    receiver = torch.randint(0, n_atoms, (n_edges,))
    receiver[0] = n_atoms - 1  # every layout edge case: last atom receives, some atoms receive nothing
    got = conv(x, sh, w, sender, receiver)
    want = reference(conv, x, sh, w, sender, receiver, 0.37)
    assert got.shape == (n_atoms, irreps_out.dim)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_edge_convolution_rejects_unreachable_output():
    with pytest.raises(ValueError, match="no tensor-product path.*2o"):
        EdgeTensorProductScatter("3x0e", "1x0e + 1x1o", "2x0e + 1x2o")


@pytest.mark.parametrize("setting", ["on", "off"])
def test_tune_allocator_opt_out(setting):
    import os
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc malloc only")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    env["E3POT_MALLOC"] = setting
    code = "from e3pot.allocator import tune_allocator; print(sorted(tune_allocator()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == ("['mmap_max', 'trim_threshold']" if setting == "on" else "[]")
